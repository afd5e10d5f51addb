"""Rotated (Matryoshka-style) collections: rotation fit, atomic swap, funnel search (a Collection mixin).

A collection with ``manifest.rotate`` stores full-dim vectors in SQLite. Until it holds enough chunks it
indexes them at full dims; then it fits a PCA rotation (:mod:`indexer.rotation`), indexes the rotated leading
``dims`` coordinates in FAISS and keeps the rotated full-dim vectors as SQ8 (:mod:`indexer.funnel`) to
re-score the top ``funnel_m`` of each shortlist at full dims.

Swap protocol (a crash at any point leaves a consistent collection):
1. fit, write ``rotation-<v+1>.npz`` (tmp + fsync + rename): a crash leaves an unreferenced file, removed
   at the next open;
2. build the new FAISS index and funnel store in memory (the old ones keep serving until 3);
3. write the manifest with ``rotation_version = v+1`` (atomic): the commit point;
4. swap the in-memory objects, snapshot (tagged v+1), remove the old rotation file. A crash between 3 and
   the snapshot finds only a v-tagged snapshot at open and rebuilds from SQLite in v+1.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer import rotation as rotation_files
from indexer.dense import DenseIndex
from indexer.funnel import FunnelStore
from indexer.manifest import Manifest
from indexer.rotation import MIN_DOCS_PER_DIM, Rotation, fit
from indexer.rwlock import RWLock
from indexer.store import DocStore

log = logging.getLogger(__name__)

DEFAULT_FUNNEL_M = 100  # full-dim re-scoring of the shortlist's top 100 (the acceptance setting)
MAX_FUNNEL_M = 10_000
FIT_SAMPLE_MAX = 200_000  # chunks a fit reads at most (a dim x dim covariance converges long before)


class RotatedMixin:
    """Rotation state and funnel search for :class:`indexer.collection.Collection`."""

    root: Path
    name: str
    manifest: Manifest
    lock: RWLock
    store: DocStore
    dense: DenseIndex
    hnsw_threshold: int
    rotation_min_chunks: int
    refit_lock: threading.Lock
    rotation: Rotation | None
    funnel: FunnelStore | None

    # ---- state --------------------------------------------------------------------------------
    def _load_rotation(self) -> None:
        self.rotation, self.funnel = None, None
        if self.manifest.rotate and self.manifest.rotation_version:
            self.rotation = rotation_files.load(self.root, self.manifest.rotation_version)
        if self.manifest.rotate:
            rotation_files.cleanup(self.root, self.manifest.rotation_version)

    def _new_dense(self) -> DenseIndex:
        m = self.manifest
        dims = m.dims if self.rotation is not None else m.store_dims
        return DenseIndex(dims, m.metric, m.index, self.hnsw_threshold)

    def _tag(self) -> int:
        return self.rotation.version if self.rotation is not None else 0

    def _to_index(self, vecs: np.ndarray) -> np.ndarray:
        """Stored (full-dim) vectors -> what FAISS holds (rotated + truncated once a rotation serves)."""
        if self.rotation is None:
            return vecs
        return self.rotation.truncate(vecs, self.manifest.dims, self.manifest.metric != "l2")

    def _dense_add(self, cids: np.ndarray, vecs: np.ndarray) -> bool:
        if self.rotation is not None and self.funnel is not None and len(cids):
            self.funnel.add(cids, self.rotation.apply(vecs))
        return self.dense.add(cids, self._to_index(vecs))

    def _dense_remove(self, cids: np.ndarray) -> bool:
        if self.funnel is not None:
            self.funnel.remove(cids)
        return self.dense.remove(cids)

    def _rebuild_dense(self) -> None:
        """Rebuild FAISS (and the funnel store) from SQLite in the serving rotation."""
        n = self.store.counts()["chunks"]
        rot = self.rotation
        if rot is None:
            self.funnel = None
            self.dense.rebuild(self.store.iter_all_chunks(), n)
            return
        funnel = FunnelStore(self.manifest.model_dim)

        def batches() -> Any:
            for ids, vecs in self.store.iter_all_chunks():
                full = rot.apply(vecs)
                if len(funnel) == 0:
                    funnel.train(full)  # range of the first 50k chunks; later outliers are clipped
                funnel.add(ids, full)
                yield ids, self._to_index(vecs)

        self.dense.rebuild(batches(), n)
        self.funnel = funnel

    # ---- fit / swap ---------------------------------------------------------------------------
    def _wants_fit(self) -> bool:
        m = self.manifest
        if not m.rotate or m.rotation_version:
            return False
        return self.store.counts()["chunks"] >= self._fit_threshold()

    def _fit_threshold(self) -> int:
        return max(MIN_DOCS_PER_DIM * self.manifest.dims, self.rotation_min_chunks)

    def _sample(self) -> np.ndarray:
        parts, n = [], 0
        for _, vecs in self.store.iter_all_chunks():
            parts.append(vecs)
            n += len(vecs)
            if n >= FIT_SAMPLE_MAX:
                break
        return np.concatenate(parts)[:FIT_SAMPLE_MAX] if parts else np.zeros((0, self.manifest.model_dim))

    def _install(self, rot: Rotation) -> None:
        """Steps 2-4 of the swap; the write lock is held. On any error the old rotation keeps serving."""
        old = (self.rotation, self.dense, self.funnel)
        try:
            self.rotation = rot
            self.dense = self._new_dense()
            self._rebuild_dense()
            new_manifest = dataclasses.replace(self.manifest, rotation_version=rot.version)
            new_manifest.save(self.root / "manifest.json")  # the commit point
        except BaseException:
            self.rotation, self.dense, self.funnel = old
            raise
        self.manifest = new_manifest
        self._after_install()
        rotation_files.cleanup(self.root, rot.version)
        log.info(
            "%s: rotation %d serves (%d dims, fit on %d chunks)",
            self.name,
            rot.version,
            self.dense.dims,
            rot.n_fit,
        )

    def _after_install(self) -> None:
        """Snapshot in the new rotation (Collection implements it)."""
        raise NotImplementedError

    def _fit_locked(self) -> Rotation:
        """Fit on the stored vectors and swap, with the write lock already held."""
        rot = fit(self._sample(), self.manifest.rotation_version + 1)
        rotation_files.save(self.root, rot)
        self._install(rot)
        return rot

    def refit(self) -> dict[str, Any]:
        """Re-fit the rotation on the collection's current vectors and swap it in atomically."""
        if not self.manifest.rotate:
            raise ValueError("collection does not rotate")
        with self.refit_lock:
            return self._refit()

    def _refit(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        with self.lock.read():  # readers keep searching while the fit reads SQLite and runs the PCA
            version = self.manifest.rotation_version + 1
            sample = self._sample()
        if len(sample) < MIN_DOCS_PER_DIM * self.manifest.dims:
            raise LookupError(f"{len(sample)} chunks; a fit needs {MIN_DOCS_PER_DIM * self.manifest.dims}")
        rot = fit(sample, version)
        rotation_files.save(self.root, rot)
        with self.lock.write():
            if self.manifest.rotation_version + 1 != version:  # a concurrent fit won: refit from its state
                rot = dataclasses.replace(rot, version=self.manifest.rotation_version + 1)
                rotation_files.save(self.root, rot)
            self._install(rot)
        return {**self.rotation_info(), "seconds": round(time.perf_counter() - t0, 3)}

    def rotation_info(self) -> dict[str, Any]:
        """Serving rotation version, fit size, dims served by FAISS and the funnel's memory per vector."""
        rot = self.rotation
        return {
            "collection": self.name,
            "rotate": self.manifest.rotate,
            "version": rot.version if rot else 0,
            "n_fit": rot.n_fit if rot else 0,
            "centred": rot.centred if rot else None,
            "index_dims": self.dense.dims,
            "model_dim": self.manifest.model_dim,
            "fit_at_chunks": self._fit_threshold() if self.manifest.rotate else None,
            "funnel_vectors": len(self.funnel) if self.funnel is not None else 0,
            "funnel_bytes_per_vector": self.funnel.nbytes_per_vector() if self.funnel is not None else 0,
        }

    def rotate_vectors(self, vecs: np.ndarray, dims: int) -> np.ndarray:
        """Full-dim vectors -> the serving rotation's leading ``dims`` (re-normalised); raises if none."""
        with self.lock.read():
            rot = self.rotation
        if rot is None:
            raise LookupError("no rotation fitted yet")
        return rot.truncate(vecs, dims, True)

    # ---- funnel search ------------------------------------------------------------------------
    def _rotated_rescorer(self, cids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors of ``cids`` in the index's space (rotated + truncated), for d-dim queries."""
        got, vecs = self.store.embeddings(cids)
        return got, self._to_index(vecs)

    def _funnel_candidates(
        self,
        q: np.ndarray,
        n: int,
        allowed: np.ndarray | None,
        ef_search: int | None,
        funnel_m: int | None,
        funnel_dims: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Shortlist ``max(n, M)`` in the index's rotated dims, re-score them at full dims (SQ8).

        ``funnel_dims`` < ``dims``: the shortlist uses only the leading ``funnel_dims`` coordinates of the
        query (the rest zeroed: inner product over that prefix; cosine / ip collections only).
        """
        rot, funnel = self.rotation, self.funnel
        assert rot is not None and funnel is not None
        m = DEFAULT_FUNNEL_M if funnel_m is None else funnel_m
        d = self.manifest.dims
        fd = d if funnel_dims is None else min(funnel_dims, d)
        ql = np.zeros(d, np.float32)
        ql[:fd] = rot.truncate(q.reshape(1, -1), fd, self.manifest.metric != "l2")[0]
        cids, low = self.dense.search(ql, max(n, m), allowed, None, ef_search)
        if m == 0 or len(cids) == 0:  # funnel_m = 0: low-dim scores only
            return cids[:n], low[:n]
        qf = rot.apply(q.reshape(1, -1))[0]  # the whole shortlist, max(n, M) candidates, at full dims
        if self.manifest.metric == "l2":
            got, vecs = funnel.vectors(cids)
            full = -((vecs - qf) ** 2).sum(1)
        else:
            got, full = funnel.inner_products(cids, qf)
        order = np.argsort(-full, kind="stable")[:n]
        return got[order].astype(np.int64), full[order].astype(np.float32)
