"""Unsupervised SimCSE: sentence embeddings from the MLM encoder without labels, read top to bottom.

    in-domain texts (corpus sources: tweets, news) --tokenizer--> batches of B texts [B, L]
      --the encoder twice, dropout on: two noisy views--> masked mean pooling [B, H] x 2
      --cosine similarity / temperature [B, B]--> cross-entropy with the diagonal as the target
      (each text's other view is its positive, the other B-1 texts are negatives) --> AdamW, warm-up, decay

(Gao, Yao & Chen 2021, "SimCSE", unsupervised variant.) The MLM encoder is trained with dropout 0 (better for a
short pretraining), so this stage sets ``simcse.dropout`` on the loaded encoder: without dropout the two views are
identical and the loss teaches nothing. The encoder is saved in the Hugging Face format (``BertModel``) with its
tokenizer; ``selfsup.text.retrieval`` embeds with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from selfsup.config import SimCSEConfig
from selfsup.fileio import replace_dir, staging_dir
from selfsup.text.model import MLM_HEAD, load_checked, mean_pool, save_model
from selfsup.runtime import autocast, progress_bar, setup
from selfsup.tracking import NullTracker, Tracker


class SimCSELoss(torch.nn.Module):
    """In-batch contrastive loss of two views: ``(a [B, D], b [B, D]) -> scalar``.

    ``logits[i, j] = cos(a_i, b_j) / temperature`` [B, B]; the target of row i is column i. Needs B >= 2 (a batch
    of one has no negative)."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.ndim != 2 or a.shape != b.shape:
            raise ValueError(f"expected two [B, D] tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        if a.shape[0] < 2:
            raise ValueError("a batch needs at least 2 texts: the other texts are the negatives")
        a = torch.nn.functional.normalize(a.float(), dim=-1)
        b = torch.nn.functional.normalize(b.float(), dim=-1)
        logits = a @ b.T / self.temperature  # [B, B]
        return torch.nn.functional.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def load_encoder(folder: Path, dropout: float | None = None):
    """The ``BertModel`` of an MLM (or SimCSE) checkpoint, optionally with its dropout changed."""
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(folder), local_files_only=True)
    if dropout is not None:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    return load_checked(BertModel, folder, dropped=(MLM_HEAD,), config=config, add_pooling_layer=False,
                        attn_implementation="sdpa")


@dataclass
class SimCSEResult:
    steps: int
    texts: int
    final_loss: float
    wall_seconds: float
    texts_per_second: float
    history: list[dict] = field(default_factory=list)


def train_simcse(cfg: SimCSEConfig, texts: list[str], mlm_dir: Path, out_dir: Path,
                 tracker: Tracker | None = None) -> SimCSEResult:
    """Train the SimCSE encoder on ``texts`` starting from the MLM encoder in ``mlm_dir``; save it to ``out_dir``."""
    from transformers import get_linear_schedule_with_warmup

    from selfsup.text.model import collate, encode
    from selfsup.text.tokenizer import load_tokenizer

    if len(texts) < cfg.batch_size:
        raise ValueError(f"simcse: {len(texts)} texts, fewer than one batch of {cfg.batch_size}")
    tracker = tracker or NullTracker()
    device = setup(cfg.loop)
    tokenizer = load_tokenizer(mlm_dir)
    ids = encode(tokenizer, texts, cfg.max_length)
    model = load_encoder(mlm_dir, dropout=cfg.dropout).to(device).train()
    loss_fn = SimCSELoss(cfg.temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)
    sampler = torch.Generator().manual_seed(cfg.loop.seed)

    history, seen = [], 0
    started = time.perf_counter()
    progress = progress_bar(cfg.max_steps, "simcse", cfg.loop.progress)
    for step in range(1, cfg.max_steps + 1):
        index = torch.randperm(len(ids), generator=sampler)[: cfg.batch_size]  # B distinct texts
        input_ids, mask = collate([ids[i] for i in index], tokenizer.pad_token_id)
        input_ids, mask = input_ids.to(device), mask.to(device)
        with autocast(device, cfg.loop.precision):
            # the same batch twice: only dropout makes the two views differ
            view_a = mean_pool(model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)  # [B, H]
            view_b = mean_pool(model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)  # [B, H]
            loss = loss_fn(view_a, view_b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(index)
        record = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
        history.append(record)
        tracker.log_metrics({"train_loss": record["loss"], "lr": record["lr"]}, step=step)
        progress.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
        progress.update(1)
    progress.close()
    wall = time.perf_counter() - started

    tmp = staging_dir(Path(out_dir))
    save_model(model, tokenizer, tmp)
    replace_dir(tmp, Path(out_dir))
    last = history[-20:]
    return SimCSEResult(cfg.max_steps, len(texts), sum(h["loss"] for h in last) / len(last), wall,
                        seen / max(wall, 1e-9), history)


@torch.no_grad()
def embed_texts(encoder, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """L2-normalised mean-pooled embeddings [N, H] (float32, input order), dropout off."""
    from selfsup.text.model import collate, encode

    encoder.eval()
    ids = encode(tokenizer, texts, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), encoder.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        input_ids, mask = collate([ids[i] for i in index], tokenizer.pad_token_id)
        pooled = mean_pool(encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)
        out[index] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out
