"""Negative-free pretraining: BYOL, SimSiam and DINO. An online (student) network learns to predict what a target
(teacher) network outputs for another view of the same image; no other image is involved, so something else must
prevent the trivial constant solution:

* BYOL    — a predictor on the online side and a target that is an EMA of the online network;
* SimSiam — a predictor and a stop-gradient on the target branch (the target *is* the online network, no EMA);
* DINO    — an EMA teacher whose outputs are centred and sharpened (``DINOLoss``), no predictor.

Read top to bottom: build the networks, then one loop of augment -> both branches -> symmetric loss -> step ->
teacher update -> monitor.

Under torchrun (``ssl_common``'s docstring: each rank runs its rows of the global batch) every loss here is a mean
over images, so each rank's mean over its equal share, averaged by DDP's gradient all-reduce, is the global batch's
gradient; the logged loss is the mean over the ranks. DINO's center is updated with the teacher outputs of every
rank (gathered in the global batch's order), so it is the single process's center, identical on every rank.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfsup.config import SSLPretrainConfig
from selfsup.distributed import Ranks, gather_rows, mean_over_ranks
from selfsup.vision.augment import two_view_augmenter
from selfsup.vision.losses import DINOLoss, NegativeCosineLoss
from selfsup.vision.model import DINOHead, MLPHead, backbone_for, frozen_copy, update_ema
from selfsup.vision.ssl_common import (
    SSLCheckpoints, SSLResult, check_collapse, data_parallel, learning_rate_at, make_optimizer, momentum_at,
    monitor_collapse, pool_batches, set_learning_rate, share_batch_norm, this_ranks_rows,
)
from selfsup.runtime import autocast, progress_bar


class OnlineNetworks(nn.Module):
    """The trained networks as one module, so that one call per step goes through DDP (which arms its gradient
    all-reduce in its own forward): both views ``[2B, C, S, S]`` -> ``(head outputs [2B, P or K],)``, plus the
    predictions ``[2B, P]`` when there is a predictor (BYOL, SimSiam)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, predictor: nn.Module | None):
        super().__init__()
        self.encoder, self.head, self.predictor = encoder, head, predictor

    def forward(self, both: torch.Tensor) -> tuple[torch.Tensor, ...]:
        online = self.head(self.encoder(both))
        return (online,) if self.predictor is None else (online, self.predictor(online))


