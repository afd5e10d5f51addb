"""Rank fusion as pure functions: reciprocal rank fusion and normalised convex combination.

Inputs are ranked lists of ``(doc_id, score)`` pairs, best first, one list per retriever. Outputs are
:class:`Fused` records sorted best first with a deterministic tie-break:

1. higher fused score;
2. better (smaller) best rank over the retrievers that returned the document;
3. found by more retrievers;
4. better rank in the earlier retriever of the input order (BM25 first in the pipeline);
5. document id (string order).

Fused scores are summed in retriever order, so the same inputs always give bit-identical scores.
Semantics match ``ranx.fuse`` (checked in the unit tests): RRF gives rank ``r`` (1-based, in list order)
``1 / (k + r)``; convex fusion normalises each list per query (min-max or z-score), a document missing
from a list contributes 0 for that list, and the weights are ``[1 - alpha, alpha]`` for two lists
(lexical, dense). One deliberate difference: a min-max list whose scores are all equal (e.g. a single
hit) maps to 1.0 rather than ranx's 0.0, so a document found by a retriever never scores below one it
did not find.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Ranked = Sequence[tuple[str, float]]
Normalization = Literal["min-max", "z-score"]
NORMALIZATIONS: tuple[str, ...] = ("min-max", "z-score")


@dataclass(slots=True)
class Fused:
    """One fused document: its fused score plus each retriever's 1-based rank and raw score."""

    id: str
    score: float
    ranks: list[int | None] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)

    @property
    def best_rank(self) -> int:
        """Smallest rank over the retrievers that found the document."""
        return min(r for r in self.ranks if r is not None)


def _collect(lists: Sequence[Ranked]) -> dict[str, Fused]:
    """Index every document with its rank and raw score in each list (first occurrence wins)."""
    out: dict[str, Fused] = {}
    n = len(lists)
    for li, ranked in enumerate(lists):
        for pos, (doc_id, score) in enumerate(ranked):
            rec = out.get(doc_id)
            if rec is None:
                rec = out[doc_id] = Fused(doc_id, 0.0, [None] * n, [None] * n)
            if rec.ranks[li] is None:
                rec.ranks[li] = pos + 1
                rec.scores[li] = float(score)
    return out


_MISSING = 1 << 30  # rank of a document a retriever did not return, for the tie-break


def _tie_key(rec: Fused) -> tuple[float, int, int, tuple[int, ...], str]:
    per_list = tuple(_MISSING if r is None else r for r in rec.ranks)
    found = len(per_list) - per_list.count(_MISSING)
    return (-rec.score, min(per_list), -found, per_list, rec.id)


def sort_fused(records: list[Fused]) -> list[Fused]:
    """Sort best first with the module's deterministic tie-break."""
    return sorted(records, key=_tie_key)


def rrf(lists: Sequence[Ranked], k: float = 60.0, weights: Sequence[float] | None = None) -> list[Fused]:
    """Reciprocal rank fusion: ``sum_i w_i / (k + rank_i)`` over the lists containing the document."""
    if k < 0:
        raise ValueError("rrf k must be >= 0")
    w = list(weights) if weights is not None else [1.0] * len(lists)
    if len(w) != len(lists):
        raise ValueError("one weight per list")
    recs = _collect(lists)
    for rec in recs.values():
        total = 0.0
        for li, rank in enumerate(rec.ranks):
            if rank is not None:
                total += w[li] / (k + rank)
        rec.score = total
    return sort_fused(list(recs.values()))


def normalize(scores: Sequence[float], method: Normalization = "min-max") -> list[float]:
    """Per-list score normalisation: min-max to [0, 1] or z-score (population std)."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {method!r}; choose from {NORMALIZATIONS}")
    vals = [float(s) for s in scores]
    if not vals:
        return []
    if method == "min-max":
        lo, hi = min(vals), max(vals)
        if hi - lo <= 1e-12:
            return [1.0] * len(vals)
        return [(v - lo) / (hi - lo) for v in vals]
    mean = math.fsum(vals) / len(vals)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / len(vals))
    if std <= 1e-12:
        return [0.0] * len(vals)
    return [(v - mean) / std for v in vals]


def convex(
    lists: Sequence[Ranked],
    weights: Sequence[float],
    normalization: Normalization = "min-max",
) -> list[Fused]:
    """Weighted sum of per-list normalised scores; a document absent from a list gets 0 for it."""
    if len(weights) != len(lists):
        raise ValueError("one weight per list")
    recs = _collect(lists)
    norm: list[dict[str, float]] = []
    for ranked in lists:
        seen: dict[str, float] = {}
        for doc_id, score in ranked:
            seen.setdefault(doc_id, float(score))
        normed = normalize(list(seen.values()), normalization)
        norm.append(dict(zip(seen.keys(), normed, strict=True)))
    for rec in recs.values():
        total = 0.0
        for li, weight in enumerate(weights):
            total += weight * norm[li].get(rec.id, 0.0)
        rec.score = total
    return sort_fused(list(recs.values()))


def convex_pair(
    lexical: Ranked, dense: Ranked, alpha: float, normalization: Normalization = "min-max"
) -> list[Fused]:
    """Convex combination of two lists: ``(1 - alpha) * lexical + alpha * dense`` (alpha in [0, 1])."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    return convex([lexical, dense], [1.0 - alpha, alpha], normalization)


def single(ranked: Ranked) -> list[Fused]:
    """Wrap one retriever's list as fused records (score = raw score, order kept, ties by id)."""
    recs = _collect([ranked])
    for rec in recs.values():
        rec.score = rec.scores[0] if rec.scores[0] is not None else 0.0
    return sort_fused(list(recs.values()))


def blend_rerank(first_stage: Sequence[float], rerank: Sequence[float], weight: float) -> list[float]:
    """Fuse first-stage and cross-encoder scores: ``(1 - w) * z(first) + w * z(rerank)``.

    Both are z-normalised over the reranked candidates so that the weight is scale-free; ``weight=1``
    is the plain cross-encoder order, ``weight=0`` keeps the first-stage order.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError("rerank weight must be in [0, 1]")
    if len(first_stage) != len(rerank):
        raise ValueError("one rerank score per candidate")
    zf = normalize(first_stage, "z-score")
    zr = normalize(rerank, "z-score")
    return [(1.0 - weight) * a + weight * b for a, b in zip(zf, zr, strict=True)]


def blend_tail(
    first_head: Sequence[float], rerank_head: Sequence[float], first_tail: Sequence[float], weight: float
) -> list[float]:
    """Scores for the candidates below the reranked head, on the head's blended scale.

    The tail is z-normalised with the head's first-stage mean and std and given the head's lowest
    cross-encoder z-score, so every tail score is <= every head score and the tail keeps its order.
    """
    if not first_tail:
        return []
    if not first_head:
        return [float(x) for x in first_tail]
    mean = math.fsum(first_head) / len(first_head)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in first_head) / len(first_head))
    zr_min = min(normalize(rerank_head, "z-score"))
    return [(1.0 - weight) * ((v - mean) / std if std > 1e-12 else 0.0) + weight * zr_min for v in first_tail]
