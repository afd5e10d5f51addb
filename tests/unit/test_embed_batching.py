"""Dynamic batching plumbing with a fake model (no claims about quality or speed here)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedder.batching import DynamicBatcher, plan_batches, run_sorted
from embedder.errors import Overloaded
from embedder.onnx_model import Encoded


def enc(n: int, tag: int = 0) -> Encoded:
    return Encoded([tag] * n, [0] * n)


class FakeModel:
    """Returns each input's (length, tag) so results can be traced back; records the batches it ran."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail = fail
        self.lock = threading.Lock()

    def run(self, batch: list[Encoded]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("model exploded")
        time.sleep(self.delay_s)
        with self.lock:
            self.batches.append([len(e) for e in batch])
        return np.array([[len(e), e.ids[0] if e.ids else -1] for e in batch], dtype=np.float32)


def test_plan_batches_sorts_and_respects_limits() -> None:
    lengths = [50, 3, 20, 7, 100, 3, 60]
    batches = plan_batches(lengths, max_batch_size=3, max_batch_tokens=150)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 150


def test_run_sorted_returns_rows_in_input_order() -> None:
    model = FakeModel()
    items = [enc(n, tag=k) for k, n in enumerate([9, 2, 5, 2, 7])]
    out = run_sorted(model.run, items, max_batch_size=2, max_batch_tokens=1000)
    assert out[:, 1].tolist() == [0, 1, 2, 3, 4]
    assert out[:, 0].tolist() == [9, 2, 5, 2, 7]
    assert all(len(b) <= 2 for b in model.batches)


async def test_concurrent_requests_are_coalesced_and_answered_in_order() -> None:
    model = FakeModel(delay_s=0.02)
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", max_batch_size=16, max_wait_ms=5)
    try:
        reqs = [[enc(3 + (k % 4), tag=k * 10 + j) for j in range(1 + k % 3)] for k in range(24)]
        outs = await asyncio.gather(*(b.submit(r) for r in reqs))
    finally:
        await b.stop()
        pool.shutdown()
    for r, out in zip(reqs, outs, strict=True):
        assert out[:, 1].tolist() == [e.ids[0] for e in r]
    total = sum(len(r) for r in reqs)
    assert sum(len(x) for x in model.batches) == total
    assert len(model.batches) < len(reqs)  # coalesced: fewer model calls than requests
    assert max(len(x) for x in model.batches) <= 16
    for x in model.batches:  # each batch is length-sorted
        assert x == sorted(x)


async def test_token_budget_splits_batches() -> None:
    model = FakeModel()
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", max_batch_size=64, max_batch_tokens=40, max_wait_ms=5)
    try:
        out = await b.submit([enc(10, tag=k) for k in range(12)])
    finally:
        await b.stop()
        pool.shutdown()
    assert out[:, 1].tolist() == list(range(12))
    assert all(len(x) * max(x) <= 40 for x in model.batches)


async def test_full_queue_is_overloaded_with_limit() -> None:
    model = FakeModel(delay_s=0.2)
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", max_batch_size=2, max_queue=4, max_wait_ms=0)
    try:
        first = asyncio.ensure_future(b.submit([enc(2), enc(2)]))
        await asyncio.sleep(0.05)  # taken by the worker: queue empty again, model busy
        second = asyncio.ensure_future(b.submit([enc(2)] * 4))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as err:
            await b.submit([enc(2)])
        assert err.value.limit == 4 and err.value.field == "input"
        assert len(await first) == 2 and len(await second) == 4
    finally:
        await b.stop()
        pool.shutdown()


async def test_model_failure_reaches_every_waiter_and_batcher_survives() -> None:
    model = FakeModel(fail=True)
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", max_wait_ms=1)
    try:
        res = await asyncio.gather(b.submit([enc(2)]), b.submit([enc(3)]), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in res)
        model.fail = False
        assert (await b.submit([enc(4, tag=7)]))[0].tolist() == [4, 7]
    finally:
        await b.stop()
        pool.shutdown()


async def test_cancelled_request_is_dropped() -> None:
    model = FakeModel(delay_s=0.1)
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", max_batch_size=1, max_wait_ms=0)
    try:
        busy = asyncio.ensure_future(b.submit([enc(1, tag=1)]))
        await asyncio.sleep(0.02)
        doomed = asyncio.ensure_future(b.submit([enc(5, tag=5)] * 3))
        await asyncio.sleep(0)
        doomed.cancel()
        assert (await busy)[0].tolist() == [1, 1]
        assert (await b.submit([enc(2, tag=2)]))[0].tolist() == [2, 2]
        assert [5] not in model.batches
        assert b.queue_depth == 0
    finally:
        await b.stop()
        pool.shutdown()
