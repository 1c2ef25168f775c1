"""Contrastive pretraining: SimCLR and MoCo v2. Each image is augmented twice; the two views must be closer to each
other than to the views of other images (SimCLR: the rest of the batch; MoCo: a queue of past keys from a
momentum encoder).

Read top to bottom: build the networks, then one loop of augment -> embed -> loss -> step -> monitor.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from selfsup.config import SSLPretrainConfig
from selfsup.vision.augment import TwoViews
from selfsup.vision.losses import InfoNCEWithQueue, MemoryQueue, NTXentLoss
from selfsup.vision.model import MLPHead, build_backbone, frozen_copy, update_ema
from selfsup.vision.ssl_common import (
    SSLCheckpoints, SSLResult, check_collapse, learning_rate_at, make_optimizer, monitor_collapse, pool_batches,
    set_learning_rate,
)
from selfsup.runtime import autocast, progress_bar

METHODS = ("simclr", "moco")


def train(cfg: SSLPretrainConfig, pool: np.ndarray, device: torch.device, tracker,
          checkpoint_dir: Path | None = None) -> tuple[torch.nn.Module, SSLResult]:
    """Pretrain on ``pool``; with ``checkpoint_dir``, resume from and save resumable checkpoints there."""
    if cfg.method not in METHODS:
        raise ValueError(f"contrastive.train runs simclr or moco, not {cfg.method!r}")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    encoder = build_backbone(cfg.backbone, pool.shape[1], cfg.width).to(device, memory_format=memory_format)
    projector = MLPHead(encoder.out_dim, cfg.hidden_dim, cfg.projection_dim).to(device)
    if cfg.method == "simclr":
        loss_fn = NTXentLoss(cfg.temperature)
    else:
        # MoCo: keys come from a slowly moving copy of the query network, so the queue's keys stay consistent
        key_encoder, key_projector = frozen_copy(encoder), frozen_copy(projector)
        queue = MemoryQueue(cfg.queue_size, cfg.projection_dim).to(device)
        loss_fn = InfoNCEWithQueue(cfg.temperature)
    optimizer = make_optimizer([encoder, projector], cfg)
    state = {"encoder": encoder, "projector": projector}
    if cfg.method == "moco":
        state.update(key_encoder=key_encoder, key_projector=key_projector, queue=queue)
    checkpoints = SSLCheckpoints(checkpoint_dir, cfg, pool, state, optimizer, device)
    resumed_from, history, monitor = checkpoints.resume()
    augment = TwoViews(cfg.augment, cfg.image_size)
    monitor_images = torch.from_numpy(pool[: cfg.monitor_images])
    start = time.perf_counter()
    bar = progress_bar(cfg.max_steps, cfg.method, cfg.loop.progress, initial=resumed_from)
    batches = pool_batches(pool, cfg.batch_size, cfg.max_steps, cfg.loop.seed, skip=resumed_from)
    for step, images in enumerate(batches, start=resumed_from + 1):
        lr = learning_rate_at(step, cfg)
        set_learning_rate(optimizer, lr)
        view1, view2 = (v.to(device, memory_format=memory_format) for v in augment(images))  # [B, C, S, S] each
        with autocast(device, cfg.loop.precision):
            if cfg.method == "simclr":
                loss = loss_fn(projector(encoder(view1)), projector(encoder(view2)))  # [B, P] x 2 -> scalar
            else:
                queries = projector(encoder(view1))  # [B, P]
                with torch.no_grad():
                    update_ema(key_encoder, encoder, cfg.momentum)
                    update_ema(key_projector, projector, cfg.momentum)
                    keys = key_projector(key_encoder(view2))  # [B, P], no gradient
                loss = loss_fn(queries, keys, queue.keys)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cfg.method == "moco":
            queue.enqueue(keys)  # after the loss: this batch's keys are negatives for the next batches only
        loss_value = float(loss.detach())
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
    return encoder.eval(), result
