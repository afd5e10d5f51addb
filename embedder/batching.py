"""Dynamic batching with two priority classes: coalesce requests into length-sorted batches on one thread.

Two queues feed one model: **interactive** (query embeddings, a search's rerank, small calls) and
**batch** (ingest documents, large client batches). The loop always takes interactive work first; batch
work is cut into *micro-batches* of at most ``micro_batch_tokens`` padded tokens (longest input x count),
sized so that one holds the model for a bounded time (see docs/embedder.md, "Priority classes"), so an
interactive request waits for at most the micro-batch already running.

An interactive batch closes when it holds ``max_batch_size`` inputs or ``max_batch_tokens`` tokens, or
when its oldest input has waited ``max_wait_ms``. While a batch runs, new requests queue up and form the
next batch, so under load batches grow by themselves and at low load a lone request waits at most
``max_wait_ms`` (default 0: it runs at once; a positive wait trades latency for bigger batches, worth it
on a GPU). Each class has its own bounded queue (``Overloaded`` when full). Inputs are sorted by length and
split so that the padded batch (longest x count) stays within the token budget. Every input is computed by
the same graph whatever its batch (per-token quantisation), so priorities and micro-batches never change
a vector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from embedder import metrics
from embedder.errors import InvalidInput, Overloaded
from embedder.onnx_model import Encoded

log = logging.getLogger(__name__)

RunFn = Callable[[list[Encoded]], np.ndarray]
Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
# Padded tokens per batch-class micro-batch (longest x count): minilm int8 on this project's 2 shared CPU
# cores runs 256 padded tokens in 36 ms (p50; 58 ms max) and 512 in 72 ms (bench/micro_batch.py), so
# 384 holds the model for about 50 ms, the longest an interactive request waits behind batch work
# (docs/embedder.md, "Priority classes"). A GPU runs far more tokens in 50 ms: raise it there.
MICRO_BATCH_TOKENS = 384


def check_priority(value: object, field: str = "priority") -> Priority:
    """``value`` as a Priority, else InvalidInput naming ``field``."""
    if value == "interactive":
        return "interactive"
    if value == "batch":
        return "batch"
    raise InvalidInput(
        f"{field} must be 'interactive' or 'batch', not {value!r}", field=field, limit=list(PRIORITIES)
    )


def plan_batches(lengths: list[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches: sorted by length, each within size and padded-token budgets."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted ascending: the new item is the longest
        if cur and (len(cur) >= max_batch_size or longest * (len(cur) + 1) > max_batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def run_sorted(run: RunFn, items: list[Encoded], max_batch_size: int, max_batch_tokens: int) -> np.ndarray:
    """Run ``items`` in length-sorted batches and return the rows in input order."""
    out: np.ndarray | None = None
    for idx in plan_batches([len(e) for e in items], max_batch_size, max_batch_tokens):
        res = run([items[i] for i in idx])
        if out is None:
            out = np.empty((len(items),) + res.shape[1:], dtype=res.dtype)
        out[idx] = res
    assert out is not None
    return out


@dataclass
class _Job:
    items: list[Encoded]
    future: asyncio.Future[np.ndarray]
    enqueued: float
    order: list[int]  # the order its items are handed to batches (batch jobs: by length)
    taken: int = 0  # items handed to a batch so far
    done: int = 0
    rows: np.ndarray | None = None
    units: list[int] = field(default_factory=list)


class DynamicBatcher:
    """An asyncio front-end that feeds one model through a shared single-thread executor."""

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        *,
        name: str,
        max_batch_size: int = 64,
        max_batch_tokens: int = 8192,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        micro_batch_tokens: int = MICRO_BATCH_TOKENS,
        max_batch_queue: int = 1024,
    ) -> None:
        self._run = run
        self._executor = executor
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.micro_batch_tokens = micro_batch_tokens
        self.limits: dict[Priority, int] = {"interactive": max_queue, "batch": max_batch_queue}
        self._jobs: dict[Priority, deque[_Job]] = {p: deque() for p in PRIORITIES}
        self._pending: dict[Priority, int] = dict.fromkeys(PRIORITIES, 0)  # items not yet in a batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Inputs waiting for a batch (both classes)."""
        return sum(self._pending.values())

    def depth(self, priority: Priority) -> int:
        """Inputs of one class waiting for a batch."""
        return self._pending[priority]

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop the loop; queued requests fail with Overloaded."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for jobs in self._jobs.values():
            while jobs:
                job = jobs.popleft()
                if not job.future.done():
                    job.future.set_exception(Overloaded("embedder is shutting down", field="input"))
        self._pending = dict.fromkeys(PRIORITIES, 0)

    def _gauges(self) -> None:
        for p in PRIORITIES:
            metrics.QUEUE_DEPTH_BY_PRIORITY.labels(self.name, p).set(self._pending[p])
        metrics.QUEUE_DEPTH.labels(self.name).set(self.queue_depth)

    async def submit(self, items: list[Encoded], priority: Priority = "interactive") -> np.ndarray:
        """Queue ``items`` in the ``priority`` class and wait for their rows (input order)."""
        priority = check_priority(priority)
        if not items:
            return self._run([])
        limit = self.limits[priority]
        if self._pending[priority] + len(items) > limit:
            metrics.REJECTED.labels(self.name).inc()
            raise Overloaded(
                f"embedder {priority} queue is full ({self._pending[priority]} inputs waiting); retry later",
                field="input",
                limit=limit,
            )
        self.start()
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        order = list(range(len(items)))
        if priority == "batch":  # micro-batches of similar lengths pad less
            order.sort(key=lambda i: len(items[i]))
        self._jobs[priority].append(_Job(items, fut, time.perf_counter(), order))
        self._pending[priority] += len(items)
        self._gauges()
        self._wake.set()
        return await fut

    def _drop_cancelled(self) -> None:
        for p, jobs in self._jobs.items():
            while jobs and jobs[0].future.done():
                job = jobs.popleft()
                self._pending[p] -= len(job.items) - job.taken

    def _take(self) -> tuple[Priority, list[tuple[_Job, int]]]:
        """Pop one batch of (job, item index) units: interactive work first, else one batch micro-batch.

        Interactive batches are bounded by ``max_batch_tokens`` real tokens; batch micro-batches by
        ``micro_batch_tokens`` padded tokens (longest x count; a single longer input still runs alone).
        """
        prio: Priority = "interactive" if self._jobs["interactive"] else "batch"
        jobs = self._jobs[prio]
        units: list[tuple[_Job, int]] = []
        tokens = longest = 0
        while jobs and len(units) < self.max_batch_size:
            job = jobs[0]
            if job.future.done():
                jobs.popleft()
                self._pending[prio] -= len(job.items) - job.taken
                continue
            i = job.order[job.taken]
            n = len(job.items[i])
            if prio == "interactive":
                if units and tokens + n > self.max_batch_tokens:
                    break
            elif units and max(longest, n) * (len(units) + 1) > self.micro_batch_tokens:
                break
            units.append((job, i))
            tokens += n
            longest = max(longest, n)
            job.taken += 1
            self._pending[prio] -= 1
            if job.taken == len(job.items):
                jobs.popleft()
        return prio, units

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self.queue_depth:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._jobs["interactive"] or self._jobs["batch"]
            deadline = first[0].enqueued + self.max_wait_s
            while self.queue_depth < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            prio, units = self._take()
            self._gauges()
            if not units:
                continue
            items = [job.items[i] for job, i in units]
            metrics.BATCH_SIZE.labels(self.name).observe(len(items))
            metrics.BATCH_TOKENS.labels(self.name).observe(sum(len(e) for e in items))
            metrics.BATCHES.labels(self.name, prio).inc()
            try:
                rows = await loop.run_in_executor(
                    self._executor, run_sorted, self._run, items, self.max_batch_size, self.max_batch_tokens
                )
            except Exception as exc:  # the model failed: every request in the batch gets the error
                log.exception("batch of %d failed on %s", len(items), self.name)
                for job, _ in units:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for k, (job, i) in enumerate(units):
                if job.future.done():
                    continue
                if job.rows is None:
                    job.rows = np.empty((len(job.items),) + rows.shape[1:], dtype=rows.dtype)
                job.rows[i] = rows[k]
                job.done += 1
                if job.done == len(job.items):
                    job.future.set_result(job.rows)
