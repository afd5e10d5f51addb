"""In-process vector index mirroring the cache entries held in Redis (derived state, rebuilt on start).

One group per (namespace, scope hash): scopes never see each other's entries. Small groups are searched
exactly with numpy; a group that grows past ``exact_max`` switches to a FAISS HNSW graph (inner product on
L2-normalised vectors = cosine). Deletes leave tombstones that searches skip; a group whose tombstones
exceed half its rows is compacted. Threshold fits belong to answer groups (entries that share
observations), held per (namespace, answer group id).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.errors import Conflict
from gateway.cache.policy import ThresholdFit

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MirrorEntry:
    """What a lookup needs about an entry without a Redis round trip."""

    id: str
    namespace: str
    scope: str
    response: str
    expires_at: float  # unix seconds; 0 = never
    ttl_s: int = 0  # the TTL it was stored with (for refresh on hit)
    group: str = ""  # answer group whose observations and fit decide for this entry ('' = its own id)

    @property
    def group_id(self) -> str:
        """The answer group id (the entry's own id when it has none)."""
        return self.group or self.id

    def expired(self, now: float) -> bool:
        """True once the entry's TTL has run out."""
        return self.expires_at > 0 and now >= self.expires_at


@dataclass(slots=True)
class Neighbour:
    """The nearest live entry of a lookup, and how close the best entry of another answer group is."""

    entry: MirrorEntry
    similarity: float
    # best similarity of a live entry whose answer group differs from ``entry``'s; None when the scope has
    # none. When every searched candidate shares ``entry``'s group it is the last candidate's similarity,
    # an upper bound on the true value (the cautious side for the contrast score).
    competitor: float | None = None


class VectorGroup:
    """Vectors of one (namespace, scope): exact search while small, HNSW when large."""

    def __init__(self, dims: int, exact_max: int = 4096, hnsw_m: int = 32, ef_search: int = 64) -> None:
        self.dims = dims
        self.exact_max = exact_max
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.vecs = np.zeros((64, dims), dtype=np.float32)
        self.row_ids: list[str | None] = []  # row -> entry id (None = tombstone)
        self.rows: dict[str, int] = {}
        self.hnsw: Any = None

    @property
    def live(self) -> int:
        """Number of live (non-deleted) vectors."""
        return len(self.rows)

    def add(self, entry_id: str, vec: np.ndarray) -> None:
        """Insert or replace the vector of ``entry_id``."""
        if vec.shape != (self.dims,):
            raise Conflict(
                f"embedding has {vec.shape[-1]} dims, this namespace holds {self.dims}-d vectors",
                field="prompt",
                limit=self.dims,
            )
        if entry_id in self.rows:
            self.remove(entry_id)
        row = len(self.row_ids)
        if row >= self.vecs.shape[0]:
            grown = np.zeros((self.vecs.shape[0] * 2, self.dims), dtype=np.float32)
            grown[:row] = self.vecs[:row]
            self.vecs = grown
        self.vecs[row] = vec
        self.row_ids.append(entry_id)
        self.rows[entry_id] = row
        if self.hnsw is not None:
            self.hnsw.add(vec[None, :])
        elif len(self.row_ids) > self.exact_max:
            self._build_hnsw()

    def remove(self, entry_id: str) -> bool:
        """Tombstone ``entry_id``; True if it was present."""
        row = self.rows.pop(entry_id, None)
        if row is None:
            return False
        self.row_ids[row] = None
        if len(self.row_ids) > 1024 and len(self.rows) < len(self.row_ids) // 2:
            self._compact()
        return True

    def _build_hnsw(self) -> None:
        import faiss

        index = faiss.IndexHNSWFlat(self.dims, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = self.ef_search
        n = len(self.row_ids)
        if n:
            index.add(self.vecs[:n])
        self.hnsw = index
        log.info("cache mirror group switched to HNSW at %d vectors", n)

    def _compact(self) -> None:
        live = [(eid, self.vecs[row]) for eid, row in self.rows.items()]
        self.vecs = np.zeros((max(64, 2 * len(live)), self.dims), dtype=np.float32)
        self.row_ids, self.rows, self.hnsw = [], {}, None
        for eid, vec in live:
            row = len(self.row_ids)
            self.vecs[row] = vec
            self.row_ids.append(eid)
            self.rows[eid] = row
        if len(self.row_ids) > self.exact_max:
            self._build_hnsw()

    def search(self, q: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Up to ``k`` live (entry id, cosine) pairs, best first."""
        n = len(self.row_ids)
        if n == 0 or not self.rows:
            return []
        if self.hnsw is None:
            sims = self.vecs[:n] @ q
            kk = min(n, k + (n - len(self.rows)))
            top = np.argpartition(-sims, kk - 1)[:kk] if kk < n else np.arange(n)
            top = top[np.argsort(-sims[top])]
            exact = [(self.row_ids[r], float(sims[r])) for r in top]
            return [(eid, s) for eid, s in exact if eid is not None][:k]
        kk = min(n, k + 8)
        while True:
            sims, idx = self.hnsw.search(q[None, :], kk)
            out: list[tuple[str, float]] = []
            for r, s in zip(idx[0], sims[0], strict=True):
                if r >= 0 and (eid := self.row_ids[r]) is not None:
                    out.append((eid, float(s)))
            if len(out) >= k or kk >= n:
                return out[:k]
            kk = min(n, kk * 4)


@dataclass
class Mirror:
    """All cache entries of all namespaces, grouped by (namespace, scope)."""

    exact_max: int = 4096
    ef_search: int = 64
    entries: dict[tuple[str, str], MirrorEntry] = field(default_factory=dict)  # (ns, id) -> entry
    groups: dict[tuple[str, str], VectorGroup] = field(default_factory=dict)  # (ns, scope) -> vectors
    priors: dict[str, ThresholdFit] = field(default_factory=dict)  # ns -> pooled fit
    fits: dict[tuple[str, str], tuple[ThresholdFit | None, int]] = field(default_factory=dict)  # (ns, group)

    def put(self, entry: MirrorEntry, vec: np.ndarray) -> None:
        """Insert or replace an entry."""
        key = (entry.namespace, entry.id)
        old = self.entries.get(key)
        gkey = (entry.namespace, entry.scope)
        if old is not None and old.scope != entry.scope:
            self.remove(entry.namespace, entry.id)
        elif old is not None and gkey in self.groups and entry.id in self.groups[gkey].rows:
            # ids are never reused: the same entry again (own write racing its stream event) keeps its row
            self.entries[key] = entry
            return
        group = self.groups.get(gkey)
        if group is None:
            group = VectorGroup(int(vec.shape[-1]), self.exact_max, ef_search=self.ef_search)
            self.groups[gkey] = group
        group.add(entry.id, np.ascontiguousarray(vec, dtype=np.float32))
        self.entries[key] = entry

    def remove(self, namespace: str, entry_id: str) -> bool:
        """Drop one entry; True if it was there."""
        entry = self.entries.pop((namespace, entry_id), None)
        if entry is None:
            return False
        group = self.groups.get((namespace, entry.scope))
        if group is not None:
            group.remove(entry_id)
            if group.live == 0:
                del self.groups[(namespace, entry.scope)]
        return True

    def drop_namespace(self, namespace: str) -> int:
        """Forget a whole namespace; returns how many entries it had."""
        ids = [eid for (ns, eid) in self.entries if ns == namespace]
        for eid in ids:
            self.entries.pop((namespace, eid), None)
        for gkey in [g for g in self.groups if g[0] == namespace]:
            del self.groups[gkey]
        for fkey in [f for f in self.fits if f[0] == namespace]:
            del self.fits[fkey]
        self.priors.pop(namespace, None)
        return len(ids)

    def get(self, namespace: str, entry_id: str) -> MirrorEntry | None:
        """The entry, if mirrored."""
        return self.entries.get((namespace, entry_id))

    def set_fit(self, namespace: str, group: str, fit: ThresholdFit | None, n_obs: int) -> None:
        """Update an answer group's fitted threshold parameters."""
        self.fits[(namespace, group)] = (fit, n_obs)

    def group_fit(self, namespace: str, group: str) -> tuple[ThresholdFit | None, int]:
        """(fit, observations) of an answer group; (None, 0) when it has none."""
        return self.fits.get((namespace, group), (None, 0))

    def _live(
        self, namespace: str, hits: list[tuple[str, float]], now: float
    ) -> Iterator[tuple[MirrorEntry, float]]:
        """The live, unexpired entries among search hits, best first."""
        for eid, sim in hits:
            entry = self.entries.get((namespace, eid))
            if entry is not None and not entry.expired(now):
                yield entry, sim

    def nearest(
        self, namespace: str, scope: str, q: np.ndarray, now: float | None = None, k: int = 16
    ) -> Neighbour | None:
        """The most similar live, unexpired entry of (namespace, scope) with its competitor, or None.

        ``k`` candidates are searched (more while expired or deleted ones hide the nearest live entry).
        """
        group = self.groups.get((namespace, scope))
        if group is None:
            return None
        now = time.time() if now is None else now
        while True:
            hits = group.search(q, k)
            live = self._live(namespace, hits, now)
            first = next(live, None)
            if first is not None:
                entry, sim = first
                return Neighbour(entry, sim, _competitor(live, hits, k, entry.group_id))
            if len(hits) < k:
                return None
            k *= 4

    def competitor(
        self, namespace: str, scope: str, q: np.ndarray, group_id: str, now: float | None = None, k: int = 16
    ) -> float | None:
        """Best similarity to ``q`` of a live entry outside answer group ``group_id`` (bounded as in
        :class:`Neighbour`); None when the scope holds no other group."""
        group = self.groups.get((namespace, scope))
        if group is None:
            return None
        hits = group.search(q, k)
        live = self._live(namespace, hits, time.time() if now is None else now)
        return _competitor(live, hits, k, group_id)

    def count(self, namespace: str | None = None) -> int:
        """Entries mirrored (in one namespace, or all)."""
        if namespace is None:
            return len(self.entries)
        return sum(g.live for (ns, _), g in self.groups.items() if ns == namespace)


def _competitor(
    live: Iterable[tuple[MirrorEntry, float]], hits: list[tuple[str, float]], k: int, group_id: str
) -> float | None:
    """Similarity of the first live entry outside ``group_id``; when none is among the ``k`` candidates,
    the last candidate's similarity (nothing beyond it is closer), or None if the search ran out."""
    for entry, sim in live:
        if entry.group_id != group_id:
            return sim
    return hits[-1][1] if len(hits) >= k else None
