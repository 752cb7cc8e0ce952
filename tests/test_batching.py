"""MicroBatcher: no wait when idle, batches form while the model is busy, errors reach every caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from evaluators.batching import MicroBatcher


async def test_idle_worker_runs_at_once_and_busy_worker_collects_the_next_batch() -> None:
    release = threading.Event()
    started = threading.Event()
    sizes: list[int] = []

    def fn(items: list[int]) -> list[int]:
        started.set()
        release.wait(5)
        return [i * 10 for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=8, max_wait=0.0, on_batch=sizes.append)
    try:
        first = asyncio.ensure_future(b.submit(1))
        assert await asyncio.to_thread(started.wait, 5)  # ran alone: nobody waited for company
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(2, 7)]
        await asyncio.sleep(0)  # let them queue behind the running batch
        release.set()
        assert await first == 10
        assert await asyncio.gather(*rest) == [20, 30, 40, 50, 60]
        assert sizes == [1, 5]
    finally:
        release.set()
        await b.aclose()


async def test_max_batch_caps_a_batch() -> None:
    sizes: list[int] = []
    b: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch=3, max_wait=0.0, on_batch=sizes.append)
    try:
        assert await b.submit_many(list(range(7))) == list(range(7))
        assert sizes == [3, 3, 1]
    finally:
        await b.aclose()


async def test_a_failing_batch_fails_each_caller() -> None:
    def boom(items: list[int]) -> list[int]:
        raise RuntimeError("model exploded")

    b: MicroBatcher[int, int] = MicroBatcher(boom, max_batch=4, max_wait=0.0)
    try:
        results = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
        with pytest.raises(RuntimeError):
            await b.submit(3)  # the batcher keeps serving after a failure
    finally:
        await b.aclose()
