"""Ingest jobs of the indexer: background jobs over HTTP and the foreground ``dowse index`` loop.

:class:`IngestJobs` is a mixin of :class:`~indexer.service.IndexerService`; jobs are persisted in each
collection's SQLite store, so their progress and errors survive a restart (an unfinished one is marked
interrupted and resumes by skipping the ids already stored).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from embedder.errors import DowseError, InvalidInput
from indexer.collection import Collection
from indexer.errors import JobNotFound
from indexer.import_roots import resolve_job_path
from indexer.ingest import Progress, count_records, detect_format, ingest

log = logging.getLogger(__name__)


class IngestJobs:
    """Job methods of the indexer service (needs ``_get``, ``upsert``, ``validate_document``)."""

    job_roots: list[Path]
    _jobs: dict[str, asyncio.Task[Any]]

    if TYPE_CHECKING:

        def _get(self, name: str) -> Collection: ...

        async def upsert(
            self, name: str, docs: list[dict[str, Any]], *, model: str | None = None, dims: int | None = None
        ) -> dict[str, Any]: ...

        def validate_document(self, doc: Any, where: str | int) -> None: ...

    async def start_job(self, name: str, path: str | Path, fmt: str | None = None) -> dict[str, Any]:
        """Start a background ingest of a file under an import root (the API's jobs); resumable."""
        coll = self._get(name)
        given = str(path)
        resolved = await asyncio.to_thread(resolve_job_path, given, self.job_roots)
        return await self._start(coll, given, resolved, fmt)

    async def start_local_job(self, name: str, path: Path, fmt: str | None = None) -> dict[str, Any]:
        """Start an ingest of a file named by the server's own configuration (the demo corpus): no roots."""
        coll = self._get(name)
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_file():
            raise InvalidInput(f"no such file: {path}", field="path")
        return await self._start(coll, str(path), resolved, fmt)

    async def _start(self, coll: Collection, given: str, resolved: Path, fmt: str | None) -> dict[str, Any]:
        fmt = detect_format(resolved, fmt)
        now = time.time()
        job: dict[str, Any] = {
            "id": uuid.uuid4().hex[:12],
            "path": given,  # as the client gave it: a job never shows the server's resolved paths
            "format": fmt,
            "status": "queued",
            "total": None,
            "done": 0,
            "skipped": 0,
            "failed": 0,
            "errors": [],
            "created_at": now,
            "updated_at": now,
        }
        await asyncio.to_thread(coll.store.job_put, job)
        task = asyncio.create_task(self._run_job(coll, job, resolved))
        name = coll.name
        self._jobs[f"{name}/{job['id']}"] = task
        task.add_done_callback(lambda _t: self._jobs.pop(f"{name}/{job['id']}", None))
        return dict(job)

    async def run_ingest(
        self,
        name: str,
        path: Path,
        fmt: str | None = None,
        *,
        batch_size: int = 64,
        on_progress: Any = None,
        progress: Progress | None = None,
        retry_s: float = 600.0,
    ) -> Progress:
        """The ingest loop used by jobs and ``dowse index`` (foreground).

        Transient embedder errors (not ready, overloaded, unreachable) are retried with backoff for up to
        ``retry_s`` seconds per batch before the ingest fails."""
        coll = self._get(name)
        fmt = detect_format(path, fmt)
        prog = progress or Progress()
        if prog.total is None:
            prog.total = await asyncio.to_thread(count_records, path, fmt)

        async def existing(ids: list[str]) -> set[str]:
            return await asyncio.to_thread(coll.store.existing_ids, ids)

        async def upsert(docs: list[dict[str, Any]]) -> Any:
            # A batch is one transaction (all or nothing), so a transient embedder outage (still loading,
            # restarting, overloaded) is waited out and the batch retried, within ``retry_s``.
            return await retry_transient(lambda: self.upsert(name, docs), f"ingest into {name}", retry_s)

        return await ingest(
            path,
            fmt,
            existing=existing,
            upsert=upsert,
            validate=self.validate_document,
            batch_size=batch_size,
            progress=prog,
            on_progress=on_progress,
        )

    async def _run_job(self, coll: Collection, job: dict[str, Any], path: Path) -> None:
        last = 0.0

        def report(prog: Progress) -> None:
            nonlocal last
            job.update(
                total=prog.total,
                done=prog.done,
                skipped=prog.skipped,
                failed=prog.failed,
                errors=list(prog.errors),
                updated_at=time.time(),
            )
            if time.monotonic() - last > 1.0:
                last = time.monotonic()
                coll.store.job_put(job)

        job["status"] = "running"
        await asyncio.to_thread(coll.store.job_put, job)
        try:
            await self.run_ingest(coll.name, path, job["format"], on_progress=report)
            job["status"] = "completed"
        except asyncio.CancelledError:
            job["status"] = "cancelled"
            raise
        except DowseError as exc:
            job["status"] = "failed"
            job["errors"] = [*job["errors"], exc.message][-100:]
        except Exception:
            log.exception("ingest job %s failed", job["id"])
            job["status"] = "failed"
            job["errors"] = [*job["errors"], "internal error (see the server log)"][-100:]
        finally:
            job["updated_at"] = time.time()
            if coll.ready:
                await asyncio.to_thread(coll.store.job_put, job)

    async def job(self, name: str, job_id: str) -> dict[str, Any]:
        """One job's progress and errors."""
        coll = self._get(name)
        jobs = await asyncio.to_thread(coll.store.jobs, job_id)
        if not jobs:
            raise JobNotFound(f"no job {job_id!r} in collection {name!r}", field="job_id")
        return jobs[0]

    async def list_jobs(self, name: str) -> list[dict[str, Any]]:
        """All jobs of a collection, newest first."""
        coll = self._get(name)
        return await asyncio.to_thread(coll.store.jobs)


_TRANSIENT = ("not_ready", "overloaded", "dependency_failed")
T = TypeVar("T")
BACKOFF_BASE_S = 0.5  # first wait after a transient error; doubles per retry
BACKOFF_CAP_S = 10.0  # longest single wait


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    what: str,
    retry_s: float | None = None,
    transient: tuple[str, ...] = _TRANSIENT,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Await ``call()``, retrying DowseErrors of a ``transient`` type with capped exponential backoff.

    Waits ``BACKOFF_BASE_S`` doubling up to ``BACKOFF_CAP_S``: an embedder that answers 429 (its batch queue
    is full) or 503 (loading) is given time instead of failing the ingest or queueing more work.
    ``retry_s``: give up (re-raise) once this many seconds were spent waiting; None waits for ever.
    """
    delay, waited = BACKOFF_BASE_S, 0.0
    while True:
        try:
            return await call()
        except DowseError as exc:
            if exc.type not in transient or (retry_s is not None and waited >= retry_s):
                raise
            log.warning("%s waits for a dependency (%s); retry in %.1f s", what, exc, delay)
            await sleep(delay)
            waited += delay
            delay = min(delay * 2, BACKOFF_CAP_S)
