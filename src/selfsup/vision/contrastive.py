"""Contrastive pretraining: SimCLR and MoCo v2. Each image is augmented twice; the two views must be closer to each
other than to the views of other images (SimCLR: the rest of the batch; MoCo: a queue of past keys from a
momentum encoder).

Read top to bottom: build the networks, then one loop of augment -> embed -> loss -> step -> monitor.

Under torchrun (``ssl_common``'s docstring: each rank embeds its rows of the global batch) the losses stay the
global batch's: SimCLR gathers every rank's embeddings (with gradient) so that each view's negatives are the other
2B - 2 views of the *whole* batch and every rank computes the single process's loss; MoCo's loss is a mean over
queries, so each rank's mean over its equal share, averaged by DDP, is the global mean, and the queue enqueues
the keys of every rank in the global batch's order (the queue stays the single process's, identical on every rank).
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
from selfsup.vision.losses import InfoNCEWithQueue, MemoryQueue, NTXentLoss
from selfsup.vision.model import MLPHead, backbone_for, frozen_copy, update_ema
from selfsup.vision.ssl_common import (
    SSLCheckpoints, SSLResult, check_collapse, data_parallel, learning_rate_at, make_optimizer, monitor_collapse,
    pool_batches, set_learning_rate, share_batch_norm, this_ranks_rows,
)
from selfsup.runtime import autocast, progress_bar

METHODS = ("simclr", "moco")


class QueryNetworks(nn.Module):
    """The trained networks as one module, so that one call per step goes through DDP (which arms its gradient
    all-reduce in its own forward): views ``[B, C, S, S]`` -> one embedding ``[B, P]`` per view, in order."""

    def __init__(self, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.encoder, self.projector = encoder, projector

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.projector(self.encoder(view)) for view in views)


def train(cfg: SSLPretrainConfig, pool: np.ndarray, device: torch.device, tracker,
          checkpoint_dir: Path | None = None, ranks: Ranks = Ranks()) -> tuple[torch.nn.Module, SSLResult]:
    """Pretrain on ``pool``; with ``checkpoint_dir``, resume from and save resumable checkpoints there. Under
    torchrun every process calls this with its ``ranks``; they train one model together."""
    if cfg.method not in METHODS:
        raise ValueError(f"contrastive.train runs simclr or moco, not {cfg.method!r}")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    encoder = backbone_for(cfg, pool.shape[1]).to(device, memory_format=memory_format)
    projector = MLPHead(encoder.out_dim, cfg.hidden_dim, cfg.projection_dim).to(device)
    share_batch_norm([encoder, projector], ranks, device)
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
    checkpoints = SSLCheckpoints(checkpoint_dir, cfg, pool, state, optimizer, device, ranks=ranks)
    resumed_from, history, monitor = checkpoints.resume()
    queries_of = data_parallel(QueryNetworks(encoder, projector), ranks, device)
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
            if cfg.method == "simclr":
                z1, z2 = queries_of(view1, view2)  # [b, P] each
                # [B, P] x 2 -> scalar: the global batch's loss on every rank (gather_rows says why the gradient is)
                loss = loss_fn(gather_rows(z1, ranks), gather_rows(z2, ranks))
            else:
                (queries,) = queries_of(view1)  # [b, P]
                with torch.no_grad():
                    update_ema(key_encoder, encoder, cfg.momentum)
                    update_ema(key_projector, projector, cfg.momentum)
                    keys = key_projector(key_encoder(view2))  # [b, P], no gradient
                loss = loss_fn(queries, keys, queue.keys)  # mean over this rank's queries
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cfg.method == "moco":
            # after the loss: this batch's keys (of every rank, [B, P]) are negatives for the next batches only
            queue.enqueue(gather_rows(keys, ranks))
        loss_value = float(loss.detach()) if cfg.method == "simclr" else mean_over_ranks(loss, ranks)
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
