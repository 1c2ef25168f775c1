"""The inference service: FastAPI over onnxruntime, with dynamic micro-batching, hot reload and Prometheus metrics.

    create_app(settings, slots, endpoints) -> FastAPI         (``selfsup serve`` builds the arguments and runs uvicorn)

Endpoints are plug-ins (``Endpoint``): each names its path, the model slot it uses, and turns a request into items
for the batcher and the batch's results into a response. Batching (``selfsup.serve.batching``), reload
(``selfsup.serve.sources``), metrics and error handling live here once, for every endpoint.

Every failure a client can cause is a 4xx with a JSON body ``{"error": "..."}`` saying what was wrong; a failure of
ours is a 500 with the same shape and no stack trace (the trace goes to the log). A body over the limit is refused
(413) before it is read, and a body that does not arrive in time gets 408; both close the connection, so the rest
of such a body is never read. Connection-level limits (idle connections, huge request heads) are uvicorn's side:
``selfsup.serve.build.uvicorn_config``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from selfsup.config import ServeConfig
from selfsup.monitoring.routing import needs_human
from selfsup.serve.batching import BatchStats, Loaded, MicroBatcher, ModelSlot
from selfsup.serve.inputs import TextRejected, check_text
from selfsup.serve.runtime import ImageRejected, Ranked
from selfsup.serve.sources import folder_problem

log = logging.getLogger("selfsup.serve")


class ApiError(Exception):
    """A request the service refuses: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


# ------------------------------------------------------------------------------------------------ metrics


class ServiceMetrics:
    """Prometheus metrics of one app (its own registry, so several apps in one process do not collide)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("selfsup_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("selfsup_request_seconds", "request latency (server side) by endpoint",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.batch_size = Histogram("selfsup_batch_size", "items gathered into one batch", ["model"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_seconds = Histogram("selfsup_batch_seconds", "duration of one onnxruntime call", ["model"],
                                       registry=self.registry, buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .5))
        self.session_calls = Histogram("selfsup_session_call_size", "items per onnxruntime session call (a gathered "
                                       "batch may take several: serve.max_batch_tokens)", ["model"],
                                       registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.served = Gauge("selfsup_model_info", "1 for the model version each endpoint serves now",
                            ["model", "name", "version"], registry=self.registry)
        self.reloads = Counter("selfsup_model_reloads", "registry alias moves handled, by outcome",
                               ["model", "outcome"], registry=self.registry)
        self._served_labels: dict[str, tuple[str, str, str]] = {}

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_size.labels(stats.model).observe(stats.size)
        self.batch_seconds.labels(stats.model).observe(stats.seconds)

    def set_served(self, model: str, loaded: Loaded) -> None:
        old = self._served_labels.get(model)
        if old is not None:
            self.served.remove(*old)
        self._served_labels[model] = (model, loaded.name, loaded.version)
        self.served.labels(model, loaded.name, loaded.version).set(1)

    def on_reload(self, model: str, loaded: Loaded | None, outcome: str) -> None:
        self.reloads.labels(model, outcome).inc()
        if loaded is not None:
            self.set_served(model, loaded)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _MeteredAndBounded:
    """Pure ASGI middleware (no per-request task like BaseHTTPMiddleware): counts and times every request by
    endpoint and status, refuses a declared body over the limit before it is read, and closes the connection after
    any answer given before the request's body was read to its end (uvicorn would otherwise read the rest of it,
    however long, to discard it)."""

    def __init__(self, app, metrics: ServiceMetrics, max_body_bytes: int, known_paths: set[str]):
        self.app, self.metrics, self.max_body_bytes, self.known_paths = app, metrics, max_body_bytes, known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in self.known_paths else "unknown"  # bounded label values
        status = 500
        started = time.perf_counter()
        headers = dict(scope["headers"])
        body_left = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers

        async def receive_and_note():
            nonlocal body_left
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_left = False
            return message

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if body_left and not any(name.lower() == b"connection" for name, _ in message.get("headers", [])):
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                # Connection: close, so that uvicorn drops the connection instead of reading the body to discard it
                await _json_response(413, f"the body has {int(declared):,} bytes; the limit is "
                                     f"{self.max_body_bytes:,} (serve.max_body_bytes)",
                                     headers=CLOSE)(scope, receive, send_and_note)
            else:
                await self.app(scope, receive_and_note, send_and_note)
        finally:
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class SafeJSONResponse(JSONResponse):
    """JSON in UTF-8 that cannot fail on a lone surrogate. A JSON "\\ud800" escape in a request is a valid Python
    str; should one ever reach a response (an error naming a field, say), it is written back as that same escape
    instead of turning the answer into a 500 (Starlette's JSONResponse encodes with errors="strict")."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                          separators=(",", ":")).encode("utf-8", "backslashreplace")


CLOSE = {"Connection": "close"}  # on 408/413: the rest of the body is not read, the connection goes


def _json_response(status: int, message: str, headers: dict | None = None, **extra: Any) -> JSONResponse:
    return SafeJSONResponse({"error": message, **extra}, status_code=status, headers=headers)


# ------------------------------------------------------------------------------------------------ request bodies


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The whole body, refusing it (413) as soon as it passes ``limit`` — also when no Content-Length was sent
    (chunked) — and (408) when it has not all arrived ``timeout`` seconds after the request head."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the body is over the limit of {limit:,} bytes (serve.max_body_bytes)")
                chunks.append(chunk)
    except TimeoutError:
        declared = request.headers.get("content-length")
        raise ApiError(408, f"the body did not arrive within {timeout:g} s (serve.body_timeout_seconds): got "
                            f"{size:,} bytes" + (f" of the {int(declared):,} that Content-Length announced"
                                                 if declared and declared.isdigit() else "")) from None
    return b"".join(chunks)


