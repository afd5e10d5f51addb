"""FAISS vector index with stable ids (the SQLite chunk ids): flat, HNSW or IVF-PQ, optional SQ8 / binary
codes with full-precision rescoring. Derived data: snapshotted atomically, rebuilt or replayed from SQLite."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from indexer.manifest import IndexSpec, fsync_dir

log = logging.getLogger(__name__)
faiss: Any = _faiss  # the bundled type stubs lag the SWIG API (SearchParametersHNSW, sel=...)

# cids -> (cids found, float32 vectors): full-precision vectors for rescoring compressed candidates
Rescorer = Callable[[Any], tuple[np.ndarray, np.ndarray]]
SQ8_MIN_TRAIN = 1_000  # below this an SQ8 collection keeps exact float vectors (train on real spread)
IVF_MIN_PER_LIST = 39  # FAISS' own minimum of training points per centroid
AUTO_RESCORE = {"sq8": 4, "binary": 10, "ivf-pq": 8}
DEAD_REBUILD_FRACTION = 0.2  # HNSW cannot delete: rebuild once tombstones reach this share


class DenseIndex:
    """One collection's FAISS index; not thread-safe (the collection's RW lock guards it)."""

    def __init__(self, dims: int, metric: str, spec: IndexSpec, hnsw_threshold: int = 50_000) -> None:
        self.dims = dims
        self.metric = metric
        self.spec = spec
        self.hnsw_threshold = hnsw_threshold
        self._faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self._ids: set[int] = set()
        self._dead: set[int] = set()
        self.kind = "flat"
        self.code: str | None = None
        self.index: Any = self._make("flat", None, 0)

    # ---- construction -------------------------------------------------------------------------
    def _target(self, n: int) -> tuple[str, str | None]:
        """(structure, code) the spec asks for at ``n`` vectors."""
        kind = self.spec.type
        if kind == "auto":
            kind = "hnsw" if n > self.hnsw_threshold else "flat"
        if kind == "ivf-pq":
            nlist = self._nlist(n)
            return ("ivf-pq", None) if n >= IVF_MIN_PER_LIST * nlist and n >= 256 * 4 else ("flat", None)
        code = self.spec.code
        if code == "sq8" and n < SQ8_MIN_TRAIN:
            code = None
        return kind, code

    def _nlist(self, n: int) -> int:
        return max(1, min(self.spec.nlist, n // IVF_MIN_PER_LIST))

    def _make(self, kind: str, code: str | None, n: int) -> Any:
        d, m = self.dims, self._faiss_metric
        if code == "binary":
            inner: Any = faiss.IndexBinaryHNSW(d, self.spec.M) if kind == "hnsw" else faiss.IndexBinaryFlat(d)
            if kind == "hnsw":
                inner.hnsw.efConstruction = self.spec.ef_construction
            return faiss.IndexBinaryIDMap2(inner)
        if kind == "hnsw":
            if code == "sq8":
                inner = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, self.spec.M, m)
            else:
                inner = faiss.IndexHNSWFlat(d, self.spec.M, m)
            inner.hnsw.efConstruction = self.spec.ef_construction
        elif kind == "ivf-pq":
            quantizer = faiss.IndexFlat(d, m)
            pq_m = self.spec.pq_m if d % self.spec.pq_m == 0 else _divisor(d, self.spec.pq_m)
            inner = faiss.IndexIVFPQ(quantizer, d, self._nlist(n), pq_m, 8, m)
            self._quantizer = quantizer  # keep the Python object alive with the index
        elif code == "sq8":
            inner = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, m)
        else:
            inner = faiss.IndexFlat(d, m)
        return faiss.IndexIDMap2(inner)

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]], n_hint: int) -> None:
        """Build a fresh index from all (ids, vectors) batches (trains codes / IVF on them)."""
        ids_parts, vec_parts = [], []
        for ids, vecs in batches:
            ids_parts.append(np.asarray(ids, np.int64))
            vec_parts.append(np.asarray(vecs, np.float32))
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
        vecs = np.concatenate(vec_parts) if vec_parts else np.zeros((0, self.dims), np.float32)
        kind, code = self._target(max(n_hint, len(ids)))
        index = self._make(kind, code, len(ids))
        if not index.is_trained and len(ids):
            index.train(vecs)
        self.index, self.kind, self.code = index, kind, code
        self._ids, self._dead = set(), set()
        if len(ids):
            self._add_raw(ids, vecs)
        log.info("dense index rebuilt: %s%s, %d vectors", kind, f"+{code}" if code else "", len(ids))

    # ---- updates ------------------------------------------------------------------------------
    def _encode(self, vecs: np.ndarray) -> np.ndarray:
        if self.code == "binary":
            return np.packbits(vecs > 0, axis=1)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def _add_raw(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        self.index.add_with_ids(self._encode(vecs), np.ascontiguousarray(ids, dtype=np.int64))
        self._ids.update(int(i) for i in ids)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> bool:
        """Add vectors under their ids (ids already present are replaced); True = caller should rebuild."""
        if len(ids) == 0:
            return False
        present = [int(i) for i in ids if int(i) in self._ids]
        if present:
            self.remove(np.asarray(present, np.int64))
        self._add_raw(np.asarray(ids, np.int64), vecs)
        return self.needs_rebuild()

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ids (absent ones ignored); True = caller should rebuild."""
        live = np.asarray([int(i) for i in ids if int(i) in self._ids], np.int64)
        if len(live) == 0:
            return False
        if self.kind == "hnsw":
            self._dead.update(int(i) for i in live)  # HNSW graphs cannot delete: tombstone + later rebuild
        else:
            self.index.remove_ids(live)
        self._ids.difference_update(int(i) for i in live)
        return self.needs_rebuild()

    def needs_rebuild(self) -> bool:
        """The structure the spec wants at this size differs from the built one, or too many tombstones."""
        if self._target(len(self._ids)) != (self.kind, self.code):
            return True
        return len(self._dead) > DEAD_REBUILD_FRACTION * max(1, len(self._ids) + len(self._dead))

    @property
    def ntotal(self) -> int:
        """Live vectors (tombstoned ones excluded)."""
        return len(self._ids)

    def contains(self, cid: int) -> bool:
        """Whether a chunk id is live in the index."""
        return cid in self._ids

    # ---- search -------------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """Flat float index: scores are exact, selector searches return every match."""
        return self.kind == "flat" and self.code is None

    def rescore_factor(self) -> int:
        """Candidates per result fetched before full-precision rescoring (1 = no rescoring)."""
        key = self.code or ("ivf-pq" if self.kind == "ivf-pq" else None)
        if key is None:
            return 1
        return self.spec.rescore or AUTO_RESCORE[key]

    def search(
        self,
        q: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        rescorer: Rescorer | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (ids, scores) for one query (higher = closer); ``allowed`` restricts the ids."""
        if self.ntotal == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        factor = self.rescore_factor() if rescorer is not None else 1
        n_cand = min(self.ntotal, k * factor)
        params, keep = self._params(allowed, n_cand, ef_search)
        q2 = self._encode(np.asarray(q, np.float32).reshape(1, -1))
        dist, ids = (
            self.index.search(q2, n_cand, params=params)
            if params is not None
            else self.index.search(q2, n_cand)
        )
        del keep
        mask = ids[0] >= 0
        ids, dist = ids[0][mask], dist[0][mask]
        if factor > 1 and rescorer is not None and len(ids):
            return self.exact_scores(q, ids, rescorer, k)
        scores = -dist.astype(np.float32) if (self.code == "binary" or self.metric == "l2") else dist
        return ids.astype(np.int64), scores.astype(np.float32)

    def exact_scores(
        self, q: np.ndarray, ids: np.ndarray, rescorer: Rescorer, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Full-precision top-k among ``ids`` using vectors from ``rescorer``."""
        got, vecs = rescorer(ids)
        if len(got) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        qv = np.asarray(q, np.float32).reshape(-1)
        scores = -((vecs - qv) ** 2).sum(1) if self.metric == "l2" else vecs @ qv
        order = np.argsort(-scores, kind="stable")[:k]
        return got[order], scores[order].astype(np.float32)

    def _params(
        self, allowed: np.ndarray | None, n_cand: int, ef_search: int | None
    ) -> tuple[Any, list[Any]]:
        keep: list[Any] = []
        sel: Any = None
        if allowed is not None:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            keep.append(sel)
        if self._dead:
            dead = faiss.IDSelectorBatch(np.fromiter(self._dead, np.int64, len(self._dead)))
            notdead = faiss.IDSelectorNot(dead)
            keep += [dead, notdead]
            sel = notdead if sel is None else faiss.IDSelectorAnd(sel, notdead)
            keep.append(sel)
        if self.kind == "hnsw" and self.code != "binary":
            ef = max(ef_search or self.spec.ef_search, n_cand)
            return faiss.SearchParametersHNSW(efSearch=ef, sel=sel) if sel is not None else (
                faiss.SearchParametersHNSW(efSearch=ef)
            ), keep
        if self.kind == "hnsw" and self.code == "binary":
            self.index.index.hnsw.efSearch = max(ef_search or self.spec.ef_search, n_cand)
        if self.kind == "ivf-pq":
            ivf = (
                faiss.SearchParametersIVF(nprobe=self.spec.nprobe, sel=sel)
                if sel is not None
                else (faiss.SearchParametersIVF(nprobe=self.spec.nprobe))
            )
            return ivf, keep
        return (faiss.SearchParameters(sel=sel) if sel is not None else None), keep

    def bytes_per_vector(self) -> float:
        """Serialized index size divided by vector count (codes + graph/list overhead + id map)."""
        if self.ntotal == 0:
            return 0.0
        ser = (
            faiss.serialize_index_binary(self.index)
            if self.code == "binary"
            else faiss.serialize_index(self.index)
        )
        return float(len(ser)) / self.ntotal

    # ---- persistence --------------------------------------------------------------------------
    def save(self, root: Path, seq: int, tag: int = 0, extra: Callable[[Path], None] | None = None) -> Path:
        """Write ``root/dense-<seq>/`` atomically (tmp dir + fsync + rename); older snapshots removed.

        ``tag``: the rotation version the vectors are in (a snapshot of another version is not loaded);
        ``extra``: writes more files (the funnel store) into the snapshot directory before it is renamed.
        """
        tmp = root / f".dense-{seq}.tmp"
        final = root / f"dense-{seq}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        path = tmp / "index.faiss"
        if self.code == "binary":
            faiss.write_index_binary(self.index, str(path))
        else:
            faiss.write_index(self.index, str(path))
        meta = {"seq": seq, "kind": self.kind, "code": self.code, "dead": sorted(self._dead), "tag": tag}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if extra is not None:
            extra(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(root)
        for old in root.glob("dense-*"):
            if old != final and _snap_seq(old) is not None and (_snap_seq(old) or 0) < seq:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load_latest(self, root: Path, tag: int = 0) -> int | None:
        """Load the newest readable snapshot of rotation ``tag``; its seq, or None (caller rebuilds)."""
        for tmp in root.glob(".dense-*.tmp"):  # a snapshot interrupted by a crash
            shutil.rmtree(tmp, ignore_errors=True)
        snaps = sorted(
            (p for p in root.glob("dense-*") if _snap_seq(p) is not None),
            key=lambda p: _snap_seq(p) or 0,
            reverse=True,
        )
        for snap in snaps:
            try:
                meta = json.loads((snap / "meta.json").read_text())
                if int(meta.get("tag", 0)) != tag:
                    log.info(
                        "dense snapshot %s is of rotation %s, not %d: rebuilding", snap, meta.get("tag"), tag
                    )
                    continue
                path = str(snap / "index.faiss")
                index = faiss.read_index_binary(path) if meta["code"] == "binary" else faiss.read_index(path)
                self.index, self.kind, self.code = index, meta["kind"], meta["code"]
                self._dead = {int(i) for i in meta["dead"]}
                id_map = faiss.vector_to_array(index.id_map).astype(np.int64)
                self._ids = {int(i) for i in id_map} - self._dead
                return int(meta["seq"])
            except Exception:
                log.exception("dense snapshot %s unreadable; trying an older one", snap)
        return None


def _snap_seq(path: Path) -> int | None:
    name = path.name
    if not name.startswith("dense-"):
        return None
    try:
        return int(name[len("dense-") :])
    except ValueError:
        return None


def _divisor(d: int, want: int) -> int:
    """Largest divisor of ``d`` not above ``want`` (PQ needs dims % m == 0)."""
    return max(m for m in range(1, min(d, want) + 1) if d % m == 0)
