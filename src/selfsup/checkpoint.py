"""Resumable training checkpoints: what a killed run needs to continue exactly where it stopped.

A checkpoint is one folder holding ``state.pt``: the step, the weights, the optimizer (and scheduler) state, every
random number generator the training loop draws from (torch CPU and CUDA, NumPy's global one, Python's ``random``),
the history so far, and a fingerprint of what determines the run (configuration, tokenizer, data). Restoring all of
it makes the resumed run draw the same batches, masks, augmentations and dropout as an uninterrupted one, so on the
same machine and thread count it ends with bit-identical weights (``tests/text/test_resume_mlm.py``,
``tests/vision/test_resume_ssl.py``).

Written like every output (``selfsup.fileio``): built in ``<folder>.tmp``, flushed to disk, swapped in; a kill at any
moment leaves the previous checkpoint or the new one, never a torn file. Read with ``torch.load(weights_only=True)``:
tensors and plain Python values only, never an arbitrary pickled object, so a checkpoint found on disk cannot run
code. A checkpoint that cannot be read, or that another configuration wrote, is reported and ignored (the run starts
fresh and overwrites it at its first checkpoint).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from selfsup.fileio import recover_dir, replace_dir, staging_dir

STATE_FILE = "state.pt"


def rng_state(device: torch.device) -> dict:
    """Every generator a training step may draw from, as tensors and plain values (``weights_only``-loadable)."""
    numpy_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key" uint32[624], "pos"}, ...}
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),  # (version, 625 ints, gauss_next): plain values
        "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                           "pos": int(numpy_state["state"]["pos"])}},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device) -> None:
    """Put back what ``rng_state`` captured (the CUDA generator only on a CUDA device)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": numpy_state["state"]["key"].numpy().astype(np.uint32),
                            "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(folder: Path, state: dict) -> None:
    """``state`` (tensors, numbers, strings, lists, dicts) to ``folder/state.pt``, atomically and durably: the file
    is fsynced before the folder is swapped in, so even a power loss leaves a whole previous or new checkpoint."""
    folder = Path(folder)
    staging = staging_dir(folder)
    with open(staging / STATE_FILE, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    replace_dir(staging, folder)


def load_checkpoint(folder: Path, fingerprint: str, say: Callable[[str], None] = print) -> dict | None:
    """The state saved in ``folder`` if it exists, can be read safely and was written by a run with ``fingerprint``;
    otherwise ``None``, with a line through ``say`` saying why it was ignored."""
    folder = Path(folder)
    recover_dir(folder)  # a kill between the two renames of a checkpoint swap left the previous one aside
    path = folder / STATE_FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: unpickling errors come in many types
        say(f"ignoring the unreadable checkpoint {path} ({type(err).__name__}: {err}); starting fresh")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        say(f"ignoring a checkpoint in {folder} written with a different configuration, tokenizer or data; "
            "starting fresh")
        return None
    return state
