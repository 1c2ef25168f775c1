import json

from selfsup.modeling.tokenizer import SPECIAL_TOKENS, load_tokenizer


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
