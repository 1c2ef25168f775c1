"""Dynamic micro-batching: concurrent requests for one model are scored together in one onnxruntime call.

Each request submits its items (texts already tokenized, images already decoded: that work happens in the request,
outside the batch); one worker per model gathers queued items into a batch of at most ``max_batch_size`` and runs
it on a single thread. The first item of a batch waits at most ``max_wait_ms`` for company; while a batch runs,
new requests queue up and form the next batch, so under load batches fill without any waiting at all.

The worker reads the model to use when the batch starts (``ModelSlot.current``): a hot reload swaps the slot's
reference, batches already running finish on the model they started with, and every result says which version
answered it. No request is dropped by a swap.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

Model = TypeVar("Model")


@dataclass(frozen=True)
class Loaded(Generic[Model]):
    """A loaded model and where it came from; replaced as a whole, never mutated."""

    model: Model
    name: str  # registered model name (or the folder's name when served from a local folder)
    version: str  # registry version, or "local"
    source: str  # models:/<name>@<alias> or the folder path
    folder: str | None = None  # the export folder it was loaded from (checked while serving: /readyz)
    # (relative path, bytes, mtime_ns) of every file in the folder when it was loaded, to notice later changes
    files: tuple[tuple[str, int, int], ...] = ()


class ModelSlot(Generic[Model]):
    """The model currently served for one endpoint family; ``swap`` is a single reference assignment."""

    def __init__(self, loaded: Loaded[Model]):
        self.current = loaded

    def swap(self, loaded: Loaded[Model]) -> Loaded[Model]:
        previous, self.current = self.current, loaded
        return previous


@dataclass
class BatchStats:
    """What the worker reports after each onnxruntime call (for /metrics)."""

    model: str
    size: int
    seconds: float


class MicroBatcher:
    """``await batcher.submit(items)`` → one result per item, in order, with the ``Loaded`` that produced them.

    ``run_batch(model, items) -> results`` is called on the batcher's own thread with up to ``max_batch_size``
    items from any number of requests. ``on_batch`` (optional) is told the size and duration of every call."""

    def __init__(self, name: str, slot: ModelSlot, run_batch: Callable[[Any, list], list], max_batch_size: int,
                 max_wait_ms: float, on_batch: Callable[[BatchStats], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.name, self.slot, self.run_batch = name, slot, run_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")

    async def submit(self, items: list) -> tuple[list, Loaded]:
        if not items:
            raise ValueError("submit() needs at least one item")
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        answers = await asyncio.gather(*futures)
        return [result for result, _ in answers], answers[0][1]

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}")

    async def _gather(self) -> list:
        """Block for the first item, then take what is queued (waiting up to max_wait for more) up to the cap."""
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            # asyncio.wait rather than wait_for: on Python 3.11 wait_for can drop an item that arrives just as the
            # timeout fires, which would leave a request waiting forever
            getter = asyncio.ensure_future(self._queue.get())
            await asyncio.wait({getter}, timeout=remaining)
            if getter.done() or not getter.cancel():
                batch.append(getter.result())
            else:
                break  # a cancelled get() leaves its item in the queue for the next batch
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            batch = [(item, future) for item, future in batch if not future.done()]  # skip cancelled requests
            if not batch:
                continue
            loaded = self.slot.current
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, loaded.model,
                                                     [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: run_batch returned {len(results)} results for {len(batch)} items")
            except Exception as err:  # one bad batch fails its own requests, never the worker
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(BatchStats(self.name, len(batch), time.perf_counter() - started))
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result((result, loaded))

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
