"""SQLite (WAL) document store: the source of truth for documents, chunks and their embeddings.

Every write is one transaction that bumps a per-collection sequence number. Rows written carry that
``seq``; rows removed leave a tombstone ``(seq, kind, key)``. The derived indexes (FAISS, BM25) remember
the seq they reflect, so on start they replay exactly the changes after it.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

# entries per key cache (id-only search hits); beyond it lookups fall back to SQLite
_KEY_CACHE_MAX = 500_000
V = TypeVar("V")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
  id TEXT PRIMARY KEY, dno INTEGER NOT NULL UNIQUE, title TEXT NOT NULL, text TEXT NOT NULL,
  metadata TEXT NOT NULL, seq INTEGER NOT NULL, n_chunks INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS docs_seq ON docs(seq);
CREATE TABLE IF NOT EXISTS chunks (
  cid INTEGER PRIMARY KEY AUTOINCREMENT, dno INTEGER NOT NULL, chunk_no INTEGER NOT NULL,
  start INTEGER NOT NULL, end INTEGER NOT NULL, seq INTEGER NOT NULL, emb BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_dno ON chunks(dno);
CREATE INDEX IF NOT EXISTS chunks_seq ON chunks(seq);
CREATE TABLE IF NOT EXISTS removed (seq INTEGER NOT NULL, kind TEXT NOT NULL, key INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_seq ON removed(seq);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, path TEXT NOT NULL, format TEXT NOT NULL, status TEXT NOT NULL,
  total INTEGER, done INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0, errors TEXT NOT NULL DEFAULT '[]',
  created_at REAL NOT NULL, updated_at REAL NOT NULL);
"""


@dataclass
class PreparedDoc:
    """A validated document with its chunks and their embeddings, ready to write."""

    id: str
    title: str
    text: str
    metadata: str  # JSON object text
    chunks: list[tuple[int, int, int]]  # (chunk_no, start, end)
    embeddings: np.ndarray  # float32 (n_chunks, dims)


@dataclass
class Changes:
    """What one transaction (or a replay range) did, for the derived indexes to apply."""

    seq: int
    removed_dnos: list[int] = field(default_factory=list)
    removed_cids: list[int] = field(default_factory=list)
    docs: list[tuple[int, str, str]] = field(default_factory=list)  # (dno, title, text)
    cids: list[int] = field(default_factory=list)
    vectors: np.ndarray | None = None  # float32 (len(cids), dims)


