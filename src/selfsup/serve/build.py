"""From configuration to a running service: which models, from where, behind which endpoints.

    app = build_app(cfg)                              # the registry's `serve.alias` version of every task
    app = build_app(cfg, {"intent": Path("models/onnx/intent")})   # local export folders, no registry
    app = build_app(cfg, {"embedder": Path("models/onnx/embedder")})  # /v1/answer and /v1/similar
"""

from __future__ import annotations

import logging
from pathlib import Path

from selfsup.config import EMBEDDER_TASK, IMAGE_TASK, Config
from selfsup.serve.batching import ModelSlot
from selfsup.serve.sources import NothingToServe, RegistryWatcher, load_folder, resolve

log = logging.getLogger("selfsup.serve")


def served_tasks(cfg: Config) -> list[str]:
    return list(cfg.serve.tasks) or [*cfg.data.tasks, IMAGE_TASK, EMBEDDER_TASK]


def endpoints_for(task: str, kind: str, cfg: Config) -> list:
    """The endpoints serving ``task``'s model: POST /v1/<task> for a classifier, /v1/image for the image encoder,
    /v1/answer and /v1/similar for the sentence embedder."""
    from selfsup.serve.app import image_endpoint, search_endpoint, text_endpoint

    if kind == "image":
        return [image_endpoint(task)]
    if kind == "embedder":
        return [search_endpoint(task, "answers"), search_endpoint(task, "articles")]
    return [text_endpoint(task, cfg.route.task, cfg.route.min_confidence)]


def build_app(cfg: Config, folders: dict[str, Path] | None = None):
    """The FastAPI app for ``cfg.serve``. With ``folders`` (task -> export folder) only those are served and the
    registry is never touched; otherwise each task's registry version is served and followed (``sources``).
    Raises ``NothingToServe`` (saying what to run) when no task has a model; tasks without one are left out with a
    warning."""
    from selfsup.serve.app import ServiceMetrics, create_app

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
    endpoints = [endpoint for task, slot in slots.items() for endpoint in endpoints_for(task, slot.current.model.kind,
                                                                                       cfg)]
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
