"""What the image self-supervised recipes share: batches from the unlabeled pool, the optimizer and its schedules,
the collapse monitor, resumable checkpoints, and the result. The training loops themselves live in one file per
method family (``contrastive.py``: SimCLR, MoCo v2; ``self_distillation.py``: BYOL, SimSiam, DINO);
``selfsup.vision.stages.pretrain_ssl`` picks one.

Resuming: every ``checkpoint_every`` steps a recipe saves every network it trains or updates (online, target/teacher,
MoCo's queue, DINO's center), the optimizer, the global RNGs (the augmentations draw from torch's) and the history
(``SSLCheckpoints``). A killed run restarted with the same configuration and pool continues from the last one: the
batches are the same because ``pool_batches`` replays its seeded permutations up to the resumed step, so the final
encoder equals an uninterrupted run's bit for bit on the same machine and thread count
(``tests/vision/test_resume_ssl.py``).

Several processes (``torchrun``, see docs/pipeline.md) train one model with DistributedDataParallel. Every rank draws
the same global batch of ``batch_size`` images (same seeded permutation) and augments the *whole* batch with the
same torch RNG as one process, then keeps its own contiguous rows [batch_size / processes] (``this_ranks_rows``):
the images seen and the augmentations drawn are exactly the single process's. What differs from one process:
floating-point summation order (batch-norm statistics and losses summed over ranks, gradients all-reduced) and the
cost: the augmentation of the whole batch, CPU work that does not shrink with more processes. Batch normalisation
uses the statistics of the global batch (``selfsup.distributed.use_global_batch_norm``: SyncBatchNorm on GPUs), so
a step normalises like one process and a contrastive loss cannot find a view's partner through its rank's batch
statistics. How each method's loss is made global is in its own file. Rank 0 alone reads and writes checkpoints
(it sends what it read to the others), tracks and writes outputs; the checkpoint (and its fingerprint) does not
depend on the number of processes, so a run may resume on another number of them. One process runs the plain loop,
bit-identical to before the distributed path existed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from selfsup.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from selfsup.config import SSLPretrainConfig, config_to_dict
from selfsup.distributed import Ranks, broadcast_from_main, use_global_batch_norm
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
    resumed_from: int = 0  # the checkpoint's step this run continued from (0: started fresh)


def pool_batches(pool: np.ndarray, batch_size: int, steps: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """Batches ``uint8 [B, C, H, W]`` number ``skip + 1`` to ``steps`` of the pool: a fresh seeded permutation per
    epoch, last partial batch dropped (contrastive losses want full batches; MoCo's queue needs a fixed batch size).
    The ``skip`` batches of a resumed run are drawn but not copied, so the ones after are the uninterrupted run's."""
    if len(pool) < batch_size:
        raise ValueError(f"the pool has {len(pool)} images, fewer than one batch ({batch_size})")
    rng = np.random.default_rng(seed)
    produced = 0
    while produced < steps:
        order = rng.permutation(len(pool))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if produced >= skip:
                yield torch.from_numpy(pool[np.sort(order[start : start + batch_size])])
            produced += 1
            if produced == steps:
                return


def ssl_fingerprint(cfg: SSLPretrainConfig, pool: np.ndarray) -> str:
    """What a checkpoint must match to be resumed: the configuration (minus paths, progress display and checkpoint
    interval) and the pool's pixels."""
    relevant = config_to_dict(cfg)
    for key in ("out_dir", "metrics_dir", "checkpoint_every"):
        relevant.pop(key)
    relevant["loop"].pop("progress")
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode())
    digest.update(str(pool.shape).encode() + str(pool.dtype).encode())
    digest.update(np.ascontiguousarray(pool).data)
    return digest.hexdigest()


class SSLCheckpoints:
    """The resumable checkpoints of one run in ``folder`` (``None``: no checkpoints, nothing resumed).

    ``modules`` are every network whose state changes during training (trained, EMA-updated, or a buffer such as
    MoCo's queue); their ``state_dict`` plus ``optimizer``, the RNGs, the step and the history make a checkpoint.
    Under torchrun only rank 0 reads and writes them; the others receive what it read (their disk may not hold it)."""

    def __init__(self, folder: Path | None, cfg: SSLPretrainConfig, pool: np.ndarray, modules: dict[str, nn.Module],
                 optimizer: torch.optim.Optimizer, device: torch.device, say: Callable[[str], None] = print,
                 ranks: Ranks = Ranks()):
        self.folder = Path(folder) if folder is not None else None
        self.every, self.max_steps = cfg.checkpoint_every, cfg.max_steps
        self.modules, self.optimizer, self.device, self.ranks = modules, optimizer, device, ranks
        self.say = say if ranks.is_main else (lambda line: None)
        self.fingerprint = ssl_fingerprint(cfg, pool) if folder is not None and ranks.is_main else ""

    def resume(self) -> tuple[int, list[dict], list[dict]]:
        """Load the last checkpoint into the modules, optimizer and RNGs; ``(step, history, monitor)`` to continue
        from (``(0, [], [])`` when there is none to resume)."""
        if self.folder is None:
            return 0, [], []
        state = load_checkpoint(self.folder, self.fingerprint, self.say) if self.ranks.is_main else None
        state = broadcast_from_main(state, self.ranks)
        if state is None:
            return 0, [], []
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"], self.device)
        self.say(f"resuming pretraining from the checkpoint at step {state['step']}")
        return state["step"], state["history"], state["monitor"]

    def after_step(self, step: int, history: list[dict], monitor: list[dict]) -> None:
        """Save a checkpoint when ``step`` is due (never after the last step: the finished encoder is the output)."""
        if self.folder is None or step % self.every or step >= self.max_steps or not self.ranks.is_main:
            return
        save_checkpoint(self.folder, {
            "fingerprint": self.fingerprint, "step": step,
            "modules": {name: module.state_dict() for name, module in self.modules.items()},
            "optimizer": self.optimizer.state_dict(), "rng": rng_state(self.device),
            "history": history, "monitor": monitor,
        })

    def finish(self) -> None:
        """The run completed: nothing is left to resume."""
        if self.folder is not None and self.ranks.is_main:
            for leftover in (self.folder, self.folder.with_name(self.folder.name + ".tmp")):
                shutil.rmtree(leftover, ignore_errors=True)


def check_batch_splits(cfg: SSLPretrainConfig, ranks: Ranks) -> None:
    """Refuse, before any process group is joined, a global batch that the processes cannot share equally."""
    if cfg.batch_size % ranks.world_size:
        raise ValueError(f"vision.pretrain.batch_size ({cfg.batch_size}) must divide by the number of processes "
                         f"({ranks.world_size})")


def share_batch_norm(modules: list[nn.Module], ranks: Ranks, device: torch.device) -> None:
    """Under torchrun: batch statistics over every rank's rows (see the module docstring). Call it on the trained
    networks before their EMA copies are made, so that the target/teacher/key networks normalise globally too."""
    if ranks.distributed:
        for module in modules:
            use_global_batch_norm(module, device)


def data_parallel(module: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun (gradients averaged over the ranks in
    backward); ``module`` itself in one process. Buffers are not re-broadcast: the global batch norm already gives
    every rank the same running statistics."""
    if not ranks.distributed:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)


def this_ranks_rows(views: tuple[torch.Tensor, ...], ranks: Ranks) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous rows [B / processes, ...] of each view of the global batch [B, ...]; the views
    themselves in one process."""
    if not ranks.distributed:
        return views
    rows = ranks.rows(len(views[0]))
    return tuple(view[rows] for view in views)


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
