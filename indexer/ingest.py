"""Corpus readers (JSONL incl. BEIR corpus.jsonl, CSV, Parquet) and the resumable ingest loop."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.errors import DowseError, InvalidInput

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "parquet")
MAX_ERRORS_KEPT = 100
READ_SLICE = 256  # records read, parsed and validated per worker-thread call


def detect_format(path: Path, fmt: str | None = None) -> str:
    """``jsonl`` / ``csv`` / ``parquet`` from ``fmt`` or the file suffix."""
    if fmt:
        if fmt not in FORMATS:
            raise InvalidInput(f"format must be one of {list(FORMATS)}", field="format", limit=list(FORMATS))
        return fmt
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if suffix.endswith((".csv", ".tsv")):
        return "csv"
    if suffix.endswith((".parquet", ".pq")):
        return "parquet"
    raise InvalidInput(
        f"cannot tell the format of {path.name}; pass format", field="format", limit=list(FORMATS)
    )


def to_document(rec: dict[str, Any]) -> dict[str, Any]:
    """Map a record to ``{id, title, text, metadata}``: BEIR ``_id`` accepted, other fields -> metadata."""
    doc_id = rec.get("id", rec.get("_id"))
    meta = {k: v for k, v in rec.items() if k not in ("id", "_id", "title", "text", "metadata")}
    extra = rec.get("metadata")
    if isinstance(extra, str) and extra.strip().startswith("{"):
        with contextlib.suppress(ValueError):
            extra = json.loads(extra)
    if isinstance(extra, dict):
        meta.update(extra)
    elif extra is not None:
        meta["metadata"] = extra
    return {
        "id": str(doc_id) if isinstance(doc_id, int) else doc_id,
        "title": rec.get("title") or "",
        "text": rec.get("text"),
        "metadata": meta,
    }


def count_records(path: Path, fmt: str) -> int | None:
    """Number of records (cheap: lines or Parquet metadata)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with open(path, "rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return lines - 1 if fmt == "csv" else lines


def read_records(path: Path, fmt: str) -> Generator[tuple[int, dict[str, Any] | str], None, None]:
    """(line/row number, record) pairs; a record that cannot be parsed yields an error string instead."""
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield i, f"line {i}: invalid JSON ({exc.msg})"
                    continue
                yield i, rec if isinstance(rec, dict) else f"line {i}: not a JSON object"
    elif fmt == "csv":
        with open(path, encoding="utf-8", newline="") as fh:
            dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
            for i, row in enumerate(csv.DictReader(fh, dialect=dialect), 2):
                yield i, dict(row)
    else:
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                n += 1
                yield n, rec


@dataclass
class Progress:
    """Counters of one ingest run."""

    total: int | None = None
    done: int = 0  # written in this run
    skipped: int = 0  # already present (resume)
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, msg: str) -> None:
        """Count a failed record, keeping the first messages."""
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(msg)


async def ingest(
    path: Path,
    fmt: str,
    *,
    existing: Callable[[list[str]], Awaitable[set[str]]],
    upsert: Callable[[list[dict[str, Any]]], Awaitable[Any]],
    validate: Callable[[dict[str, Any], int], None],
    batch_size: int = 64,
    progress: Progress | None = None,
    on_progress: Callable[[Progress], Any] | None = None,
) -> Progress:
    """Stream ``path`` in batches: skip ids already stored, validate, upsert (one transaction per batch).

    A record that fails validation is counted and reported, not fatal; an embedder/store failure is."""
    prog = progress or Progress()
    batch: list[tuple[int, dict[str, Any]]] = []

    async def flush() -> None:
        ids = [d["id"] for _, d in batch]
        have = await existing(ids)
        todo: list[dict[str, Any]] = []
        seen: set[str] = set()
        for where, doc in batch:
            if doc["id"] in have:
                prog.skipped += 1
                continue
            if doc["id"] in seen:
                prog.error(f"record {where}: duplicate id {doc['id']!r} in the file")
                continue
            seen.add(doc["id"])
            todo.append(doc)
        if todo:
            await upsert(todo)
            prog.done += len(todo)
        batch.clear()
        if on_progress is not None:
            on_progress(prog)

    # Reading, parsing and validating run in a worker thread, a slice of records at a time, so a large
    # file never blocks the event loop (a 50 MB file used to stall every other request for seconds).
    records = read_records(path, fmt)

    def next_slice() -> list[tuple[int, dict[str, Any] | str]]:
        out: list[tuple[int, dict[str, Any] | str]] = []
        for where, rec in records:
            if isinstance(rec, str):
                out.append((where, rec))
            else:
                doc = to_document(rec)
                try:
                    validate(doc, where)
                except DowseError as exc:
                    out.append((where, f"record {where}: {exc.message}"))
                else:
                    out.append((where, doc))
            if len(out) >= READ_SLICE:
                break
        return out

    try:
        while items := await asyncio.to_thread(next_slice):
            for where, item in items:
                if isinstance(item, str):
                    prog.error(item)
                    continue
                batch.append((where, item))
                if len(batch) >= batch_size:
                    await flush()
    finally:
        with contextlib.suppress(ValueError):  # still running in its thread after a cancel: left to GC
            records.close()
    if batch:
        await flush()
    if on_progress is not None:
        on_progress(prog)
    return prog