async def read_settings_body(request: Request, settings: ServeConfig) -> bytes:
    return await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, settings: ServeConfig) -> Any:
    if content_type(request) != "application/json":
        raise ApiError(415, f"send JSON with 'Content-Type: application/json' (got "
                            f"{content_type(request) or 'no content type'})")
    body = await read_settings_body(request, settings)
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"the body is not valid UTF-8 (byte {err.start}: {err.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, f"the body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:  # [[[[...]]]] deeper than Python's recursion limit (about 1,000 levels)
        raise ApiError(400, "the body is not acceptable JSON: it is nested too deeply") from None


def validated(schema: type[BaseModel], payload: Any) -> BaseModel:
    try:
        return schema.model_validate(payload)
    except ValidationError as err:
        problems = ["{}: {}".format(".".join(str(p) for p in e["loc"]) or "body", e["msg"].removeprefix("Value error, "))
                    for e in err.errors()]
        raise ApiError(422, "invalid request: " + "; ".join(problems[:10])
                       + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""),
                       problems=problems[:50]) from None


# ------------------------------------------------------------------------------------------------ endpoints


@dataclass
class Endpoint:
    """One POST endpoint on one model slot. ``handle(request, service)`` returns the JSON response body; it gets
    its input with ``read_json`` / ``read_body`` and scores it with ``await service.score(slot, items)``."""

    path: str
    slot: str  # key of the model slot (the registry task) it uses
    summary: str
    handle: Callable[[Request, "Service"], Awaitable[dict]]
    request_schema: dict | None = None  # OpenAPI schema of a JSON body
    content_types: tuple[str, ...] = ("application/json",)