class DocStore:
    """One collection's SQLite database."""

    def __init__(self, path: Path, dims: int) -> None:
        self.path = path
        self.dims = dims
        self._wlock = threading.Lock()
        self._writer = self._connect()
        self._writer.executescript(SCHEMA)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = [self._writer]
        # Key caches for id-only search hits. cids (AUTOINCREMENT) and dnos (meta counter, committed with
        # the rows) are never reused, so what a committed row says about them never changes: cid ->
        # (dno, chunk_no, start, end, doc id), dno -> doc id. Removals only drop entries to free memory.
        self._chunk_keys: dict[int, tuple[int, int, int, int, str]] = {}
        self._doc_ids: dict[int, str] = {}

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the batch is acknowledged (survives power loss, not just kill -9)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        return conn

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A pooled read connection (WAL: readers never block the writer)."""
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = self._connect()
            with self._wlock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            self._readers.put(conn)

    def close(self) -> None:
        """Close every connection."""
        with self._wlock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    # ---- writes -------------------------------------------------------------------------------
    def _meta(self, conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def seq(self) -> int:
        """Last committed sequence number."""
        with self.reader() as conn:
            return self._meta(conn, "seq")

    def write(self, upserts: Sequence[PreparedDoc], delete_ids: Sequence[str] = ()) -> Changes:
        """Apply upserts and deletes in ONE transaction; all or nothing."""
        with self._wlock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta(conn, "seq") + 1
                next_dno = self._meta(conn, "next_dno") + 1
                ch = Changes(seq=seq)
                for doc_id in [*delete_ids, *(d.id for d in upserts)]:
                    self._remove(conn, doc_id, seq, ch)
                vec_parts: list[np.ndarray] = []
                for doc in upserts:
                    dno = next_dno
                    next_dno += 1
                    conn.execute(
                        "INSERT INTO docs(id, dno, title, text, metadata, seq, n_chunks) "
                        "VALUES (?,?,?,?,?,?,?)",
                        (doc.id, dno, doc.title, doc.text, doc.metadata, seq, len(doc.chunks)),
                    )
                    emb = np.ascontiguousarray(doc.embeddings, dtype=np.float32)
                    for (chunk_no, start, end), vec in zip(doc.chunks, emb, strict=True):
                        cur = conn.execute(
                            "INSERT INTO chunks(dno, chunk_no, start, end, seq, emb) VALUES (?,?,?,?,?,?)",
                            (dno, chunk_no, start, end, seq, vec.tobytes()),
                        )
                        ch.cids.append(int(cur.lastrowid or 0))
                    vec_parts.append(emb)
                    ch.docs.append((dno, doc.title, doc.text))
                ch.vectors = np.concatenate(vec_parts) if vec_parts else np.zeros((0, self.dims), np.float32)
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (seq,))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_dno', ?)", (next_dno - 1,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return ch

    def _remove(self, conn: sqlite3.Connection, doc_id: str, seq: int, ch: Changes) -> None:
        row = conn.execute("SELECT dno FROM docs WHERE id=?", (doc_id,)).fetchone()
        if row is None:
            return
        dno = int(row[0])
        cids = [int(r[0]) for r in conn.execute("SELECT cid FROM chunks WHERE dno=?", (dno,))]
        conn.execute("DELETE FROM chunks WHERE dno=?", (dno,))
        conn.execute("DELETE FROM docs WHERE dno=?", (dno,))
        conn.execute("INSERT INTO removed VALUES (?, 'doc', ?)", (seq, dno))
        conn.executemany("INSERT INTO removed VALUES (?, 'chunk', ?)", [(seq, c) for c in cids])
        ch.removed_dnos.append(dno)
        ch.removed_cids.extend(cids)
        self._doc_ids.pop(dno, None)
        for c in cids:
            self._chunk_keys.pop(c, None)

    def prune_tombstones(self, upto_seq: int) -> None:
        """Forget tombstones every derived index has already applied."""
        with self._wlock:
            self._writer.execute("DELETE FROM removed WHERE seq <= ?", (upto_seq,))

    # ---- replay -------------------------------------------------------------------------------
    def changes_since(self, seq: int, *, docs: bool = True, chunks: bool = True) -> Changes:
        """Everything committed after ``seq`` (removals first, then current rows), for index replay."""
        with self.reader() as conn:
            conn.execute("BEGIN")
            try:
                ch = Changes(seq=self._meta(conn, "seq"))
                for kind, key in conn.execute("SELECT kind, key FROM removed WHERE seq > ?", (seq,)):
                    (ch.removed_dnos if kind == "doc" else ch.removed_cids).append(int(key))
                if docs:
                    ch.docs = [
                        (int(r[0]), r[1], r[2])
                        for r in conn.execute("SELECT dno, title, text FROM docs WHERE seq > ?", (seq,))
                    ]
                if chunks:
                    rows = conn.execute(
                        "SELECT cid, emb FROM chunks WHERE seq > ? ORDER BY cid", (seq,)
                    ).fetchall()
                    ch.cids = [int(r[0]) for r in rows]
                    ch.vectors = self._stack([r[1] for r in rows])
            finally:
                conn.execute("COMMIT")
        return ch

    def _stack(self, blobs: list[bytes]) -> np.ndarray:
        if not blobs:
            return np.zeros((0, self.dims), np.float32)
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), self.dims).copy()

    # ---- reads --------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Documents and chunks stored."""
        with self.reader() as conn:
            docs = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
            chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return {"documents": int(docs), "chunks": int(chunks)}

    def get_docs(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored documents in ``ids`` order; missing ids are skipped."""
        found: dict[str, dict[str, Any]] = {}
        with self.reader() as conn:
            for part in _parts(list(dict.fromkeys(ids))):
                q = f"SELECT id, title, text, metadata, n_chunks FROM docs WHERE id IN ({_marks(part)})"
                for r in conn.execute(q, part):
                    found[r[0]] = {
                        "id": r[0],
                        "title": r[1],
                        "text": r[2],
                        "metadata": json.loads(r[3]),
                        "chunks": r[4],
                    }
        return [found[i] for i in ids if i in found]

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored."""
        out: set[str] = set()
        with self.reader() as conn:
            for part in _parts(list(ids)):
                out.update(
                    r[0] for r in conn.execute(f"SELECT id FROM docs WHERE id IN ({_marks(part)})", part)
                )
        return out

    def chunk_rows(self, cids: Sequence[int], with_text: bool = True) -> dict[int, dict[str, Any]]:
        """cid -> chunk + document fields (for turning index hits into results).

        ``with_text=False`` gives the keys only (cid, dno, chunk, id; title/text/metadata empty), from an
        in-memory cache of immutable keys, so a search's hot path does not read every candidate's document.
        """
        out: dict[int, dict[str, Any]] = {}
        if not with_text:
            out, cids = _from_cache(cids, self._chunk_keys, _key_row)
        cols = "d.title, d.text, d.metadata" if with_text else "'', '', '{}'"
        with self.reader() as conn:
            for part in _parts(list(cids)):
                q = (
                    f"SELECT c.cid, c.dno, c.chunk_no, c.start, c.end, d.id, {cols} "
                    f"FROM chunks c JOIN docs d ON d.dno = c.dno WHERE c.cid IN ({_marks(part)})"
                )
                for r in conn.execute(q, part):
                    row = out[int(r[0])] = _row(r)
                    if not with_text and len(self._chunk_keys) < _KEY_CACHE_MAX:
                        self._chunk_keys[row["cid"]] = (
                            row["dno"],
                            row["chunk"],
                            row["start"],
                            row["end"],
                            row["id"],
                        )
        return out

    def doc_rows(self, dnos: Sequence[int], with_text: bool = True) -> dict[int, dict[str, Any]]:
        """dno -> document fields (``with_text=False``: id only, from the key cache where possible)."""
        out: dict[int, dict[str, Any]] = {}
        if not with_text:
            out, dnos = _from_cache(dnos, self._doc_ids, _id_row)
        cols = "title, text, metadata" if with_text else "'', '', NULL"
        with self.reader() as conn:
            for part in _parts(list(dnos)):
                q = f"SELECT dno, id, {cols} FROM docs WHERE dno IN ({_marks(part)})"
                for r in conn.execute(q, part):
                    out[int(r[0])] = {
                        "dno": int(r[0]),
                        "id": r[1],
                        "title": r[2],
                        "text": r[3],
                        "metadata": json.loads(r[4]) if r[4] is not None else {},
                        "chunk": 0,
                    }
                    if not with_text and len(self._doc_ids) < _KEY_CACHE_MAX:
                        self._doc_ids[int(r[0])] = r[1]
        return out

    def embeddings(self, cids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(cids found, float32 vectors) for rescoring / exact search."""
        got_ids: list[int] = []
        blobs: list[bytes] = []
        with self.reader() as conn:
            for part in _parts(list(cids)):
                for r in conn.execute(f"SELECT cid, emb FROM chunks WHERE cid IN ({_marks(part)})", part):
                    got_ids.append(int(r[0]))
                    blobs.append(r[1])
        return np.asarray(got_ids, dtype=np.int64), self._stack(blobs)

    def filtered(self, where: str, params: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(cids, dnos) of chunks whose document matches a compiled filter."""
        with self.reader() as conn:
            rows = conn.execute(
                f"SELECT c.cid, d.dno FROM docs d JOIN chunks c ON c.dno = d.dno WHERE {where}", params
            ).fetchall()
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), np.unique(arr[:, 1])

    def iter_all_chunks(self, batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (cids, vectors) in cid order, in batches (for full rebuilds)."""
        last = -1
        with self.reader() as conn:
            while True:
                rows = conn.execute(
                    "SELECT cid, emb FROM chunks WHERE cid > ? ORDER BY cid LIMIT ?", (last, batch)
                ).fetchall()
                if not rows:
                    return
                last = int(rows[-1][0])
                yield np.asarray([r[0] for r in rows], np.int64), self._stack([r[1] for r in rows])

    # ---- jobs ---------------------------------------------------------------------------------
    def job_put(self, job: dict[str, Any]) -> None:
        """Insert or update a job row."""
        cols = [
            "id",
            "path",
            "format",
            "status",
            "total",
            "done",
            "skipped",
            "failed",
            "errors",
            "created_at",
            "updated_at",
        ]
        vals = [json.dumps(job[c]) if c == "errors" else job[c] for c in cols]
        with self._wlock:
            self._writer.execute(
                f"INSERT OR REPLACE INTO jobs({','.join(cols)}) VALUES ({_marks(cols)})", vals
            )

    def jobs(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """All jobs (newest first), or the one with ``job_id``."""
        q = "SELECT * FROM jobs" + (" WHERE id=?" if job_id else "") + " ORDER BY created_at DESC"
        with self.reader() as conn:
            cur = conn.execute(q, (job_id,) if job_id else ())
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for job in out:
            job["errors"] = json.loads(job["errors"])
        return out


def _row(r: Sequence[Any]) -> dict[str, Any]:
    return {
        "cid": int(r[0]),
        "dno": int(r[1]),
        "chunk": int(r[2]),
        "start": int(r[3]),
        "end": int(r[4]),
        "id": r[5],
        "title": r[6],
        "text": r[7],
        "metadata": json.loads(r[8]),
    }


def _from_cache(
    keys: Sequence[int], cache: dict[int, V], row: Callable[[int, V], dict[str, Any]]
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """(rows of the keys ``cache`` holds, built by ``row``; the keys it lacks, to read from SQLite)."""
    out: dict[int, dict[str, Any]] = {}
    missing: list[int] = []
    for k in keys:
        hit = cache.get(k)
        if hit is None:
            missing.append(k)
        else:
            out[k] = row(k, hit)
    return out, missing


def _id_row(dno: int, doc_id: str) -> dict[str, Any]:
    return {"dno": dno, "id": doc_id, "title": "", "text": "", "metadata": {}, "chunk": 0}


def _key_row(cid: int, key: tuple[int, int, int, int, str]) -> dict[str, Any]:
    dno, chunk, start, end, doc_id = key
    return {
        "cid": cid,
        "dno": dno,
        "chunk": chunk,
        "start": start,
        "end": end,
        "id": doc_id,
        "title": "",
        "text": "",
        "metadata": {},
    }


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


def _parts(items: list[Any], size: int = 900) -> Iterator[list[Any]]:
    # numpy integers would bind as BLOBs (buffer protocol): convert to Python ints
    items = [int(x) if isinstance(x, np.integer) else x for x in items]
    for i in range(0, len(items), size):
        yield items[i : i + size]
