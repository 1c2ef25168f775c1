import json
import os

from selfsup.text.tokenizer import SPECIAL_TOKENS, load_tokenizer


def test_trained_tokenizer_round_trips_in_hf_format(tiny_tokenizer_dir):
    assert (tiny_tokenizer_dir / "tokenizer.json").exists()
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    assert len(tokenizer) == 400
    vocab = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    encoded = tokenizer("The flight was delayed")["input_ids"]
    assert encoded[0] == tokenizer.cls_token_id and encoded[-1] == tokenizer.sep_token_id
    assert tokenizer.pad_token_id == 0 and tokenizer.mask_token_id == 4
    # uncased, and every word splits into known pieces rather than [UNK]
    assert tokenizer.tokenize("THE Flight") == tokenizer.tokenize("the flight")
    assert "[UNK]" not in tokenizer.tokenize("the president said the flight was late")


def test_pieces_decode_back(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    text = "the congress shall meet"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_vocabulary_learning_breaks_ties_by_text_not_by_order():
    from selfsup.text.tokenizer import learn_wordpiece_vocab

    counts = {"ab": 3, "cd": 4, "abcd": 1, "ba": 2}  # "a ##b" and "c ##d" tie at 4
    vocab = learn_wordpiece_vocab(counts, vocab_size=100, min_frequency=3)
    reordered = learn_wordpiece_vocab(dict(reversed(list(counts.items()))), vocab_size=100, min_frequency=3)
    assert vocab == reordered
    pieces = sorted(vocab, key=vocab.get)
    assert pieces[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    alphabet = ["##a", "##b", "##c", "##d", "a", "b", "c"]
    assert pieces[len(SPECIAL_TOKENS):] == alphabet + ["ab", "cd"]  # the tie goes to the smaller pair of pieces
    # merging stops below min_frequency: "b ##a" occurs twice, "ab ##cd" once
    assert list(learn_wordpiece_vocab(counts, 100, min_frequency=2))[-1] == "ba"
    assert list(learn_wordpiece_vocab(counts, 100, min_frequency=1))[-3:] == ["ba", "##cd", "abcd"]  # tie again
    assert len(learn_wordpiece_vocab(counts, vocab_size=13, min_frequency=1)) == 13


def test_training_is_reproducible_across_processes(corpus_docs, tmp_path):
    """Two trainings in fresh interpreters (fresh hash seeds) write byte-identical tokenizer.json files."""
    import subprocess
    import sys

    corpus = tmp_path / "texts.json"
    corpus.write_text(json.dumps([text for _, text in corpus_docs]))
    script = ("import json, sys; from selfsup.text.tokenizer import train_wordpiece; "
              "texts = json.load(open(sys.argv[1])); "
              "train_wordpiece(texts, vocab_size=300, min_frequency=2).save(sys.argv[2])")
    outputs = []
    for run in range(2):
        out = tmp_path / f"tokenizer{run}.json"
        subprocess.run([sys.executable, "-c", script, str(corpus), str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(run + 1)})
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
