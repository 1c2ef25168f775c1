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