def train(cfg: SSLPretrainConfig, pool: np.ndarray, device: torch.device, tracker,
          checkpoint_dir: Path | None = None, ranks: Ranks = Ranks()) -> tuple[torch.nn.Module, SSLResult]:
    """Pretrain on ``pool``; with ``checkpoint_dir``, resume from and save resumable checkpoints there. Under
    torchrun every process calls this with its ``ranks``; they train one model together."""
    if cfg.method not in ("byol", "simsiam", "dino"):
        raise ValueError(f"self_distillation.train runs byol, simsiam or dino, not {cfg.method!r}")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    encoder = backbone_for(cfg, pool.shape[1]).to(device, memory_format=memory_format)
    if cfg.method == "dino":
        head = DINOHead(encoder.out_dim, cfg.hidden_dim, cfg.dino_out_dim).to(device)
        loss_fn = DINOLoss(cfg.dino_out_dim, cfg.teacher_temperature, cfg.student_temperature,
                           cfg.center_momentum).to(device)
        trained = [encoder, head]
    else:
        head = MLPHead(encoder.out_dim, cfg.hidden_dim, cfg.projection_dim).to(device)  # projector
        predictor = MLPHead(cfg.projection_dim, cfg.hidden_dim, cfg.projection_dim).to(device)
        loss_fn = NegativeCosineLoss()
        trained = [encoder, head, predictor]
    share_batch_norm(trained, ranks, device)
    uses_ema = cfg.method in ("byol", "dino")
    if uses_ema:
        teacher_encoder, teacher_head = frozen_copy(encoder), frozen_copy(head)
    optimizer = make_optimizer(trained, cfg)
    state = {"encoder": encoder, "head": head}
    if cfg.method == "dino":
        state["loss"] = loss_fn  # the teacher-output center
    else:
        state["predictor"] = predictor
    if uses_ema:
        state.update(teacher_encoder=teacher_encoder, teacher_head=teacher_head)
    checkpoints = SSLCheckpoints(checkpoint_dir, cfg, pool, state, optimizer, device, ranks=ranks)
    resumed_from, history, monitor = checkpoints.resume()
    online_of = data_parallel(OnlineNetworks(encoder, head, None if cfg.method == "dino" else predictor), ranks,
                              device)
    augment = two_view_augmenter(cfg.augment, cfg.image_size, device, cfg.loop.seed)
    monitor_images = torch.from_numpy(pool[: cfg.monitor_images])
    start = time.perf_counter()
    bar = progress_bar(cfg.max_steps, cfg.method, cfg.loop.progress and ranks.is_main, initial=resumed_from)
    batches = pool_batches(pool, cfg.batch_size, cfg.max_steps, cfg.loop.seed, skip=resumed_from)
    for step, images in enumerate(batches, start=resumed_from + 1):
        lr = learning_rate_at(step, cfg)
        set_learning_rate(optimizer, lr)
        # the whole global batch is augmented on every rank (the single process's draws), each keeps its rows
        views = this_ranks_rows(augment(images, step), ranks)
        view1, view2 = (v.to(device, memory_format=memory_format) for v in views)  # [b, C, S, S] each, b = B / ranks
        with autocast(device, cfg.loop.precision):
            both = torch.cat([view1, view2])  # one pass for both views: [2b, C, S, S]
            outputs = online_of(both)
            online = outputs[0]  # [2b, P] (dino: [2b, K] prototype scores)
            if cfg.method == "dino":
                with torch.no_grad():
                    teacher = teacher_head(teacher_encoder(both))  # [2B, K]
                student_views, teacher_views = online.view(2, -1, online.shape[-1]), teacher.view(2, -1,
                                                                                                 teacher.shape[-1])
                loss = loss_fn(student_views, teacher_views)  # view 1 predicts view 2 and vice versa
            else:
                p1, p2 = outputs[1].chunk(2)  # [b, P] each
                if cfg.method == "byol":
                    with torch.no_grad():
                        z1, z2 = teacher_head(teacher_encoder(both)).chunk(2)
                else:  # simsiam: the target is the online projection itself; the loss stops its gradient
                    z1, z2 = online.chunk(2)
                loss = 0.5 * (loss_fn(p1, z2) + loss_fn(p2, z1))  # symmetric: each view predicts the other
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cfg.method == "dino":
            loss_fn.update_center(gather_rows(teacher_views, ranks, dim=1))  # [2, B, K]: every rank's images
        if uses_ema:
            momentum = momentum_at(step, cfg)
            update_ema(teacher_encoder, encoder, momentum)
            update_ema(teacher_head, head, momentum)
        loss_value = mean_over_ranks(loss, ranks)
        if not np.isfinite(loss_value):
            raise FloatingPointError(f"{cfg.method}: loss became {loss_value} at step {step}; lower the learning rate")
        history.append({"step": step, "loss": loss_value, "lr": lr})
        tracker.log_metrics({"train_loss": loss_value, "learning_rate": lr}, step=step)
        if step % cfg.monitor_every == 0 or step == cfg.max_steps:
            stats = monitor_collapse(encoder, monitor_images, device)
            monitor.append({"step": step, **stats})
            tracker.log_metrics(stats, step=step)
        checkpoints.after_step(step, history, monitor)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    bar.close()
    checkpoints.finish()
    wall = time.perf_counter() - start
    final = monitor[-1]
    trained_images = (cfg.max_steps - resumed_from) * cfg.batch_size
    result = SSLResult(cfg.method, cfg.max_steps, wall, trained_images / wall, history[-1]["loss"],
                       final["embedding_std"], final["effective_rank"], history, monitor, resumed_from)
    check_collapse(final, cfg, result)
    # BYOL/DINO evaluate the teacher (the EMA is the better encoder); SimSiam has only the one network
    return (teacher_encoder if uses_ema else encoder).eval(), result
