"""Funnel re-scoring store: every chunk's full-dim (rotated) vector as SQ8 codes (1 byte per dim).

A rotated collection's FAISS index holds only the leading ``d`` coordinates; search takes a shortlist there
and re-scores its top ``M`` with these full-dim vectors (the Matryoshka paper's adaptive retrieval).
Per-dimension min / scale are trained on the rotation's fit sample (rotated coordinates have very different
ranges, so a per-dimension scale keeps the small trailing coordinates' resolution). Derived data: saved next
to the dense snapshot, rebuilt from SQLite when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class FunnelStore:
    """cid -> uint8 codes of a full-dim vector; not thread-safe (the collection's RW lock guards it).

    Rows are kept sorted by cid (SQLite cids only grow, so appends keep the order; anything else re-sorts),
    looked up with ``searchsorted``: 8 bytes of id + 1 byte of liveness per vector, no Python dict.
    Removed rows are flagged dead and compacted away once they pass 20% of the rows.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vmin = np.zeros(dim, np.float32)
        self.scale = np.ones(dim, np.float32)
        self.codes = np.zeros((0, dim), np.uint8)
        self.ids = np.zeros(0, np.int64)
        self.alive = np.zeros(0, bool)
        self._n = 0  # rows used (live + dead), sorted by id
        self._live = 0

    def train(self, vecs: np.ndarray) -> None:
        """Per-dimension range from a sample (values outside it are clipped when encoded)."""
        x = np.asarray(vecs, np.float32)
        lo, hi = x.min(axis=0), x.max(axis=0)
        self.vmin = lo.astype(np.float32)
        self.scale = np.maximum((hi - lo) / 255.0, 1e-12).astype(np.float32)

    def encode(self, vecs: np.ndarray) -> np.ndarray:
        """float32 rows -> uint8 codes."""
        q = np.rint((np.asarray(vecs, np.float32) - self.vmin) / self.scale)
        return np.clip(q, 0, 255).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint8 codes -> float32 rows (bin centres are the code values: max error scale / 2 per dim)."""
        return codes.astype(np.float32) * self.scale + self.vmin

    def __len__(self) -> int:
        return self._live

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (-1 when absent or dead)."""
        ids = np.asarray(ids, np.int64)
        if self._n == 0 or len(ids) == 0:
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids[: self._n], ids), self._n - 1)
        ok = (self.ids[pos] == ids) & self.alive[pos]
        return np.where(ok, pos, -1)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Store (or replace) the vectors of ``ids``."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        self.remove(ids)
        order = np.argsort(ids, kind="stable")
        ids, codes = ids[order], self.encode(np.asarray(vecs)[order])
        n, k = self._n, len(ids)
        if n + k > len(self.codes):
            cap = max(1024, 2 * len(self.codes), n + k)
            self.codes = np.concatenate([self.codes[:n], np.zeros((cap - n, self.dim), np.uint8)])
            self.ids = np.concatenate([self.ids[:n], np.zeros(cap - n, np.int64)])
            self.alive = np.concatenate([self.alive[:n], np.zeros(cap - n, bool)])
        in_order = n == 0 or ids[0] > self.ids[n - 1]
        self.codes[n : n + k], self.ids[n : n + k], self.alive[n : n + k] = codes, ids, True
        self._n, self._live = n + k, self._live + k
        if not in_order:  # an id below the largest one: restore the order (rare: cids only grow)
            perm = np.argsort(self.ids[: self._n], kind="stable")
            self.codes[: self._n] = self.codes[perm]
            self.ids[: self._n] = self.ids[perm]
            self.alive[: self._n] = self.alive[perm]

    def remove(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (absent ones ignored); compacts once dead rows pass 20%."""
        rows = self._rows(ids)
        rows = rows[rows >= 0]
        if len(rows) == 0:
            return
        self.alive[rows] = False
        self._live -= len(np.unique(rows))
        if self._n - self._live > 0.2 * self._n:
            keep = np.flatnonzero(self.alive[: self._n])
            self.codes, self.ids, self.alive = self.codes[keep], self.ids[keep], self.alive[keep]
            self._n = len(keep)

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids present, their decoded float32 full-dim vectors)."""
        ids = np.asarray(ids, np.int64)
        rows = self._rows(ids)
        keep = rows >= 0
        return ids[keep], self.decode(self.codes[rows[keep]])

    def inner_products(self, ids: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids present, q . decoded vector) without materialising the decoded vectors."""
        ids = np.asarray(ids, np.int64)
        rows = self._rows(ids)
        keep = rows >= 0
        qf = np.asarray(q, np.float32)
        scores = self.codes[rows[keep]].astype(np.float32) @ (qf * self.scale) + float(qf @ self.vmin)
        return ids[keep], scores

    def nbytes_per_vector(self) -> float:
        """Bytes held per live vector: codes + id + liveness flag (dead rows not yet compacted excluded)."""
        return float(self.dim + 8 + 1)

    # ---- persistence (inside the dense snapshot directory, which is fsynced and renamed as a whole) ----
    def save(self, directory: Path) -> None:
        """Write ``funnel.npz`` into ``directory`` (fsynced; the caller renames the directory)."""
        live = self.alive[: self._n]
        with open(directory / "funnel.npz", "wb") as fh:
            np.savez(
                fh,
                vmin=self.vmin,
                scale=self.scale,
                ids=self.ids[: self._n][live],
                codes=self.codes[: self._n][live],
            )
            fh.flush()
            os.fsync(fh.fileno())

    @classmethod
    def load(cls, directory: Path) -> FunnelStore:
        """Read ``funnel.npz`` written by :meth:`save`."""
        with np.load(directory / "funnel.npz") as z:
            store = cls(int(z["vmin"].shape[0]))
            store.vmin, store.scale = z["vmin"].copy(), z["scale"].copy()
            store.codes, store.ids = z["codes"].copy(), z["ids"].copy()
        store.alive = np.ones(len(store.ids), bool)
        store._n = store._live = len(store.ids)
        return store
