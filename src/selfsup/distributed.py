"""Data-parallel training over several processes started by ``torchrun``; one plain process when not.

torchrun starts one process per GPU on every node and tells each who it is through environment variables:
``RANK`` (0 .. WORLD_SIZE-1 across all nodes), ``WORLD_SIZE``, ``LOCAL_RANK`` (its GPU on this node),
``LOCAL_WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT`` (where the processes meet). Without them (or with
``WORLD_SIZE=1``) a recipe runs as one process, rank 0 of 1, and nothing here touches ``torch.distributed``.

    ranks = ranks_from_env()
    with process_group(device, ranks):          # nccl on CUDA, gloo on CPU
        device = device_for_rank(device, ranks)  # GPU LOCAL_RANK
        ...
        total = all_reduce_sum(torch.tensor(local_count), ranks)

Image recipes also gather rows across ranks (``gather_rows``, with gradient) and normalise batches with the
statistics of the global batch (``use_global_batch_norm``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """Who this process is among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, tracks and writes checkpoints and outputs."""
        return self.rank == 0

    def rows(self, n_rows: int) -> slice:
        """This rank's contiguous share of a global batch of ``n_rows``: disjoint across ranks, together the batch."""
        if n_rows % self.world_size:
            raise ValueError(f"a batch of {n_rows} rows does not split evenly over {self.world_size} processes")
        share = n_rows // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """The ranks torchrun set in the environment; one process (rank 0 of 1) when it set none."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Ranks()
    try:
        ranks = Ranks(rank=int(env.get("RANK", "0")), world_size=int(env["WORLD_SIZE"]),
                      local_rank=int(env.get("LOCAL_RANK", "0")),
                      local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE must be integers: {err}") from None
    if not (ranks.world_size >= 1 and 0 <= ranks.rank < ranks.world_size and 0 <= ranks.local_rank):
        raise ValueError(f"inconsistent torchrun environment: RANK={ranks.rank} WORLD_SIZE={ranks.world_size} "
                         f"LOCAL_RANK={ranks.local_rank}")
    return ranks


def is_main_process() -> bool:
    """True in a plain process and in torchrun's rank 0."""
    return ranks_from_env().is_main


@contextlib.contextmanager
def process_group(device: torch.device, ranks: Ranks) -> Iterator[None]:
    """Join the torchrun processes for the duration of the block (nccl on CUDA, gloo on CPU) and leave afterwards.
    ``device``: this process's own (``device_for_rank``). A group the caller already initialised is used as it is
    and left open; one process: nothing to join."""
    import torch.distributed as dist

    if not ranks.distributed or dist.is_initialized():
        yield
        return
    # env:// rendezvous: MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE from torchrun
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def device_for_rank(device: torch.device, ranks: Ranks) -> torch.device:
    """Under torchrun on GPUs, process LOCAL_RANK drives GPU LOCAL_RANK of its node; otherwise ``device``."""
    if device.type != "cuda" or not ranks.distributed:
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {ranks.local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                           "start at most one process per GPU (torchrun --nproc-per-node)")
    torch.cuda.set_device(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


def share_cpu_threads(requested: int, ranks: Ranks) -> None:
    """With ``threads: 0`` (all cores) the processes of one node split its cores instead of each taking all of them
    (oversubscribed cores make every process slower)."""
    if ranks.distributed and requested == 0:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_world_size))


def all_reduce_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of ``tensor`` over every rank (the tensor itself in one process). The tensor must live on the
    process's device (nccl reduces GPU tensors only)."""
    if ranks.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(obj, ranks: Ranks):
    """Rank 0's ``obj`` (any picklable object) on every rank, e.g. a checkpoint only rank 0 can read."""
    if not ranks.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(tensor: torch.Tensor, ranks: Ranks, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order: the rows of each rank's share put back into
    the global batch's order (``tensor`` itself in one process). Every rank must pass the same shape.

    A tensor that requires gradient is gathered with ``torch.distributed.nn.functional.all_gather``, whose backward
    *sums* the gradients that every rank's loss sends to this rank's rows: when every rank computes the same loss of
    the whole gathered batch, this rank's rows get ``world_size`` times their gradient, which DDP's average over the
    ranks turns back into the global batch's gradient."""
    if not ranks.distributed:
        return tensor
    import torch.distributed as dist

    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(tensor)
    else:
        parts = [torch.empty_like(tensor) for _ in range(ranks.world_size)]
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> float:
    """The mean over the ranks of a scalar ``value`` (e.g. each rank's loss on its share of the batch), the same
    number on every rank; the value itself in one process."""
    if not ranks.distributed:
        return float(value.detach())
    return float(all_reduce_sum(value.detach().double().clone(), ranks)) / ranks.world_size


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch normalisation with the statistics of the whole global batch (every rank's rows) on the CPU, where
    torch's ``SyncBatchNorm`` has no kernels (and DDP refuses it): the statistics come from two differentiable
    all-reduces (the sum, then the sum of squared deviations from the global mean), whose backward all-reduces the
    gradients of the statistics like SyncBatchNorm's. Outside training, or without a process group of several
    ranks, it is a plain BatchNorm. Its ``state_dict`` is a BatchNorm's (same keys), so checkpoints and saved
    encoders are interchangeable with one process's. Shape: ``[N, C, ...] -> [N, C, ...]``."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input [N, C, ...], got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(input)
        channels = input.shape[1]
        reduce_dims = [0, *range(2, input.ndim)]
        shape = [1, channels] + [1] * (input.ndim - 2)  # broadcasts per-channel [C] over [N, C, ...]
        x = input.float()
        local_count = x.new_tensor([input.numel() // channels])
        totals = all_reduce(torch.cat([x.sum(reduce_dims), local_count]))  # [C + 1]: per-channel sums, count
        count = totals[-1]
        mean = totals[:-1] / count  # [C]
        centred = x - mean.view(shape)
        variance = all_reduce((centred * centred).sum(reduce_dims)) / count  # [C], biased (normalises the batch)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = variance.detach() * count / (count - 1).clamp_min(1)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        out = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def use_global_batch_norm(module: torch.nn.Module, device: torch.device) -> None:
    """Replace, in place, every ``BatchNorm1d/2d/3d`` inside ``module`` (not ``module`` itself) by one that
    normalises with the statistics of every rank's rows and keeps its parameters, running statistics and mode:
    ``torch.nn.SyncBatchNorm`` on GPUs, ``GlobalBatchNorm`` (the same statistics) on the CPU."""
    batch_norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    kind = GlobalBatchNorm if device.type == "cpu" else torch.nn.SyncBatchNorm
    for name, child in module.named_children():
        if isinstance(child, batch_norms):
            synced = kind(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                synced.weight, synced.bias = child.weight, child.bias
            if child.track_running_stats:
                synced.running_mean, synced.running_var = child.running_mean, child.running_var
                synced.num_batches_tracked = child.num_batches_tracked
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            use_global_batch_norm(child, device)
