"""selfsup's MLM fast path (the vocabulary head on the masked positions only, ``selfsup.text.model.mlm_loss``) against
the Hugging Face step (``BertForMaskedLM(input_ids, labels=labels).loss``, the head on every position), on the same
packed batch and the same masks from ``DataCollatorForLanguageModeling``; and the throughput benchmark of the HF
recipes against ours (``benchmarks/mlm_throughput.py``) on the tiny setting.

Tolerances. In float32 both paths run the same encoder kernels on the same [B, L] input (the same hidden states)
and differ only in (a) the head's matmul over [M, H] rows instead of [B * L, H] (possibly another BLAS blocking) and
(b) the cross-entropy mean, taken over the M selected rows here and over all B * L rows with the others ignored
there: summation order only. Summing n float32 terms in another order changes the result by at most ~n x 1.2e-7
(~2e-5 for the ~160 masked positions here), typically ~sqrt(n) x 1.2e-7 (~2e-6); we allow 1e-5 relative. (Measured
on the 2-core Xeon: identical to the last bit.) A real mistake is far outside it: the selection shifted by one
position changes this loss by ~50 % (checked below, so the tolerance can tell). Under bf16 autocast each logit is
also rounded to bf16 (8 significant bits); a logit rounded the other way by another blocking moves by one bf16 step,
2^-8 relative, so the mean loss can move by up to ~2^-8 relative: we allow 4e-3 (measured: identical as well).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch

from selfsup.config import ModelConfig
from selfsup.text.data import pack_corpus
from selfsup.text.model import masked_lm, mlm_loss
from selfsup.text.tokenizer import load_tokenizer

MODEL = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=64, dropout=0.0)
SEQ_LEN = 64
FP32_RTOL = 1e-5
BF16_RTOL = 4e-3  # 2^-8, one bf16 rounding step


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def batch(tokenizer, corpus_docs):
    """A real training batch: 8 packed blocks of the fixture corpus [8, 64], masked by the HF collator at the
    pipeline's 30 % rate (seeded)."""
    from transformers import DataCollatorForLanguageModeling

    packed = pack_corpus(corpus_docs, tokenizer, SEQ_LEN)
    assert len(packed) >= 8, "the fixture corpus should give at least 8 blocks of 64 tokens"
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, return_tensors="pt")
    torch.manual_seed(0)
    out = collator(list(packed.blocks[:8]))
    assert (out["labels"] != -100).sum() > 50
    return out["input_ids"], out["labels"]


def _model(tokenizer, batch):
    """The tiny encoder after 20 AdamW steps on the batch: a fresh model predicts every token about equally badly
    (every position's loss ~ log V), which would hide a wrong selection of positions; a trained one does not."""
    torch.manual_seed(0)
    model = masked_lm(MODEL, len(tokenizer), tokenizer.pad_token_id).train()  # train(): as in the training step
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(20):
        mlm_loss(model, *batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


def _loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.detach().float(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_fast_path_gives_the_hf_loss_and_gradients_in_fp32(tokenizer, batch):
    input_ids, labels = batch
    model = _model(tokenizer, batch)
    hf_loss, hf_grads = _loss_and_grads(model, lambda: model(input_ids=input_ids, labels=labels).loss)
    fast_loss, fast_grads = _loss_and_grads(model, lambda: mlm_loss(model, input_ids, labels))

    assert torch.isclose(fast_loss, hf_loss, rtol=FP32_RTOL, atol=0), (fast_loss.item(), hf_loss.item())
    assert fast_grads.keys() == hf_grads.keys()
    for name, grad in hf_grads.items():  # the optimizer sees the same update
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)

    # the tolerance can see a real difference: the selected positions shifted by one (an off-by-one in the
    # selection) moves the loss far beyond it
    shifted = torch.full_like(labels, -100)
    shifted[:, 1:] = torch.where(labels[:, :-1] != -100, input_ids[:, 1:], -100)
    with torch.no_grad():
        changed = mlm_loss(model, input_ids, shifted)
    assert abs(changed - hf_loss) > 100 * FP32_RTOL * hf_loss, (changed.item(), hf_loss.item())


def test_fast_path_gives_the_hf_loss_under_bf16_autocast(tokenizer, batch):
    input_ids, labels = batch
    model = _model(tokenizer, batch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hf_loss = model(input_ids=input_ids, labels=labels).loss.float()
        fast_loss = mlm_loss(model, input_ids, labels)
    with torch.no_grad():
        fp32_reference = mlm_loss(model, input_ids, labels)
    assert fast_loss.dtype == torch.float32  # the cross-entropy runs on float32 logits
    assert torch.isclose(fast_loss, hf_loss, rtol=BF16_RTOL, atol=0), (fast_loss.item(), hf_loss.item())
    assert not torch.equal(fast_loss, fp32_reference), "autocast had no effect: the bf16 case tested nothing"


def _benchmark_module(repo_root):
    spec = importlib.util.spec_from_file_location("mlm_throughput", repo_root / "benchmarks/mlm_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_benchmark_recipes_get_the_same_real_tokens_per_step(repo_root, tiny_config, tokenizer, corpus_docs):
    """group_texts gives full blocks of real tokens, and the padded recipe takes as many rows as carry the same real
    tokens per step on average (within half a row)."""
    bench = _benchmark_module(repo_root)
    pc = tiny_config.pretrain
    data = bench.prepare_data(corpus_docs, tokenizer, pc)
    grouped = data["grouped"]["rows"]
    assert grouped and all(len(row["input_ids"]) == pc.seq_len and sum(row["attention_mask"]) == pc.seq_len
                           for row in grouped)
    assert data["mean_real"] < pc.seq_len  # the fixture's tweets are short: padded rows carry padding
    assert abs(data["padded_rows"] * data["mean_real"] - pc.batch_size * pc.seq_len) <= data["mean_real"] / 2
    assert bench.train_flops(MODEL, 1000, 64, tokens=10, head_positions=0) < \
        bench.train_flops(MODEL, 1000, 64, tokens=10, head_positions=10)


def test_benchmark_quick_run(repo_root, tiny_tokenizer_dir, fixture_data):
    """The --quick run on the fixture corpus: it finishes, prints the tables, and ends with its JSON line."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "benchmarks/mlm_throughput.py", "--quick", "tracking.enabled=false",
         f"tokenizer.out_dir={tiny_tokenizer_dir}", f"data.corpus={fixture_data / 'corpus/unlabeled.jsonl'}",
         "pretrain.loop.threads=1"],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"device", "tokens_per_s_padded", "tokens_per_s_grouped", "tokens_per_s_ours", "ratio_vs_padded",
            "ratio_vs_grouped", "mfu_ours"} <= set(summary)
    assert min(summary[k] for k in ("tokens_per_s_padded", "tokens_per_s_grouped", "tokens_per_s_ours")) > 0
    assert summary["ratio_vs_padded"] > 0 and summary["ratio_vs_grouped"] > 0
    assert summary["mfu_ours"] is None or 0 < summary["mfu_ours"] < 1
    assert summary["ablation"]["+ torch.compile (encoder, static shapes)"] is None  # skipped with --quick
    assert "- packing (padded rows)" in summary["ablation"] and "ablation" in result.stdout
    print(f"quick run: {time.monotonic() - started:.0f} s")
