"""What the image self-supervised recipes share: batches from the unlabeled pool, the optimizer and its schedules,
the collapse monitor, and the result. The training loops themselves live in one file per method family
(``contrastive.py``: SimCLR, MoCo v2; ``self_distillation.py``: BYOL, SimSiam, DINO); ``selfsup.vision.stages.pretrain_ssl`` picks one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from selfsup.config import SSLPretrainConfig
from selfsup.vision.model import collapse_statistics


class CollapseError(RuntimeError):
    """The encoder's embeddings collapsed (std or effective rank below the configured threshold); ``result`` holds
    the finished run's numbers so the caller can still log them."""

    def __init__(self, message: str, result: "SSLResult | None" = None):
        super().__init__(message)
        self.result = result


@dataclass
class SSLResult:
    method: str
    steps: int
    wall_seconds: float
    images_per_second: float
    final_loss: float
    embedding_std: float
    effective_rank: float
    history: list[dict] = field(default_factory=list)  # per logged step: step, loss, lr
    monitor: list[dict] = field(default_factory=list)  # per monitor point: step, embedding_std, effective_rank


def pool_batches(pool: np.ndarray, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` batches ``uint8 [B, C, H, W]`` of the pool: a fresh seeded permutation per epoch, last partial
    batch dropped (contrastive losses want full batches; MoCo's queue needs a fixed batch size)."""
    if len(pool) < batch_size:
        raise ValueError(f"the pool has {len(pool)} images, fewer than one batch ({batch_size})")
    rng = np.random.default_rng(seed)
    produced = 0
    while True:
        order = rng.permutation(len(pool))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield torch.from_numpy(pool[np.sort(order[start : start + batch_size])])
            produced += 1
            if produced == steps:
                return


def make_optimizer(modules: list[nn.Module], cfg: SSLPretrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and normalisation weights (1-D parameters)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)


def learning_rate_at(step: int, cfg: SSLPretrainConfig) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to 0 at ``max_steps`` (``step`` is 1-based)."""
    if step <= cfg.warmup_steps:
        return cfg.learning_rate * step / max(cfg.warmup_steps, 1)
    progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def momentum_at(step: int, cfg: SSLPretrainConfig) -> float:
    """BYOL/DINO teacher momentum: cosine from ``momentum`` at step 0 to 1 at ``max_steps``."""
    return 1 - (1 - cfg.momentum) * 0.5 * (1 + math.cos(math.pi * step / cfg.max_steps))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def monitor_collapse(encoder: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 512) -> dict:
    """Collapse statistics of the encoder's representation of fixed, un-augmented pool images (eval mode)."""
    was_training = encoder.training
    encoder.eval()
    embeddings = torch.cat([encoder(images[i : i + batch].to(device)).float().cpu()
                            for i in range(0, len(images), batch)])
    encoder.train(was_training)
    return collapse_statistics(embeddings)


def check_collapse(stats: dict, cfg: SSLPretrainConfig, result: "SSLResult | None" = None) -> None:
    """Fail the run, with a message saying so, when the final embeddings collapsed."""
    broken = []
    if stats["embedding_std"] < cfg.min_embedding_std:
        broken.append(f"embedding std {stats['embedding_std']:.4f} < min_embedding_std {cfg.min_embedding_std}")
    if stats["effective_rank"] < cfg.min_effective_rank:
        broken.append(f"effective rank {stats['effective_rank']:.2f} < min_effective_rank {cfg.min_effective_rank}")
    if broken:
        raise CollapseError(f"{cfg.method} pretraining COLLAPSED: " + "; ".join(broken) + ". The encoder maps "
                            "different images to (nearly) the same embedding; try a lower learning rate, a "
                            "stronger augmentation or, for byol/simsiam/dino, a higher momentum.", result)
