"""The micro-batcher on its own: a plain function stands for the model, so batch composition is exact."""

import asyncio
import threading

import pytest

from selfsup.serve.batching import Loaded, MicroBatcher, ModelSlot


class Recorder:
    """A 'model' that doubles numbers and records every batch it was called with."""

    def __init__(self, fail_on=None, gate: threading.Event | None = None):
        self.batches, self.fail_on, self.gate = [], fail_on, gate

    def run(self, items):
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError("bad item")
        return [2 * x for x in items]


def _batcher(model, **kwargs):
    slot = ModelSlot(Loaded(model, "m", "1", "test"))
    return slot, MicroBatcher("m", slot, lambda m, items: m.run(items), **{"max_batch_size": 8, "max_wait_ms": 50,
                                                                          **kwargs})


def test_concurrent_requests_share_batches_and_keep_their_order():
    model = Recorder()

    async def scenario():
        _, batcher = _batcher(model)
        answers = await asyncio.gather(*(batcher.submit([10 * i, 10 * i + 1, 10 * i + 2]) for i in range(5)))
        await batcher.close()
        return answers

    answers = asyncio.run(scenario())
    assert [results for results, _ in answers] == [[20 * i, 20 * i + 2, 20 * i + 4] for i in range(5)]
    assert [len(b) for b in model.batches] == [8, 7], "15 items, at most 8 per call"


def test_a_lone_request_waits_at_most_max_wait():
    async def scenario():
        _, batcher = _batcher(Recorder(), max_wait_ms=20)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results, loaded = await batcher.submit([1])
        elapsed = loop.time() - started
        await batcher.close()
        return results, loaded.version, elapsed

    results, version, elapsed = asyncio.run(scenario())
    assert results == [2] and version == "1" and elapsed < 1.0


def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs():
    model = Recorder(fail_on=13)

    async def scenario():
        _, batcher = _batcher(model, max_batch_size=1)
        failed = await asyncio.gather(batcher.submit([13]), return_exceptions=True)
        ok, _ = await batcher.submit([4])
        await batcher.close()
        return failed[0], ok

    failed, ok = asyncio.run(scenario())
    assert isinstance(failed, ValueError) and ok == [8]


def test_a_swap_during_a_batch_lets_it_finish_on_the_old_model():
    gate = threading.Event()
    old, new = Recorder(gate=gate), Recorder()

    async def scenario():
        slot, batcher = _batcher(old, max_wait_ms=0)
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)  # the first batch is running (blocked on the gate)
        slot.swap(Loaded(new, "m", "2", "test"))
        gate.set()
        (_, first_loaded), (_, second_loaded) = await first, await batcher.submit([2])
        await batcher.close()
        return first_loaded.version, second_loaded.version

    assert asyncio.run(scenario()) == ("1", "2")
    assert old.batches == [[1]] and new.batches == [[2]]


@pytest.mark.parametrize("kwargs,words", [({"max_batch_size": 0}, "max_batch_size"), ({"max_wait_ms": -1}, "max_wait_ms")])
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        _batcher(Recorder(), **kwargs)
