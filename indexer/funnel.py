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
    """cid -> uint8 codes of a full-dim vector; not thread-safe (the collection's RW lock guards it)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vmin = np.zeros(dim, np.float32)
        self.scale = np.ones(dim, np.float32)
        self.codes = np.zeros((0, dim), np.uint8)
        self.ids = np.zeros(0, np.int64)
        self._row: dict[int, int] = {}
        self._free: list[int] = []
        self._n = 0  # rows used (live + free)

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
        return len(self._row)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Store (or replace) the vectors of ``ids``."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        self.remove(ids)
        codes = self.encode(vecs)
        need = len(ids) - len(self._free)
        if self._n + max(0, need) > len(self.codes):
            cap = max(1024, 2 * len(self.codes), self._n + need)
            grown = np.zeros((cap, self.dim), np.uint8)
            grown[: self._n] = self.codes[: self._n]
            gids = np.full(cap, -1, np.int64)
            gids[: self._n] = self.ids[: self._n]
            self.codes, self.ids = grown, gids
        for i, cid in enumerate(ids):
            row = self._free.pop() if self._free else self._take()
            self.codes[row] = codes[i]
            self.ids[row] = cid
            self._row[int(cid)] = row

    def _take(self) -> int:
        self._n += 1
        return self._n - 1

    def remove(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (absent ones ignored)."""
        for cid in np.asarray(ids, np.int64):
            row = self._row.pop(int(cid), None)
            if row is not None:
                self.ids[row] = -1
                self._free.append(row)

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids present, their decoded float32 full-dim vectors)."""
        ids = np.asarray(ids, np.int64)
        get = self._row.get
        rows = np.fromiter((get(c, -1) for c in ids.tolist()), np.int64, len(ids))
        keep = rows >= 0
        return ids[keep], self.decode(self.codes[rows[keep]])

    def inner_products(self, ids: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids present, q . decoded vector) without materialising the decoded vectors."""
        ids = np.asarray(ids, np.int64)
        get = self._row.get
        rows = np.fromiter((get(c, -1) for c in ids.tolist()), np.int64, len(ids))
        keep = rows >= 0
        qf = np.asarray(q, np.float32)
        scores = self.codes[rows[keep]].astype(np.float32) @ (qf * self.scale) + float(qf @ self.vmin)
        return ids[keep], scores

    def nbytes_per_vector(self) -> float:
        """Bytes per live vector held in memory (codes + id), excluding the id -> row dict."""
        return float(self.dim + 8)

    # ---- persistence (inside the dense snapshot directory, which is fsynced and renamed as a whole) ----
    def save(self, directory: Path) -> None:
        """Write ``funnel.npz`` into ``directory`` (fsynced; the caller renames the directory)."""
        live = self.ids[: self._n] >= 0
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
        store._n = len(store.ids)
        store._row = {int(c): i for i, c in enumerate(store.ids)}
        return store