def ranked_json(scores: Ranked) -> dict:
    """``label``, ``confidence`` and ``top_k`` of one answer, as every endpoint returns them."""
    return {"label": scores.label, "confidence": round(scores.confidence, 6),
            "top_k": [{"label": label, "probability": round(prob, 6)} for label, prob in scores.ranked]}


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | list[str] = Field(description="one text, or a list of texts (at most serve.max_batch_items)",
                                  examples=["my bag did not arrive in Denver"])
    top_k: int | None = Field(None, ge=1, description="labels returned per text (default serve.top_k)")

    @field_validator("text", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        # one clear message instead of pydantic's two (one per branch of the union)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise ValueError(f"text[{i}] must be a string, got {type(item).__name__}")
        elif not isinstance(value, str):
            raise ValueError(f"must be a string or a list of strings, got {type(value).__name__}")
        return value


def checked_texts(text: str | list[str], settings: ServeConfig) -> list[str]:
    """The request's texts as a list, each checked (``check_text``); 422 naming the first one that breaks a rule."""
    texts = [text] if isinstance(text, str) else text
    if not texts:
        raise ApiError(422, "invalid request: text: the list is empty")
    if len(texts) > settings.max_batch_items:
        raise ApiError(422, f"invalid request: {len(texts):,} texts; the limit is {settings.max_batch_items:,} "
                            "per request (serve.max_batch_items)")
    for i, item in enumerate(texts):
        try:
            check_text(item, settings.max_chars, where="text" if isinstance(text, str) else f"text[{i}]")
        except TextRejected as err:
            raise ApiError(422, f"invalid request: {err}") from None
    return texts


def text_endpoint(task: str, routing_task: str | None = None, min_confidence: float = 0.5) -> Endpoint:
    """``POST /v1/<task>``: labels ranked by probability for each text; for the routing task also ``needs_human``
    (top probability under ``route.min_confidence``, the routing flow's rule)."""

    async def handle(request: Request, service: "Service") -> dict:
        body = validated(TextRequest, await read_json(request, service.settings))
        texts = checked_texts(body.text, service.settings)
        model = service.slots[task].current.model
        probs, loaded = await service.score(task, model.prepare(texts))  # tokenized here, outside the batch
        top_k = body.top_k or service.settings.top_k
        results = []
        for p in probs:
            scores = loaded.model.rank(p, top_k)
            row = ranked_json(scores)
            if task == routing_task:
                row["needs_human"] = needs_human(scores.confidence, min_confidence)
            results.append(row)
        return {"model": loaded.name, "version": loaded.version, "results": results}

    return Endpoint(f"/v1/{task}", task, f"{task}: labels ranked by probability for one text or a list" +
                    (" (needs_human below route.min_confidence)" if task == routing_task else ""), handle,
                    TextRequest.model_json_schema())


class SearchRequest(TextRequest):
    top_k: int | None = Field(None, ge=1, le=100, description="entries returned per text, best first (default "
                                                           "serve.top_k)")


def search_endpoint(task: str, index: str) -> Endpoint:
    """``POST /v1/answer`` (``index="answers"``: the knowledge-base entries closest to a question, with their
    intent and answer) or ``POST /v1/similar`` (``"articles"``: the indexed articles closest to a text, with their
    topic); each match carries its cosine ``score``. Embedding and search run in the embedder slot's batch."""
    path, what = {"answers": ("/v1/answer", "the knowledge-base entries (intent, question, answer) closest to a "
                                            "customer question"),
                  "articles": ("/v1/similar", "the indexed articles (topic, opening text) closest to a text")}[index]

    async def handle(request: Request, service: "Service") -> dict:
        body = validated(SearchRequest, await read_json(request, service.settings))
        texts = checked_texts(body.text, service.settings)
        model = service.slots[task].current.model
        top_k = body.top_k or service.settings.top_k
        found, loaded = await service.score(task, model.prepare(texts, index, top_k))  # tokenized outside the batch
        return {"model": loaded.name, "version": loaded.version,
                "results": [{"matches": [{**m.row, "score": round(m.score, 6)} for m in matches]}
                            for matches in found]}

    return Endpoint(path, task, f"{what}, for one text or a list (cosine similarity of SimCSE embeddings)", handle,
                    SearchRequest.model_json_schema())


IMAGE_TYPES = ("image/png", "image/jpeg")


def image_endpoint(task: str) -> Endpoint:
    """``POST /v1/image``: a PNG or JPEG body → the encoder's class (linear probe) and embedding."""

    async def handle(request: Request, service: "Service") -> dict:
        if content_type(request) not in IMAGE_TYPES:
            raise ApiError(415, f"send the image as the body with Content-Type {' or '.join(IMAGE_TYPES)} (got "
                                f"{content_type(request) or 'no content type'})")
        data = await read_settings_body(request, service.settings)
        if not data:
            raise ApiError(422, "invalid request: the body is empty")
        try:
            pixels = service.slots[task].current.model.prepare_image(data, service.settings.max_image_pixels)
        except ImageRejected as err:
            raise ApiError(422, f"invalid image: {err}") from None
        (answer,), loaded = await service.score(task, [pixels])
        embedding, probs = answer
        return {"model": loaded.name, "version": loaded.version,
                **ranked_json(loaded.model.rank(probs, service.settings.top_k)),
                "embedding": [round(float(v), 6) for v in embedding]}

    return Endpoint("/v1/image", task, "image: class and embedding of one PNG or JPEG (the request body)", handle,
                    content_types=IMAGE_TYPES)


# ------------------------------------------------------------------------------------------------ the service


class Service:
    """What handlers share: settings, model slots, their batchers (created on the running loop) and metrics."""

    def __init__(self, settings: ServeConfig, slots: dict[str, ModelSlot], metrics: ServiceMetrics):
        self.settings, self.slots, self.metrics = settings, slots, metrics
        self.batchers: dict[str, MicroBatcher] = {}

    def start(self) -> None:
        for name, slot in self.slots.items():
            on_call = self.metrics.session_calls.labels(name).observe
            self.batchers[name] = MicroBatcher(name, slot, lambda model, items, on_call=on_call: model.run(items, on_call),
                                               self.settings.max_batch_size, self.settings.max_wait_ms,
                                               self.metrics.on_batch)
            self.metrics.set_served(name, slot.current)

    async def score(self, slot: str, items: list) -> tuple[list, Loaded]:
        return await self.batchers[slot].submit(items)

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        self.batchers.clear()


def create_app(settings: ServeConfig, slots: dict[str, ModelSlot], endpoints: list[Endpoint],
               on_start: Callable[[Service], None] | None = None, on_stop: Callable[[], None] | None = None,
               metrics: ServiceMetrics | None = None,
               registry_status: Callable[[], dict | None] | None = None) -> FastAPI:
    """The FastAPI app serving ``endpoints`` from ``slots``. ``on_start(service)`` / ``on_stop()`` run when the
    server starts and stops (``selfsup serve`` starts the registry watcher there). ``registry_status()`` (the
    watcher's) is shown by /readyz as ``registry``."""
    unknown = sorted({e.slot for e in endpoints} - set(slots))
    if unknown:
        raise ValueError(f"endpoints use model slots that are not loaded: {unknown}; loaded: {sorted(slots)}")
    metrics = metrics or ServiceMetrics()
    service = Service(settings, slots, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        if on_start is not None:
            on_start(service)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            if on_stop is not None:
                on_stop()
            await service.stop()

    app = FastAPI(title="selfsup inference service", lifespan=lifespan,
                  description="Classifiers and the image encoder from the selfsup registry, on onnxruntime. "
                              "Every response names the model version that answered (also in the X-Model-Version "
                              "header). See docs/serving.md.")
    app.state.ready, app.state.service = False, service
    listing = ["GET /healthz", "GET /readyz", "GET /metrics", "GET /docs", *(f"POST {e.path}" for e in endpoints)]

    def add(endpoint: Endpoint) -> None:
        async def route(request: Request) -> Response:
            body = await endpoint.handle(request, service)
            return SafeJSONResponse(body, headers={"X-Model-Version": f"{body['model']}/{body['version']}"})

        body_spec = ({"application/json": {"schema": endpoint.request_schema}} if endpoint.request_schema else
                     {t: {"schema": {"type": "string", "format": "binary"}} for t in endpoint.content_types})
        app.add_api_route(endpoint.path, route, methods=["POST"], summary=endpoint.summary,
                          openapi_extra={"requestBody": {"required": True, "content": body_spec}})

    for endpoint in endpoints:
        add(endpoint)

    @app.get("/healthz", summary="the process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="every model is loaded and the batchers run (503 otherwise); `status` is "
                                "'degraded' (still 200) when a model's folder changed or the registry cannot be read")
    async def readyz() -> Response:
        # 200 while every endpoint answers; what would break a restart or a reload is said, not turned into a 503
        # (a 503 would take a replica that answers out of a load balancer)
        models, problems = {}, []
        for name, slot in slots.items():
            loaded = slot.current
            problem = folder_problem(loaded)
            models[name] = {"name": loaded.name, "version": loaded.version, "source": loaded.source,
                            "status": "ok" if problem is None else "degraded"}
            if problem is not None:
                models[name]["problem"] = problem
                problems.append(f"{name}: {problem}")
        body: dict[str, Any] = {"ready": bool(app.state.ready) and len(service.batchers) == len(slots)}
        registry = registry_status() if registry_status is not None else None
        if registry is not None and registry["status"] != "ok":
            problems.append(f"registry: {registry['error'] or 'cannot be read'}; the served versions keep answering "
                            "and the registry is read again every serve.poll_seconds")
        body["status"] = ("ok" if not problems else "degraded") if body["ready"] else "not ready"
        body["problems"] = problems
        body["models"] = models
        if registry is not None:
            body["registry"] = registry
        return SafeJSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> Response:
        return _json_response(err.status, err.message, headers=CLOSE if err.status in (408, 413) else None,
                              **err.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        if err.status_code in (404, 405):
            return _json_response(err.status_code, f"no endpoint {request.method} {request.url.path}",
                                  endpoints=listing)
        return _json_response(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _json_response(500, "internal error (logged by the service)")

    known = {e.path for e in endpoints} | {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}
    app.add_middleware(_MeteredAndBounded, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       known_paths=known)
    return app
