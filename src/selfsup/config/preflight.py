"""The checks of ``params.yaml`` that need the machine or the data, run when a stage starts, before it does any
work: ``selfsup`` calls ``check_stage_start`` right after parsing its arguments (the stages run from ``dvc repro``
and the flows are ``selfsup`` commands), so a bad value fails in a second with exit code 2, not after the corpus is
tokenized or a model built. Everything that needs neither is checked when the config loads (``load.py``).

* A training loop that asks for a CUDA GPU (``device: cuda...`` or ``precision: bf16``, e.g. the GPU preset
  ``base``) on a machine without one. The check imports torch only when a loop asks for CUDA.
* A batch larger than the data, where the data's size is known cheaply: ``finetune`` counts the rows of the
  task's ``train.csv`` (after ``max_train_examples``), ``pretrain-ssl`` the manifest rows of the pretraining split
  (after ``vision.data.max_pretrain_images``). Not checked: ``pretrain.batch_size`` (the number of packed blocks is
  known only after tokenizing the corpus, and pretraining samples blocks with replacement, so any batch trains)
  and ``retrieval.simcse.batch_size`` (the text count needs the whole corpus read; the stage itself refuses a batch
  larger than its texts, and the config a batch larger than ``max_texts``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

from selfsup.config.base import ConfigError, TrainLoopConfig
from selfsup.config.load import Config, load_config

# the CLI command (its function's name) -> the training loops its stage runs, by key path
STAGE_LOOPS: dict[str, tuple[str, ...]] = {
    "cmd_pretrain": ("pretrain.loop",),
    "cmd_simcse": ("retrieval.simcse.loop",),
    "cmd_finetune": ("finetune.loop",),
    "cmd_evaluate": ("finetune.loop",),
    "cmd_label_efficiency": ("finetune.loop",),
    "cmd_pretrain_ssl": ("vision.pretrain.loop",),
    "cmd_evaluate_ssl": ("vision.pretrain.loop",),
}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _at(cfg: Config, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def check_devices(cfg: Config, loops: tuple[str, ...], cuda_available: Callable[[], bool] = _cuda_available) -> None:
    """``ConfigError`` naming the key when a loop asks for a CUDA GPU the machine does not have."""
    for path in loops:
        loop: TrainLoopConfig = _at(cfg, path)
        wants = "device" if loop.device.startswith("cuda") else "precision" if loop.precision == "bf16" else ""
        if not wants or cuda_available():
            continue
        fix = f"set {path}.precision=fp32" if wants == "precision" else f"set {path}.device=auto or cpu"
        if cfg.preset not in ("cpu", ""):
            fix = f"preset '{cfg.preset}' is for GPU machines: select preset=cpu, or {fix}"
        if wants == "device":
            raise ConfigError(f"{path}.device: {loop.device!r} needs a CUDA GPU, and this machine has none ({fix})")
        raise ConfigError(f"{path}.precision: bf16 autocast needs a CUDA GPU, and this machine has none ({fix})")


def _csv_rows(path: Path) -> int:
    csv.field_size_limit(max(csv.field_size_limit(), 16 * 2**20))  # long texts are the validate stage's business
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


def check_finetune_data(cfg: Config, task: str) -> None:
    """``finetune.tasks.<task>.batch_size`` against the rows of the task's train.csv (after max_train_examples)."""
    if task not in cfg.data.tasks or task not in cfg.finetune.tasks:
        return  # the stage names the unknown task itself
    path = Path(cfg.data.tasks[task].dir) / "train.csv"
    if not path.is_file():
        return  # the stage reports the missing file (and the validate stage before it)
    spec = cfg.finetune.tasks[task]
    rows = _csv_rows(path)
    used = min(rows, spec.max_train_examples) if spec.max_train_examples else rows
    if spec.batch_size > used:
        capped = f", capped at max_train_examples={spec.max_train_examples}" if used < rows else ""
        raise ConfigError(f"finetune.tasks.{task}.batch_size: must be <= the training examples, got "
                          f"{spec.batch_size} for {used} ({path} has {rows} rows{capped}): a batch larger than the "
                          "data")


def check_ssl_pool(cfg: Config) -> None:
    """``vision.pretrain.batch_size`` against the manifest rows of the pretraining split (after the cap)."""
    from selfsup.vision.data import ImageDataError, read_manifest

    data = cfg.vision.data
    try:
        rows = sum(1 for r in read_manifest(Path(data.manifest)) if r.split == data.pretrain_split)
    except ImageDataError:
        return  # the stage (and validate_images before it) names the file
    used = min(rows, data.max_pretrain_images) if data.max_pretrain_images else rows
    if cfg.vision.pretrain.batch_size > used:
        raise ConfigError(f"vision.pretrain.batch_size: must be <= the pretraining images, got "
                          f"{cfg.vision.pretrain.batch_size} for {used} ({data.manifest} has {rows} rows of split "
                          f"'{data.pretrain_split}'; vision.data.max_pretrain_images={data.max_pretrain_images}): "
                          "a batch larger than the data")


def check_stage_start(command: str, params: str | Path, overrides: list[str], task: str | None = None,
                      cuda_available: Callable[[], bool] = _cuda_available) -> None:
    """Everything above for the stage ``command`` (a CLI command function's name) runs; a no-op for commands that
    train nothing. Errors are ``ConfigError`` naming ``params`` and the key path."""
    if command not in STAGE_LOOPS:
        return
    cfg = load_config(params, overrides)
    try:
        check_devices(cfg, STAGE_LOOPS[command], cuda_available)
        if command == "cmd_finetune" and task:
            check_finetune_data(cfg, task)
        if command == "cmd_pretrain_ssl":
            check_ssl_pool(cfg)
    except ConfigError as err:
        raise ConfigError(f"{params}: {err}") from None
