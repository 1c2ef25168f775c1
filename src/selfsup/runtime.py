"""Device, precision, threads and seeding for the training recipes."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from selfsup.config import TrainLoopConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but no CUDA GPU is available (use device=auto or cpu)")
    return device


def setup(loop: TrainLoopConfig) -> torch.device:
    """Seed every RNG, set CPU threads, pick the device."""
    random.seed(loop.seed)
    np.random.seed(loop.seed)
    torch.manual_seed(loop.seed)
    threads = loop.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = resolve_device(loop.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast where asked for; a no-op context for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar that redraws often on a terminal and rarely in logs (CI, ``dvc repro > log``)."""
    import sys

    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
                mininterval=0.2 if interactive else 30.0, maxinterval=60.0)
