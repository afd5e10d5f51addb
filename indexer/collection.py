"""A collection: SQLite store (truth) + FAISS (dense) + tantivy (BM25), kept consistent under one RW lock."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.client import Hit
from indexer.filters import compile_filters
from indexer.funnel import FunnelStore
from indexer.lexical import LexicalIndex
from indexer.manifest import Manifest
from indexer.rotated import RotatedMixin
from indexer.rotation import Rotation
from indexer.rwlock import RWLock
from indexer.store import Changes, DocStore, PreparedDoc

log = logging.getLogger(__name__)

SEARCH_DEFAULTS = "search_defaults.json"  # served search defaults chosen by `dowse eval` (see gateway)
EXACT_SUBSET_MAX = 20_000  # filtered dense search over at most this many chunks is exact (from SQLite)


class Collection(RotatedMixin):
    """One collection's storage; blocking methods (call from a worker thread)."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        *,
        hnsw_threshold: int = 50_000,
        snapshot_every: int = 20_000,
        snapshot_interval_s: float = 300.0,
        rotation_min_chunks: int = 1000,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.name = manifest.name
        self.lock = RWLock()
        self.store = DocStore(root / "store.sqlite", manifest.store_dims)
        self.hnsw_threshold = hnsw_threshold
        self.rotation_min_chunks = rotation_min_chunks
        self.refit_lock = threading.Lock()  # one re-fit at a time (the swap itself runs under the write lock)
        self.rotation: Rotation | None = None
        self.funnel: FunnelStore | None = None
        self._load_rotation()
        self.dense = self._new_dense()
        self.lexical = LexicalIndex(root / "lexical", manifest.analyzer)
        self.snapshot_every = snapshot_every
        self.snapshot_interval_s = snapshot_interval_s
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._snapshot_seq = 0
        self.ready = False

    # ---- start-up -----------------------------------------------------------------------------
    def open(self) -> dict[str, Any]:
        """Load the snapshots and replay SQLite changes committed after them; self-heal on count mismatch."""
        t0 = time.perf_counter()
        with self.lock.write():
            snap = self.dense.load_latest(self.root, self._tag())
            if snap is not None and self.rotation is not None:
                try:
                    self.funnel = FunnelStore.load(self.root / f"dense-{snap}")
                except Exception:
                    log.exception("%s: funnel store of snapshot %d unreadable: rebuilding", self.name, snap)
                    snap = None
            if snap is None:
                self._rebuild_dense()
                replayed_dense = -1
            else:
                self._snapshot_seq = snap
                ch = self.store.changes_since(snap, docs=False)
                self._dense_remove(np.asarray(ch.removed_cids, np.int64))
                assert ch.vectors is not None
                self._dense_add(np.asarray(ch.cids, np.int64), ch.vectors)
                if self.dense.needs_rebuild():
                    self._rebuild_dense()
                replayed_dense = len(ch.cids) + len(ch.removed_cids)
            lseq = self.lexical.seq()
            lch = self.store.changes_since(lseq, chunks=False)
            if lch.docs or lch.removed_dnos or lseq != lch.seq:
                self.lexical.apply(lch.removed_dnos, lch.docs, lch.seq)
            counts = self.store.counts()
            if self.dense.ntotal != counts["chunks"]:
                log.warning(
                    "%s: FAISS has %d vectors, SQLite %d chunks: rebuilding",
                    self.name,
                    self.dense.ntotal,
                    counts["chunks"],
                )
                self._rebuild_dense()
            if self.lexical.count() != counts["documents"]:
                log.warning(
                    "%s: BM25 has %d docs, SQLite %d: rebuilding",
                    self.name,
                    self.lexical.count(),
                    counts["documents"],
                )
                self._rebuild_lexical()
            self.ready = True
        info = {
            "collection": self.name,
            "replayed_dense": replayed_dense,
            "replayed_lexical": len(lch.docs),
            "seconds": round(time.perf_counter() - t0, 3),
            **counts,
        }
        log.info("opened collection %s", info)
        return info

    def _rebuild_lexical(self) -> None:
        self.lexical.reset()
        ch = self.store.changes_since(0, chunks=False)
        self.lexical.apply([], ch.docs, ch.seq)

    # ---- writes -------------------------------------------------------------------------------
    def write(self, upserts: Sequence[PreparedDoc], delete_ids: Sequence[str] = ()) -> Changes:
        """Commit to SQLite (one transaction), then publish to FAISS and BM25 before readers resume."""
        with self.lock.write():
            ch = self.store.write(upserts, delete_ids)
            try:
                self._apply(ch)
            except Exception:
                # SQLite has the batch (acknowledged truth): bring the derived indexes back in line with it
                log.exception(
                    "%s: applying seq %d to the indexes failed; rebuilding from SQLite", self.name, ch.seq
                )
                self._rebuild_dense()
                self._rebuild_lexical()
            if self._wants_fit():
                try:
                    self._fit_locked()
                except Exception:  # the batch is committed; the collection keeps serving at full dims
                    log.exception("%s: rotation fit failed; serving at full dims", self.name)
            self._since_snapshot += len(ch.cids) + len(ch.removed_cids)
            due = time.monotonic() - self._last_snapshot > self.snapshot_interval_s and self._since_snapshot
            if self._since_snapshot >= self.snapshot_every or due:
                self._snapshot(ch.seq)
        return ch

    def _apply(self, ch: Changes) -> None:
        assert ch.vectors is not None
        rebuild = self._dense_remove(np.asarray(ch.removed_cids, np.int64))
        rebuild = self._dense_add(np.asarray(ch.cids, np.int64), ch.vectors) or rebuild
        if rebuild:
            self._rebuild_dense()
        self.lexical.apply(ch.removed_dnos, ch.docs, ch.seq)

    def _snapshot(self, seq: int) -> None:
        funnel = self.funnel
        self.dense.save(self.root, seq, self._tag(), funnel.save if funnel is not None else None)
        self._snapshot_seq = seq
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self.store.prune_tombstones(min(seq, self.lexical.seq()))

    def _after_install(self) -> None:
        self._snapshot(self.store.seq())

    def snapshot(self) -> None:
        """Write a dense snapshot now (e.g. at shutdown) if anything changed since the last one."""
        with self.lock.write():
            seq = self.store.seq()
            if seq != self._snapshot_seq:
                self._snapshot(seq)

    # ---- reads --------------------------------------------------------------------------------
    def _filter(self, filters: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray] | None:
        if not filters:
            return None
        where, params = compile_filters(filters, "d.metadata")
        return self.store.filtered(where, params)

    def search_dense(
        self,
        vector: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        per_chunk: bool = False,
        ef_search: int | None = None,
        texts: int | None = None,
        funnel_m: int | None = None,
        funnel_dims: int | None = None,
    ) -> list[Hit]:
        """Top-k by vector similarity; per document (best chunk) unless ``per_chunk``.

        ``texts``: how many leading hits carry title/text/metadata (None: all); the others carry ids,
        scores and chunk numbers only, which keeps reading 100 candidates' documents off the hot path.
        ``funnel_m``: on a rotated collection queried with a full-dim vector, how many shortlist candidates
        are re-scored at full dims (None: 100; 0: none); ``funnel_dims``: shortlist on fewer leading dims.
        """
        q = np.asarray(vector, np.float32).reshape(-1)
        with self.lock.read():
            allowed = self._filter(filters)
            total = self.dense.ntotal if allowed is None else len(allowed[0])
            if total == 0:
                return []
            n = k if per_chunk else min(total, 2 * k)
            while True:
                cids, scores = self._dense_candidates(q, n, allowed, ef_search, funnel_m, funnel_dims)
                hits = self._chunk_hits(cids, scores, k, per_chunk, texts)
                if len(hits) >= k or n >= total:
                    return hits
                n = min(total, n * 4)

    def _dense_candidates(
        self,
        q: np.ndarray,
        n: int,
        allowed: tuple[np.ndarray, np.ndarray] | None,
        ef_search: int | None,
        funnel_m: int | None = None,
        funnel_dims: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        rescorer = self.store.embeddings
        if self.rotation is not None and q.shape[0] != self.dense.dims:  # full-dim query: funnel search
            if allowed is not None and len(allowed[0]) <= EXACT_SUBSET_MAX:
                return self.dense.exact_scores(q, allowed[0], rescorer, n)  # full-dim, from SQLite
            subset = None if allowed is None else allowed[0]
            cids, scores = self._funnel_candidates(q, n, subset, ef_search, funnel_m, funnel_dims)
            if subset is not None and len(cids) < min(n, len(subset)):
                return self.dense.exact_scores(q, subset, rescorer, n)
            return cids, scores
        if self.manifest.rotate and q.shape[0] != self.manifest.store_dims:
            rescorer = self._rotated_rescorer  # a d-dim query in rotated coordinates
        if allowed is None:
            return self.dense.search(q, n, None, rescorer, ef_search)
        subset = allowed[0]
        if not self.dense.exact and len(subset) <= EXACT_SUBSET_MAX:
            return self.dense.exact_scores(q, subset, rescorer, n)
        cids, scores = self.dense.search(q, n, subset, rescorer, ef_search)
        if len(cids) < min(n, len(subset)):  # approximate index starved by the filter: exact fallback
            return self.dense.exact_scores(q, subset, rescorer, n)
        return cids, scores

    def _chunk_hits(
        self, cids: np.ndarray, scores: np.ndarray, k: int, per_chunk: bool, texts: int | None = None
    ) -> list[Hit]:
        rows = self.store.chunk_rows([int(c) for c in cids], with_text=texts is None)
        picked: list[tuple[dict[str, Any], float]] = []
        seen: set[int] = set()
        for cid, score in zip(cids, scores, strict=True):
            row = rows.get(int(cid))
            if row is None or (not per_chunk and row["dno"] in seen):
                continue
            seen.add(row["dno"])
            picked.append((row, float(score)))
            if len(picked) >= k:
                break
        if texts:  # the leading hits' documents, read only for them
            docs = self.store.doc_rows([r["dno"] for r, _ in picked[:texts]])
            for r, _ in picked[:texts]:
                if (d := docs.get(r["dno"])) is not None:
                    r.update(title=d["title"], text=d["text"], metadata=d["metadata"])
        return [
            Hit(
                r["id"],
                s,
                r["title"],
                r["text"][r["start"] : r["end"]] if per_chunk else r["text"],
                r["metadata"],
                r["chunk"],
            )
            for r, s in picked
        ]

    def search_lexical(
        self,
        query: str,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
        stats: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Top-k documents by BM25 (one per document; ``texts``: how many leading hits carry their text).

        ``stats``: collection-wide term statistics (sharded collections), see ``LexicalIndex.search``."""
        with self.lock.read():
            allowed = self._filter(filters)
            dnos, scores = self.lexical.search(query, k, None if allowed is None else allowed[1], stats)
            keys = [int(d) for d in dnos]
            rows = self.store.doc_rows(keys, with_text=texts is None)
            if texts:
                rows.update(self.store.doc_rows([d for d in keys if d in rows][:texts]))
        return [
            Hit(r["id"], float(s), r["title"], r["text"], r["metadata"], 0)
            for d, s in zip(dnos, scores, strict=True)
            if (r := rows.get(int(d))) is not None
        ]

    def term_stats(self, query: str) -> dict[str, Any]:
        """This shard's BM25 statistics of the query's terms (``num_docs``, ``df``)."""
        with self.lock.read():
            return self.lexical.term_stats(query)

    def get_documents(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored documents in ``ids`` order."""
        with self.lock.read():
            return self.store.get_docs(ids)

    def stats(self) -> dict[str, Any]:
        """Counts of each store (they agree outside a write) and the dense structure in use."""
        with self.lock.read():
            counts = self.store.counts()
            return {
                **counts,
                "dense_vectors": self.dense.ntotal,
                "lexical_documents": self.lexical.count(),
                "dense_index": self.dense.kind + (f"+{self.dense.code}" if self.dense.code else ""),
                "seq": self.store.seq(),
                "snapshot_seq": self._snapshot_seq,
                "lexical_seq": self.lexical.seq(),
            }

    def search_defaults(self) -> dict[str, Any] | None:
        """``search_defaults.json`` written by ``dowse eval`` (None if absent or unreadable)."""
        path = self.root / SEARCH_DEFAULTS
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: ignoring unreadable %s (%s)", self.name, path, exc)
            return None
        return doc if isinstance(doc, dict) else None

    def put_search_defaults(self, doc: dict[str, Any]) -> Path:
        """Replace ``search_defaults.json`` atomically (tmp + rename); returns its path."""
        path = self.root / SEARCH_DEFAULTS
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        """Snapshot and release files."""
        if self.ready:
            try:
                self.snapshot()
            except Exception:
                log.exception("%s: snapshot at close failed (SQLite replay covers it)", self.name)
        self.lexical.close()
        self.store.close()

    def destroy(self) -> None:
        """Close and delete everything on disk."""
        with self.lock.write():
            self.ready = False
            self.lexical.close()
            self.store.close()
            shutil.rmtree(self.root, ignore_errors=True)
