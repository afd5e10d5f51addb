"""Dynamic batching: coalesce concurrent requests into length-sorted batches on one worker thread.

A batch closes when it holds ``max_batch_size`` inputs or ``max_batch_tokens`` tokens, or when its oldest
input has waited ``max_wait_ms``. While a batch runs, new requests queue up and form the next batch, so
under load batches grow by themselves and at low load a lone request waits at most ``max_wait_ms`` (default
0: it runs at once; a positive wait trades latency for bigger batches, worth it on a GPU).
The queue is bounded (``Overloaded`` when full). Inputs are sorted by length and split so that the padded
batch (longest x count) stays within the token budget.
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

import numpy as np

from embedder import metrics
from embedder.errors import Overloaded
from embedder.onnx_model import Encoded

log = logging.getLogger(__name__)

RunFn = Callable[[list[Encoded]], np.ndarray]


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
    ) -> None:
        self._run = run
        self._executor = executor
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._jobs: deque[_Job] = deque()
        self._pending = 0  # items queued but not yet handed to a batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Inputs waiting for a batch."""
        return self._pending

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
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(Overloaded("embedder is shutting down", field="input"))
        self._pending = 0

    async def submit(self, items: list[Encoded]) -> np.ndarray:
        """Queue ``items`` and wait for their rows (input order)."""
        if not items:
            return self._run([])
        if self._pending + len(items) > self.max_queue:
            metrics.REJECTED.labels(self.name).inc()
            raise Overloaded(
                f"embedder queue is full ({self._pending} inputs waiting); retry later",
                field="input",
                limit=self.max_queue,
            )
        self.start()
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(items, fut, time.perf_counter()))
        self._pending += len(items)
        metrics.QUEUE_DEPTH.labels(self.name).set(self._pending)
        self._wake.set()
        return await fut

    def _drop_cancelled(self) -> None:
        while self._jobs and self._jobs[0].future.done():
            job = self._jobs.popleft()
            self._pending -= len(job.items) - job.taken

    def _take(self) -> list[tuple[_Job, int]]:
        """Pop up to one batch worth of (job, item index) units, oldest first."""
        units: list[tuple[_Job, int]] = []
        tokens = 0
        while self._jobs and len(units) < self.max_batch_size:
            job = self._jobs[0]
            if job.future.done():
                self._jobs.popleft()
                self._pending -= len(job.items) - job.taken
                continue
            n = len(job.items[job.taken])
            if units and tokens + n > self.max_batch_tokens:
                break
            units.append((job, job.taken))
            tokens += n
            job.taken += 1
            self._pending -= 1
            if job.taken == len(job.items):
                self._jobs.popleft()
        return units

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._jobs[0].enqueued + self.max_wait_s
            while self._pending < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            units = self._take()
            metrics.QUEUE_DEPTH.labels(self.name).set(self._pending)
            if not units:
                continue
            items = [job.items[i] for job, i in units]
            metrics.BATCH_SIZE.labels(self.name).observe(len(items))
            metrics.BATCH_TOKENS.labels(self.name).observe(sum(len(e) for e in items))
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
