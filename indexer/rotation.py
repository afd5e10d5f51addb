"""Per-collection orthogonal PCA rotation for truncated ("Matryoshka") indexes of non-Matryoshka models.

The packaged encoders were not trained with a Matryoshka loss, so their leading coordinates carry no more
information than the rest. Rotating every vector by the eigenvectors of the collection's own document
embeddings (largest variance first) moves the information into the leading coordinates; truncating after
the rotation keeps far more quality. The rotation is orthogonal, so full-dim scores are unchanged.

Files: ``rotation-<version>.npz`` in the collection directory, written tmp + fsync + rename; the manifest's
``rotation_version`` says which one serves (0 = none yet: the collection serves at full dims).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.manifest import fsync_dir

log = logging.getLogger(__name__)

ROTATION_RE = re.compile(r"^rotation-(\d+)\.npz$")
MIN_DOCS_PER_DIM = 2  # a fit needs >= 2 * dims chunks (auto-fit also waits for rotation_min_chunks)
# Centred PCA (covariance) vs uncentred (second moment). Measured on SciFact with MiniLM (bench/dims.py,
# fit on 2,000 chunks): nDCG@10 0.5724 vs 0.5703 at 64 dims, 0.6464 vs 0.6463 at 128: centred.
CENTRED = True


@dataclass
class Rotation:
    """An orthogonal ``dim x dim`` matrix: ``rotated = vectors @ matrix`` (columns = principal axes)."""

    version: int
    matrix: np.ndarray  # float32 (dim, dim), orthonormal columns sorted by decreasing variance
    explained: np.ndarray  # float32 (dim,), variance along each axis (for info / the bench)
    n_fit: int
    centred: bool

    def apply(self, vecs: np.ndarray) -> np.ndarray:
        """Rotate rows of ``vecs`` (full model dims) into the principal basis."""
        return np.asarray(vecs, np.float32) @ self.matrix

    def truncate(self, vecs: np.ndarray, dims: int, normalize: bool) -> np.ndarray:
        """Rotate, keep the leading ``dims`` coordinates, re-normalise (cosine / ip collections)."""
        out = np.ascontiguousarray(self.apply(vecs)[:, :dims])
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return out


def fit(vecs: np.ndarray, version: int, centred: bool = CENTRED) -> Rotation:
    """PCA of ``vecs`` (n x dim, full model dims): eigenvectors of the (centred) second-moment matrix."""
    x = np.asarray(vecs, np.float64)
    if centred:
        x = x - x.mean(axis=0, keepdims=True)
    cov = x.T @ x / max(1, len(x) - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals, kind="stable")
    # eigh returns an orthonormal basis in float64; the float32 copy is orthonormal to ~1e-7
    matrix = np.ascontiguousarray(evecs[:, order], dtype=np.float32)
    return Rotation(version, matrix, evals[order].astype(np.float32), len(x), centred)


def path_for(root: Path, version: int) -> Path:
    """The file of rotation ``version`` under a collection directory."""
    return root / f"rotation-{version}.npz"


def save(root: Path, rot: Rotation) -> Path:
    """Write ``rotation-<version>.npz`` atomically: tmp file, fsync, rename, fsync the directory."""
    final = path_for(root, rot.version)
    tmp = root / f".rotation-{rot.version}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            matrix=rot.matrix,
            explained=rot.explained,
            meta=np.asarray([rot.version, rot.n_fit, int(rot.centred)], np.int64),
        )
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(root)
    return final


def load(root: Path, version: int) -> Rotation:
    """Read rotation ``version`` (raises if missing or torn: the manifest only names complete files)."""
    with np.load(path_for(root, version)) as z:
        meta = z["meta"]
        return Rotation(int(meta[0]), z["matrix"].copy(), z["explained"].copy(), int(meta[1]), bool(meta[2]))


def cleanup(root: Path, keep: int) -> None:
    """Remove rotation files other than ``keep`` and temp files left by an interrupted fit."""
    for p in root.iterdir():
        m = ROTATION_RE.match(p.name)
        if (m and int(m.group(1)) != keep) or (p.name.startswith(".rotation-") and p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)
