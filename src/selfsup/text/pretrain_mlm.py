"""Masked-language-model pretraining of a BERT-style encoder, read top to bottom.

    corpus.jsonl --tokenizer--> packed blocks [N, seq_len] --(weighted sampling)--> batches [B, seq_len]
      --HF DataCollatorForLanguageModeling (15% of tokens: 80% [MASK], 10% random, 10% kept)-->
      BertForMaskedLM encoder [B, L, H] --vocabulary head on the selected positions only [M, V]-->
      cross-entropy --> AdamW, linear warm-up then linear decay

Every ``eval_every`` steps the validation MLM loss (and perplexity) is measured on held-out blocks with a fixed
masking seed, so the numbers are comparable across steps. Every ``checkpoint_every`` steps a resumable checkpoint
(model, optimizer, scheduler, RNG states, history) is written atomically; a restarted run with the same
configuration resumes from it. The finished encoder is saved in the Hugging Face format.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfsup.config import PretrainConfig, config_to_dict
from selfsup.text.data import PackedCorpus, block_weights, pack_corpus, read_corpus, split_blocks
from selfsup.fileio import replace_dir, staging_dir
from selfsup.text.model import masked_lm, mlm_loss
from selfsup.text.tokenizer import load_tokenizer
from selfsup.runtime import autocast, progress_bar, setup
from selfsup.tracking import NullTracker, Tracker


@dataclass
class PretrainResult:
    steps: int
    final_train_loss: float
    val_loss: float
    val_perplexity: float
    tokens_per_second: float
    train_tokens: int
    wall_seconds: float
    resumed_from: int
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


def _fingerprint(cfg: PretrainConfig, tokenizer_dir: Path, corpus: Path) -> str:
    """What a checkpoint must match to be resumed: the config (minus paths/progress), tokenizer and corpus."""
    relevant = config_to_dict(cfg)
    for key in ("out_dir", "metrics_dir", "eval_every", "checkpoint_every"):
        relevant.pop(key)
    relevant["loop"].pop("progress")
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    digest.update((tokenizer_dir / "tokenizer.json").read_bytes())
    digest.update(str(corpus.stat().st_size).encode() + str(corpus.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def _save_checkpoint(folder: Path, state: dict) -> None:
    tmp = staging_dir(folder)
    torch.save(state, tmp / "state.pt")
    replace_dir(tmp, folder)


@torch.no_grad()
def evaluate_mlm(model, val: PackedCorpus, collator, batch_size: int, n_batches: int, device, precision: str,
                 seed: int) -> float:
    """Mean MLM loss over the first ``n_batches`` validation batches, with masking fixed by ``seed``."""
    model.eval()
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, min(len(val), n_batches * batch_size), batch_size):
            batch = collator([{"input_ids": ids} for ids in val.blocks[start : start + batch_size]])
            with autocast(device, precision):
                loss = mlm_loss(model, batch["input_ids"].to(device), batch["labels"].to(device))
            losses.append(loss.item())
    model.train()
    return sum(losses) / max(1, len(losses))


def pretrain_mlm(cfg: PretrainConfig, corpus_path: Path, tokenizer_dir: Path, checkpoint_dir: Path,
                 tracker: Tracker | None = None) -> PretrainResult:
    """Pretrain an encoder on ``corpus_path``; save it (HF format) to ``cfg.out_dir``."""
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    tracker = tracker or NullTracker()
    device = setup(cfg.loop)
    tokenizer = load_tokenizer(tokenizer_dir)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability, return_tensors="pt")

    # --- data: packed blocks, a held-out validation share, per-block sampling weights
    packed = pack_corpus(read_corpus(corpus_path), tokenizer, cfg.seq_len)
    train, val = split_blocks(packed, cfg.validation_fraction, cfg.loop.seed)
    weights = block_weights(train, cfg.source_weights)
    sampler = torch.Generator().manual_seed(cfg.loop.seed)

    # --- model and optimizer: no weight decay on biases and LayerNorm weights
    model = masked_lm(cfg.model, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate,
                                  fused=device.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)

    # --- resume from a checkpoint written by an interrupted run with the same configuration
    fingerprint = _fingerprint(cfg, tokenizer_dir, corpus_path)
    step, history, evals = 0, [], []
    state_file = checkpoint_dir / "state.pt"
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            sampler.set_state(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            step, history, evals = state["step"], state["history"], state["evals"]
            print(f"resuming pretraining from the checkpoint at step {step}", flush=True)
        else:
            print("ignoring a checkpoint written with a different configuration; starting fresh", flush=True)
    resumed_from = step

    model.train()
    tokens_per_batch = cfg.batch_size * cfg.seq_len
    start_time = time.perf_counter()
    progress = progress_bar(cfg.max_steps, "pretrain_mlm", cfg.loop.progress, initial=step)
    while step < cfg.max_steps:
        # [B] block indices, drawn with the source weights; [B, L] token ids
        index = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=sampler)
        batch = collator([{"input_ids": ids} for ids in train.blocks[index]])
        input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with autocast(device, cfg.loop.precision):
            loss = mlm_loss(model, input_ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        elapsed = time.perf_counter() - start_time
        rate = (step - resumed_from) * tokens_per_batch / max(elapsed, 1e-9)
        record = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate}
        history.append(record)
        tracker.log_metrics({"train_loss": record["loss"], "lr": record["lr"], "tokens_per_s": rate}, step=step)
        progress.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
        progress.update(1)

        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val_loss = evaluate_mlm(model, val, collator, cfg.batch_size, cfg.eval_batches, device,
                                    cfg.loop.precision, cfg.loop.seed)
            evals.append({"step": step, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50))})
            tracker.log_metrics({"val_loss": val_loss, "val_perplexity": evals[-1]["val_perplexity"]}, step=step)
            progress.write(f"step {step}: val MLM loss {val_loss:.3f}, perplexity {evals[-1]['val_perplexity']:.1f}")
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            _save_checkpoint(checkpoint_dir, {
                "fingerprint": fingerprint, "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "sampler": sampler.get_state(), "torch_rng": torch.get_rng_state(),
                "history": history, "evals": evals,
            })
    progress.close()
    wall = time.perf_counter() - start_time

    out_dir = Path(cfg.out_dir)
    tmp = staging_dir(out_dir)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, out_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume

    trained_steps = max(1, step - resumed_from)
    return PretrainResult(
        steps=step, final_train_loss=sum(h["loss"] for h in history[-20:]) / len(history[-20:]),
        val_loss=evals[-1]["val_loss"], val_perplexity=evals[-1]["val_perplexity"],
        tokens_per_second=trained_steps * tokens_per_batch / max(wall, 1e-9), train_tokens=len(train) * cfg.seq_len,
        wall_seconds=wall, resumed_from=resumed_from, history=history, evals=evals,
    )
