"""From configuration to a running service: which models, from where, behind which endpoints.

    app = build_app(cfg)                              # the registry's `serve.alias` version of every task
    app = build_app(cfg, {"intent": Path("models/onnx/intent")})   # local export folders, no registry
    app = build_app(cfg, {"embedder": Path("models/onnx/embedder")})  # /v1/answer and /v1/similar
    uvicorn.Server(uvicorn_config(app, cfg.serve)).run()   # what `selfsup serve` runs, with the connection limits
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from selfsup.config import EMBEDDER_TASK, IMAGE_TASK, Config, ServeConfig
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
                     on_start=lambda service: watcher.start(cfg.serve.poll_seconds), on_stop=watcher.stop,
                     registry_status=watcher.registry_status)
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


# ------------------------------------------------------------------------------------------------ the HTTP server


def settle_heap(gen0_threshold: int) -> None:
    """Call once, after the models are loaded and before serving: everything alive now (libraries, models, indexes)
    moves to the collector's permanent generation (``gc.freeze``), and a young-generation collection runs every
    ``gen0_threshold`` allocations instead of Python's 700.

    Why: each request allocates a few hundred container objects, so with the defaults the collector runs several
    times per request and now and then walks every object the process holds — a pause of tens of milliseconds that
    every request in flight waits out. Measured with ``benchmarks/serve_load.py`` (2 cores, 64 clients): p99 85-105
    ms with the defaults, 56 ms frozen, 41-48 ms frozen with a threshold of 10,000 (benchmarks/RESULTS.md,
    2026-12-02). Objects are still freed by reference counting as usual; models loaded later (a hot reload) are not
    frozen, so an old model's reference cycles are still collected.
    """
    import gc

    gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])


def guarded_protocol(head_timeout_seconds: float, max_head_bytes: int) -> type:
    """uvicorn's httptools protocol with two limits it lacks: a connection must send a whole request head within
    ``head_timeout_seconds`` of opening (or of its previous answer), and a head may not exceed ``max_head_bytes``.

    Why: uvicorn arms its keep-alive timer only after a response, so a connection that never sends a request, or
    sends its headers a byte at a time, is held forever; and httptools has no limit on a head's size (h11 has one:
    ``h11_max_incomplete_event_size``; httptools is the faster parser and the one installed). A timed-out connection
    that sent part of a head gets 408, a silent one is just closed; an oversized head gets 431. All close the
    connection. These answers never reach the app, so ``selfsup_requests_total`` does not count them."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    def refusal(status: int, reason: str, message: str) -> bytes:
        body = json.dumps({"error": message}).encode()
        return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n").encode() + body

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_deadline = None
            self._reading_body, self._answered = False, True  # no request yet
            self._await_head()

        def _await_head(self) -> None:
            """From now on the connection owes a request head."""
            self._awaiting_head, self._head_bytes = True, 0
            self._cancel_head_deadline()
            self._head_deadline = self.loop.call_later(head_timeout_seconds, self._head_timed_out)

        def _await_head_if_idle(self) -> None:
            # idle: the last request was read whole and answered (bytes of an unread body are not a head)
            if self._answered and not self._reading_body and not self.transport.is_closing():
                self._await_head()

        def _cancel_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_timed_out(self) -> None:
            self._head_deadline = None
            if not self._awaiting_head or self.transport.is_closing():
                return
            if self._head_bytes:
                self.transport.write(refusal(408, "Request Timeout", f"the request head did not arrive within "
                                             f"{head_timeout_seconds:g} s (serve.head_timeout_seconds)"))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._awaiting_head:
                self._head_bytes += len(data)
            super().data_received(data)  # on_headers_complete (below) ends the head
            if self._awaiting_head and self._head_bytes > max_head_bytes and not self.transport.is_closing():
                self._cancel_head_deadline()
                self.transport.write(refusal(431, "Request Header Fields Too Large", f"the request head is over "
                                             f"{max_head_bytes:,} bytes (serve.max_head_bytes)"))
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._awaiting_head, self._reading_body, self._answered = False, True, False
            self._cancel_head_deadline()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._reading_body = False
            super().on_message_complete()
            self._await_head_if_idle()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # a request queued behind this one: its answer is still owed
            super().on_response_complete()
            if not pipelined:
                self._answered = True
                self._await_head_if_idle()

        def send_400_response(self, msg: str) -> None:
            # uvicorn's own answer to bytes that are no HTTP request is text/plain; every refusal here is JSON
            self.transport.write(refusal(400, "Bad Request", f"not a valid HTTP request ({msg.rstrip('.')}); "
                                         "the connection is closed"))
            self.transport.close()

        def connection_lost(self, exc) -> None:
            self._cancel_head_deadline()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol


def uvicorn_config(app, settings: ServeConfig, host: str | None = None, port: int | None = None, **kwargs):
    """The uvicorn configuration ``selfsup serve`` runs ``app`` with: host and port (default ``serve.host``, which
    is 127.0.0.1, and ``serve.port``) and the connection limits of ``serve`` (docs/serving.md "Limits").
    ``kwargs`` go to ``uvicorn.Config`` (log_level, access_log, ...)."""
    import uvicorn

    return uvicorn.Config(app, host=host or settings.host, port=port or settings.port,
                          http=guarded_protocol(settings.head_timeout_seconds, settings.max_head_bytes),
                          timeout_keep_alive=settings.keep_alive_seconds, **kwargs)
