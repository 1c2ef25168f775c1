import numpy as np
import pytest
import torch

from selfsup.config import ModelConfig
from selfsup.text.chunking import mean_log_probs, split_texts, word_chunks
from selfsup.text.model import classifier_from_scratch, predict_logits
from selfsup.text.tokenizer import load_tokenizer


def test_word_chunks_cuts_at_chunk_words_and_stops_at_max_chunks():
    text = " ".join(f"w{i}" for i in range(10))
    assert word_chunks(text, 4, 8) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert word_chunks(text, 4, 2) == ["w0 w1 w2 w3", "w4 w5 w6 w7"]
    assert word_chunks("  short \n text ", 4, 2) == ["short text"]
    with pytest.raises(ValueError, match="chunk_words and max_chunks must be >= 1"):
        word_chunks(text, 0, 2)


def test_split_texts_keeps_owner_order_and_zero_means_whole_texts():
    texts = ["a b c d e", "f"]
    assert split_texts(texts, 2, 8) == (["a b", "c d", "e", "f"], [0, 0, 0, 1])
    assert split_texts(texts, 0, 8) == (texts, [0, 1])


def test_mean_log_probs_averages_each_texts_pieces_log_softmax():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    pooled = mean_log_probs(logits, [0, 0, 1], 2)
    log_softmax = torch.log_softmax(torch.from_numpy(logits), -1).numpy()
    np.testing.assert_allclose(pooled[0], (log_softmax[0] + log_softmax[1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(pooled[1], [np.log(0.5), np.log(0.5)], rtol=1e-6)
    # a sure piece outweighs an unsure one: piece 0 says class 0 with p=0.88, piece 1 class 1 with p=0.73
    assert pooled[0].argmax() == 0
    with pytest.raises(ValueError, match="text 1 has no piece"):
        mean_log_probs(logits[:2], [0, 0], 2)


def test_predict_logits_reads_long_texts_in_pieces(tiny_tokenizer_dir):
    torch.manual_seed(0)
    labels = ["a", "b", "c"]
    model = classifier_from_scratch(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                                max_position=64), 400, 0, labels)
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    long_text = " ".join(["the flight was late and the bag was lost"] * 6)  # 54 words: 4 pieces of 16
    texts = [long_text, "ok"]
    chunked = predict_logits(model, tokenizer, texts, 64, torch.device("cpu"), chunk_words=16, max_chunks=8)
    pieces = predict_logits(model, tokenizer, word_chunks(long_text, 16, 8) + ["ok"], 64, torch.device("cpu"))
    expected = torch.log_softmax(pieces, -1)
    torch.testing.assert_close(chunked[0], expected[:4].mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked[1], expected[4], rtol=1e-5, atol=1e-5)
    whole = predict_logits(model, tokenizer, texts, 64, torch.device("cpu"))
    assert not torch.allclose(chunked[0], torch.log_softmax(whole[0], -1)), "the pieces must change a long text"
