"""Relevance judgements from the playground, kept per collection as a BEIR folder ``dowse eval`` reads.

``<data_dir>/judgements/<collection>/queries.jsonl`` holds ``{"_id", "text"}`` per judged query and
``qrels/test.tsv`` holds ``query-id  corpus-id  score`` (header line, tab-separated, score 1 = relevant,
0 = judged not relevant). A query's id is ``ui-`` + the first 12 hex digits of the SHA-1 of its text, so
judging the same query again updates its rows instead of adding a query. Both files are rewritten whole
(temporary file + rename) under a lock, so a reader never sees half a file; one gateway process per data
directory writes them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from embedder.errors import InvalidInput

MAX_DOC_ID = 512
MAX_QUERY = 4096


def query_id(text: str) -> str:
    """Stable id of a query text (whitespace at the ends ignored)."""
    return "ui-" + hashlib.sha1(text.strip().encode("utf-8")).hexdigest()[:12]


def _atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class QrelsBook:
    """Read and update the judgement folders under ``root`` (one per collection)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = asyncio.Lock()

    def folder(self, collection: str) -> Path:
        """The BEIR folder of one collection (``--qrels`` of ``dowse eval``)."""
        return self.root / collection

    def qrels_path(self, collection: str) -> Path:
        """The collection's ``qrels/test.tsv``."""
        return self.folder(collection) / "qrels" / "test.tsv"

    def read(self, collection: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        """(query id -> text, query id -> doc id -> score) as stored; empty when nothing is judged yet."""
        folder = self.folder(collection)
        queries: dict[str, str] = {}
        qrels: dict[str, dict[str, int]] = {}
        qpath, rpath = folder / "queries.jsonl", self.qrels_path(collection)
        if qpath.is_file():
            for line in qpath.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    queries[str(rec["_id"])] = str(rec["text"])
        if rpath.is_file():
            for i, line in enumerate(rpath.read_text(encoding="utf-8").splitlines()):
                parts = line.split("\t")
                if (i == 0 and parts[0] == "query-id") or len(parts) < 3:
                    continue
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
        return queries, qrels

    def _write(self, collection: str, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> None:
        folder = self.folder(collection)
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"_id": q, "text": t}, ensure_ascii=False) for q, t in queries.items()]
        _atomic_write(folder / "queries.jsonl", "".join(f"{x}\n" for x in lines))
        rows = ["query-id\tcorpus-id\tscore"]
        rows += [f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()]
        _atomic_write(self.qrels_path(collection), "".join(f"{r}\n" for r in rows))

    async def judge(self, collection: str, query: str, doc_id: str, relevance: int | None) -> dict[str, Any]:
        """Record (or, with ``relevance`` None, withdraw) one judgement; returns the query's judgements."""
        if not query.strip() or len(query) > MAX_QUERY:
            raise InvalidInput(f"query must be 1..{MAX_QUERY} characters", field="query", limit=MAX_QUERY)
        if not doc_id or len(doc_id) > MAX_DOC_ID or any(c in doc_id for c in "\t\r\n"):
            raise InvalidInput(
                f"doc_id must be 1..{MAX_DOC_ID} characters without tabs or newlines",
                field="doc_id",
                limit=MAX_DOC_ID,
            )
        qid = query_id(query)
        async with self._lock:
            queries, qrels = await asyncio.to_thread(self.read, collection)
            docs = qrels.setdefault(qid, {})
            if relevance is None:
                docs.pop(doc_id, None)
            else:
                docs[doc_id] = relevance
            if docs:
                queries[qid] = query.strip()
            else:
                qrels.pop(qid, None)
                queries.pop(qid, None)
            await asyncio.to_thread(self._write, collection, queries, qrels)
        return {
            "collection": collection,
            "query_id": qid,
            "query": query.strip(),
            "judgements": dict(qrels.get(qid, {})),
            "path": str(self.qrels_path(collection)),
        }

    async def for_query(self, collection: str, query: str | None) -> dict[str, Any]:
        """Every judged query of a collection, or only ``query``'s judgements."""
        queries, qrels = await asyncio.to_thread(self.read, collection)
        if query is not None:
            qid = query_id(query)
            queries = {qid: queries[qid]} if qid in queries else {}
        return {
            "collection": collection,
            "path": str(self.qrels_path(collection)),
            "queries": [{"id": q, "text": t, "judgements": qrels.get(q, {})} for q, t in queries.items()],
        }
