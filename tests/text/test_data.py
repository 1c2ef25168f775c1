import torch

from selfsup.text.data import block_weights, pack_corpus, split_blocks
from selfsup.text.tokenizer import load_tokenizer


def test_packing_fills_every_block_without_padding(corpus_docs, tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    packed = pack_corpus(corpus_docs, tokenizer, seq_len=32)
    assert packed.blocks.shape[1] == 32
    assert (packed.blocks[:, 0] == tokenizer.cls_token_id).all()
    assert (packed.blocks[:, -1] == tokenizer.sep_token_id).all()
    assert not (packed.blocks == tokenizer.pad_token_id).any()
    assert set(packed.source_names) == {s for s, _ in corpus_docs}
    # all tokens of a source are kept, up to the last incomplete block
    tweets = [t for s, t in corpus_docs if s == "tweets"]
    stream = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in tweets)
    n_tweet_blocks = int((packed.sources == packed.source_names.index("tweets")).sum())
    assert n_tweet_blocks == stream // 30


def test_split_is_seeded_and_disjoint(corpus_docs, tiny_tokenizer_dir):
    packed = pack_corpus(corpus_docs, load_tokenizer(tiny_tokenizer_dir), seq_len=32)
    train, val = split_blocks(packed, 0.1, seed=3)
    again_train, again_val = split_blocks(packed, 0.1, seed=3)
    assert torch.equal(val.blocks, again_val.blocks) and torch.equal(train.blocks, again_train.blocks)
    assert len(train) + len(val) == len(packed) and len(val) == int(len(packed) * 0.1)


def test_source_weights_scale_sampling(corpus_docs, tiny_tokenizer_dir):
    packed = pack_corpus(corpus_docs, load_tokenizer(tiny_tokenizer_dir), seq_len=32)
    weights = block_weights(packed, {"tweets": 5.0})
    tweets = packed.sources == packed.source_names.index("tweets")
    assert (weights[tweets] == 5.0).all() and (weights[~tweets] == 1.0).all()
    import pytest

    with pytest.raises(ValueError, match="not in the corpus"):
        block_weights(packed, {"reddit": 2.0})


def test_hf_collator_masks_about_15_percent(corpus_docs, tiny_tokenizer_dir):
    from transformers import DataCollatorForLanguageModeling

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    packed = pack_corpus(corpus_docs, tokenizer, seq_len=32)
    torch.manual_seed(0)
    batch = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)([{"input_ids": b} for b in packed.blocks])
    selected = batch["labels"] != -100
    assert 0.12 < selected.float().mean() < 0.18
    assert not selected[:, 0].any()  # [CLS] is never a target
    masked = batch["input_ids"][selected] == tokenizer.mask_token_id
    assert 0.7 < masked.float().mean() < 0.9
