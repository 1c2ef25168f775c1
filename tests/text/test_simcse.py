"""The SimCSE loss against a NumPy reference and its defining property, and the recipe on a tiny encoder."""

import numpy as np
import pytest
import torch

from selfsup.text.model import mean_pool
from selfsup.text.simcse import SimCSELoss, load_encoder


def _reference(a: np.ndarray, b: np.ndarray, temperature: float) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = a @ b.T / temperature
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-np.mean(np.diag(log_softmax)))


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0])
def test_loss_matches_a_numpy_reference(temperature):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    loss = SimCSELoss(temperature)(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert loss == pytest.approx(_reference(a, b, temperature), rel=1e-5)


def test_identical_views_of_distinct_texts_are_easy_and_a_shuffle_is_hard():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.normal(size=(16, 32)).astype(np.float32))
    aligned = SimCSELoss(0.05)(a, a).item()
    shuffled = SimCSELoss(0.05)(a, a[torch.randperm(16, generator=torch.Generator().manual_seed(0))]).item()
    assert aligned < 0.05 < np.log(16) < shuffled, (aligned, shuffled)


@pytest.mark.parametrize("args,words", [((torch.zeros(1, 4), torch.zeros(1, 4)), "at least 2"),
                                        ((torch.zeros(3, 4), torch.zeros(3, 5)), "same shape"),
                                        ((torch.zeros(3), torch.zeros(3)), "same shape")])
def test_bad_inputs_are_refused(args, words):
    with pytest.raises(ValueError, match=words):
        SimCSELoss()(*args)


def test_bad_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        SimCSELoss(0.0)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])  # [1, 3, 2]
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 2.0]]


def test_dropout_makes_the_two_views_differ_only_in_training_mode(tiny_mlm_dir):
    """The stage's premise: with dropout on, two passes over the same batch differ; without, they are identical."""
    from selfsup.text.model import collate, encode
    from selfsup.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_mlm_dir)
    input_ids, mask = collate(encode(tokenizer, ["my bag is lost", "two hours late again"], 32), tokenizer.pad_token_id)

    def two_views(encoder):
        return [mean_pool(encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask) for _ in (0, 1)]

    with torch.no_grad():
        on = two_views(load_encoder(tiny_mlm_dir, dropout=0.1).train())
        off = two_views(load_encoder(tiny_mlm_dir, dropout=0.1).eval())
        zero = two_views(load_encoder(tiny_mlm_dir, dropout=None).train())  # the MLM checkpoint: dropout 0
    assert not torch.allclose(*on)
    assert torch.equal(*off) and torch.equal(*zero)


def test_training_lowers_the_loss_and_saves_an_encoder(tiny_mlm_dir, corpus_docs, tmp_path):
    from selfsup.config import SimCSEConfig, TrainLoopConfig
    from selfsup.text.simcse import train_simcse

    texts = [t[:200] for _, t in corpus_docs] * 2
    cfg = SimCSEConfig(loop=TrainLoopConfig(threads=1, progress=False), batch_size=8, max_steps=30, warmup_steps=2,
                       learning_rate=1e-3, max_length=32)
    result = train_simcse(cfg, texts, tiny_mlm_dir, tmp_path / "simcse")
    first, last = np.mean([h["loss"] for h in result.history[:5]]), np.mean([h["loss"] for h in result.history[-5:]])
    assert last < first, (first, last)
    assert (tmp_path / "simcse" / "config.json").exists() and (tmp_path / "simcse" / "tokenizer.json").exists()
    encoder = load_encoder(tmp_path / "simcse")
    assert encoder.config.hidden_dropout_prob == 0.1  # saved as trained; embedding runs in eval mode


def test_too_few_texts_for_a_batch_is_an_error(tiny_mlm_dir, tmp_path):
    from selfsup.config import SimCSEConfig
    from selfsup.text.simcse import train_simcse

    with pytest.raises(ValueError, match="fewer than one batch"):
        train_simcse(SimCSEConfig(batch_size=8), ["a", "b"], tiny_mlm_dir, tmp_path / "x")
