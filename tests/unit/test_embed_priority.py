"""Priority classes of the DynamicBatcher with a fake model: ordering, micro-batch budget, queues."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from embedder.batching import DynamicBatcher
from embedder.errors import InvalidInput, Overloaded
from embedder.onnx_model import Encoded
from embedder.service import EmbeddingService


def enc(n: int, tag: int) -> Encoded:
    return Encoded([tag] * n, [0] * n)


class TagModel:
    """Returns each input's tag; records the tags of every batch it ran, in order."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[list[int]] = []
        self.lock = threading.Lock()

    def run(self, batch: list[Encoded]) -> np.ndarray:
        time.sleep(self.delay_s)
        with self.lock:
            self.batches.append([e.ids[0] for e in batch])
        return np.array([[e.ids[0], len(e)] for e in batch], dtype=np.float32)


async def test_interactive_waits_at_most_one_micro_batch() -> None:
    model = TagModel(delay_s=0.02)
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", micro_batch_tokens=20)
    try:
        bulk = asyncio.ensure_future(b.submit([enc(10, tag=k) for k in range(20)], "batch"))
        await asyncio.sleep(0.03)  # the first micro-batch (or two) is running
        ran_before = len(model.batches)
        query = await b.submit([enc(3, tag=1000)], "interactive")
        rows = await bulk
    finally:
        await b.stop()
        pool.shutdown()
    assert query[:, 0].tolist() == [1000]
    assert rows[:, 0].tolist() == list(range(20))  # input order whatever the micro-batches
    pos = next(i for i, x in enumerate(model.batches) if 1000 in x)
    # at most the micro-batch that was running when the query came, plus the ones already done
    assert pos <= ran_before + 1, model.batches
    assert model.batches[pos] == [1000]  # interactive work is never mixed into a batch micro-batch
    for x in model.batches:
        if 1000 not in x:
            assert len(x) * 10 <= 20  # micro-batch: longest (10) x count within the 20-token budget


async def test_queued_interactive_work_goes_before_queued_batch_work() -> None:
    model = TagModel(delay_s=0.01)
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", micro_batch_tokens=8)
    try:
        bulk = [asyncio.ensure_future(b.submit([enc(4, tag=k)] * 4, "batch")) for k in range(3)]
        inter = [asyncio.ensure_future(b.submit([enc(2, tag=100 + k)], "interactive")) for k in range(3)]
        await asyncio.gather(*bulk, *inter)
    finally:
        await b.stop()
        pool.shutdown()
    flat = [t for x in model.batches for t in x]
    # all three interactive requests were queued before the loop ran: they go first, in one batch
    assert sorted(flat[:3]) == [100, 101, 102]
    assert all(t < 100 for t in flat[3:])


async def test_batch_jobs_are_length_sorted_into_micro_batches() -> None:
    model = TagModel()
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", micro_batch_tokens=12)
    lengths = [6, 1, 6, 2, 3, 2, 1, 3]
    try:
        out = await b.submit([enc(n, tag=k) for k, n in enumerate(lengths)], "batch")
    finally:
        await b.stop()
        pool.shutdown()
    assert out[:, 1].tolist() == lengths
    ran = [[lengths[t] for t in x] for x in model.batches]
    assert [n for x in ran for n in x] == sorted(lengths)
    assert all(max(x) * len(x) <= 12 for x in ran)


async def test_each_class_has_its_own_bounded_queue() -> None:
    model = TagModel(delay_s=0.2)
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", max_queue=4, max_batch_queue=3, micro_batch_tokens=2)
    try:
        busy = asyncio.ensure_future(b.submit([enc(2, tag=1)], "interactive"))
        await asyncio.sleep(0.05)  # the model is busy, both queues are empty
        bulk = asyncio.ensure_future(b.submit([enc(2, tag=2)] * 3, "batch"))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as err:
            await b.submit([enc(2, tag=3)], "batch")
        assert err.value.limit == 3 and "batch" in err.value.message
        assert b.depth("batch") == 3
        # the interactive queue still takes work while the batch queue is full
        assert (await b.submit([enc(2, tag=4)] * 4, "interactive"))[:, 0].tolist() == [4] * 4
        assert len(await bulk) == 3 and len(await busy) == 1
    finally:
        await b.stop()
        pool.shutdown()


async def test_unknown_priority_is_invalid_input() -> None:
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(TagModel().run, pool, name="fake")
    try:
        with pytest.raises(InvalidInput) as err:
            await b.submit([enc(2, tag=1)], "urgent")  # type: ignore[arg-type]
        assert err.value.field == "priority" and err.value.limit == ["interactive", "batch"]
    finally:
        await b.stop()
        pool.shutdown()


def test_default_priority_is_by_size(tmp_path: Path) -> None:
    svc = EmbeddingService(tmp_path, [], micro_batch_tokens=100)
    assert svc.priority_for(None, [enc(50, 0), enc(50, 1)]) == "interactive"  # fits one micro-batch
    assert svc.priority_for(None, [enc(50, 0), enc(51, 1)]) == "batch"
    assert svc.priority_for("interactive", [enc(500, 0)]) == "interactive"  # asked for: as asked
    assert svc.priority_for("batch", [enc(1, 0)]) == "batch"
    with pytest.raises(InvalidInput):
        svc.priority_for("low", [enc(1, 0)])
    limits = svc.limits()
    assert limits["micro_batch_tokens"] == 100
    assert limits["max_rerank_documents"] == 100 and limits["max_request_tokens"] == 32768


async def test_cancelled_batch_job_stops_between_micro_batches() -> None:
    model = TagModel(delay_s=0.02)
    pool = ThreadPoolExecutor(1)
    b = DynamicBatcher(model.run, pool, name="fake", micro_batch_tokens=4)
    try:
        doomed = asyncio.ensure_future(b.submit([enc(4, tag=k) for k in range(50)], "batch"))
        await asyncio.sleep(0.07)  # a few micro-batches ran
        doomed.cancel()
        after = await b.submit([enc(2, tag=999)], "batch")
        assert after[:, 0].tolist() == [999]
        assert b.queue_depth == 0 and b.depth("batch") == 0
        ran = sum(len(x) for x in model.batches if 999 not in x)
        assert ran < 10  # the rest of the cancelled job never reached the model
    finally:
        await b.stop()
        pool.shutdown()
