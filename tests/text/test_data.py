"""selfsup.text.data: reading the corpus and the labelled CSVs, packing the corpus into MLM blocks, splitting the
blocks, weighting them by source. On the committed fixture data (tests/fixtures/data) and hand-made files."""

import csv
from collections import Counter
import json

import pytest
import torch

from selfsup.text.data import (PackedCorpus, block_weights, cap_stratified, pack_corpus, read_corpus, read_labelled,
                               split_blocks)
from selfsup.text.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def packed(corpus_docs, tokenizer) -> PackedCorpus:
    return pack_corpus(corpus_docs, tokenizer, seq_len=32)


# ------------------------------------------------------------------------------------------------------ reading

def test_read_corpus_gives_source_and_text_per_line_in_order(fixture_data):
    path = fixture_data / "corpus/unlabeled.jsonl"
    docs = read_corpus(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(docs) == len(lines) == 50
    assert docs == [(d["source"], d["text"]) for d in map(json.loads, lines)]
    assert {s for s, _ in docs} == {"sotu", "moby_dick", "brown", "bbc_news", "tweets"}


def test_read_labelled_reads_quoted_fields_unchanged(fixture_data, tmp_path):
    texts, labels = read_labelled(fixture_data / "topic/train.csv")
    assert len(texts) == len(labels) == 40 and set(labels) == {"business", "entertainment", "politics", "sport", "tech"}
    assert all(len(t) >= 200 for t in texts)  # whole (cut) articles, not lines broken at embedded commas / quotes
    tricky = ['he said "no", then left', "two\nlines", "naïve café ✈", " spaced "]
    with (tmp_path / "t.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows([(t, f"l{i}") for i, t in enumerate(tricky)])
    assert read_labelled(tmp_path / "t.csv") == (tricky, ["l0", "l1", "l2", "l3"])
    # columns are found by name, not position
    (tmp_path / "swapped.csv").write_text("label,text\npos,great\n", encoding="utf-8")
    assert read_labelled(tmp_path / "swapped.csv") == (["great"], ["pos"])


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_labelled(tmp_path / "absent.csv")
    (tmp_path / "no_label.csv").write_text("text,category\nhello,x\n", encoding="utf-8")
    with pytest.raises(KeyError, match="label"):
        read_labelled(tmp_path / "no_label.csv")
    (tmp_path / "bad.jsonl").write_text('{"source": "a", "text": "ok"}\n{"source": "a", "text": \n', encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        read_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "no_text.jsonl").write_text('{"source": "a", "body": "ok"}\n', encoding="utf-8")
    with pytest.raises(KeyError, match="text"):
        read_corpus(tmp_path / "no_text.jsonl")
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):
        read_labelled(tmp_path / "latin1.csv")


# ------------------------------------------------------------------------------------------------------ packing

def test_packing_fills_every_block_without_padding(corpus_docs, tokenizer, packed):
    assert packed.blocks.shape[1] == 32 and packed.blocks.dtype == torch.long
    assert packed.sources.shape == (len(packed),)
    assert (packed.blocks[:, 0] == tokenizer.cls_token_id).all()
    assert (packed.blocks[:, -1] == tokenizer.sep_token_id).all()
    assert not (packed.blocks == tokenizer.pad_token_id).any()
    assert packed.source_names == sorted({s for s, _ in corpus_docs})
    # each source's blocks are its documents' tokens in order, [SEP] after every document, cut into 30-token
    # bodies; only the last incomplete body is dropped
    for index, source in enumerate(packed.source_names):
        stream = []
        for s, text in corpus_docs:
            if s == source:
                stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
        bodies = packed.blocks[packed.sources == index, 1:-1]
        assert len(bodies) == len(stream) // 30 > 0, source
        assert bodies.flatten().tolist() == stream[: len(bodies) * 30], source
    # blocks are grouped by source, in the order of source_names
    assert torch.equal(packed.sources, packed.sources.sort().values)


def test_packing_skips_a_source_too_short_for_one_block_and_refuses_an_empty_result(tokenizer):
    docs = [("long", "the flight was delayed again " * 20), ("short", "ok")]
    packed = pack_corpus(docs, tokenizer, seq_len=16)
    assert packed.source_names == ["long", "short"] and set(packed.sources.tolist()) == {0}
    assert block_weights(packed, {"short": 3.0}).tolist() == [1.0] * len(packed)  # a known source with no block
    with pytest.raises(ValueError, match="no block of 64 tokens"):
        pack_corpus([("short", "ok"), ("tweets", "thanks")], tokenizer, seq_len=64)


def test_packing_does_not_depend_on_the_tokenization_batch_size(corpus_docs, tokenizer, packed):
    again = pack_corpus(corpus_docs, tokenizer, seq_len=32, batch_size=7)
    assert torch.equal(again.blocks, packed.blocks) and torch.equal(again.sources, packed.sources)


# ------------------------------------------------------------------------------------------------------ splitting

def _rows(blocks: torch.Tensor) -> list[tuple[int, ...]]:
    return sorted(map(tuple, blocks.tolist()))


def test_split_is_seeded_disjoint_and_complete(packed):
    train, val = split_blocks(packed, 0.1, seed=3)
    again_train, again_val = split_blocks(packed, 0.1, seed=3)
    assert torch.equal(val.blocks, again_val.blocks) and torch.equal(train.blocks, again_train.blocks)
    assert len(val) == int(len(packed) * 0.1) and len(train) + len(val) == len(packed)
    # every block lands in exactly one split (as a multiset of rows: the union is the whole corpus)
    assert _rows(torch.cat([train.blocks, val.blocks])) == _rows(packed.blocks)
    # a block keeps its source label through the shuffle
    source_of = {tuple(b): int(s) for b, s in zip(packed.blocks.tolist(), packed.sources)}
    for part in (train, val):
        assert part.source_names == packed.source_names
        assert [source_of[tuple(b)] for b in part.blocks.tolist()] == part.sources.tolist()
    other_train, other_val = split_blocks(packed, 0.1, seed=4)
    assert not torch.equal(other_val.blocks, val.blocks), "the seed must change the split"


def test_split_keeps_at_least_one_validation_block(packed):
    train, val = split_blocks(packed, 0.0001, seed=0)
    assert len(val) == 1 and len(train) == len(packed) - 1


# ------------------------------------------------------------------------------------------------------ weights

def test_source_weights_scale_sampling(packed):
    weights = block_weights(packed, {"tweets": 5.0, "sotu": 0.0})
    assert weights.shape == (len(packed),)
    tweets = packed.sources == packed.source_names.index("tweets")
    sotu = packed.sources == packed.source_names.index("sotu")
    assert tweets.any() and sotu.any()
    assert (weights[tweets] == 5.0).all() and (weights[sotu] == 0.0).all()
    assert (weights[~tweets & ~sotu] == 1.0).all()
    assert torch.equal(block_weights(packed, {}), torch.ones(len(packed)))
    with pytest.raises(ValueError, match=r"not in the corpus: \['reddit'\]"):
        block_weights(packed, {"reddit": 2.0})


def test_cap_stratified_keeps_shares_and_is_seeded():
    texts = [f"t{i}" for i in range(100)]
    labels = ["a"] * 70 + ["b"] * 20 + ["c"] * 10
    capped, capped_labels = cap_stratified(texts, labels, 50, seed=1)
    assert Counter(capped_labels) == {"a": 35, "b": 10, "c": 5}
    assert cap_stratified(texts, labels, 50, seed=1) == (capped, capped_labels)
    assert cap_stratified(texts, labels, 0, seed=1) == (texts, labels)
