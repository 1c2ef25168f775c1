"""From configuration to a running service: which models, from where, behind which endpoints.

    app = build_app(cfg)                              # the registry's `serve.alias` version of every task
    app = build_app(cfg, {"intent": Path("models/onnx/intent")})   # local export folders, no registry
"""

from __future__ import annotations

import logging
from pathlib import Path

from selfsup.config import IMAGE_TASK, Config
from selfsup.serve.batching import ModelSlot
from selfsup.serve.sources import NothingToServe, RegistryWatcher, load_folder, resolve

log = logging.getLogger("selfsup.serve")


def served_tasks(cfg: Config) -> list[str]:
    return list(cfg.serve.tasks) or [*cfg.data.tasks, IMAGE_TASK]


def build_app(cfg: Config, folders: dict[str, Path] | None = None):
    """The FastAPI app for ``cfg.serve``. With ``folders`` (task -> export folder) only those are served and the
    registry is never touched; otherwise each task's registry version is served and followed (``sources``).
    Raises ``NothingToServe`` (saying what to run) when no task has a model; tasks without one are left out with a
    warning."""
    from selfsup.serve.app import ServiceMetrics, create_app, image_endpoint, text_endpoint

    slots, sources, missing = {}, {}, []
    if folders:
        for task, folder in folders.items():
            slots[task] = ModelSlot(load_folder(task, folder, cfg.serve.intra_op_threads,
                                                 cfg.serve.max_batch_tokens))
    else:
        for task in served_tasks(cfg):
            try:
                loaded, sources[task] = resolve(cfg, task)
            except NothingToServe as err:
                missing.append(str(err))
                continue
            slots[task] = ModelSlot(loaded)
    if not slots:
        raise NothingToServe("nothing to serve:\n  " + "\n  ".join(missing))
    for reason in missing:
        log.warning("left out: %s", reason)
    endpoints = [image_endpoint(task) if slot.current.model.kind == "image" else
                 text_endpoint(task, cfg.route.task, cfg.route.min_confidence) for task, slot in slots.items()]
    metrics = ServiceMetrics()
    watcher = RegistryWatcher(cfg, slots, sources, metrics.on_reload)
    app = create_app(cfg.serve, slots, endpoints, metrics=metrics,
                     on_start=lambda service: watcher.start(cfg.serve.poll_seconds), on_stop=watcher.stop)
    app.state.watcher = watcher
    return app


def parse_model_args(values: list[str]) -> dict[str, Path]:
    """``--model intent=DIR`` (or just ``DIR``: the folder's name is the task) -> {task: folder}."""
    folders = {}
    for value in values:
        task, sep, folder = value.partition("=")
        if not sep:
            task, folder = Path(value).name, value
        if not Path(folder).is_dir():
            raise NothingToServe(f"--model {value}: {folder} is not a folder")
        folders[task] = Path(folder)
    return folders
