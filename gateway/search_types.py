"""Plain data types of the search pipeline: request, limits, hits, response, and the embedder breaker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class SearchLimits:
    """Request limits enforced by :meth:`SearchPipeline.search` (errors name the field and the limit)."""

    max_top_k: int = 100
    max_candidates: int = 1000
    max_rerank_top_n: int = 100
    max_query_chars: int = 4096


@dataclass(frozen=True)
class SearchRequest:
    """One search: the fields of ``POST /v1/search`` (``None`` = the pipeline's default)."""

    collection: str
    query: str
    top_k: int = 10
    mode: Literal["bm25", "dense", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "convex"] = "rrf"
    rrf_k: float = 60.0
    alpha: float | None = None
    normalization: Literal["min-max", "z-score"] = "min-max"
    candidates: int | None = None
    rerank: bool = False
    rerank_top_n: int | None = None
    rerank_weight: float | None = None
    filters: dict[str, Any] | None = None
    instruction: str | None = None
    explain: bool = False


@dataclass
class SearchHit:
    """A final hit: fused (or reranked) score, the stored document, and optionally how it got there."""

    id: str
    score: float
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    explain: dict[str, Any] | None = None


@dataclass
class SearchResponse:
    """Hits best first, per-stage wall times in milliseconds, and why the answer is degraded (or None)."""

    hits: list[SearchHit]
    timings_ms: dict[str, float]
    degraded: str | None = None
    # one short code per fallback, ``<stage>_<cause>`` (e.g. ``embed_timeout``): the metrics' reason label
    degraded_reasons: list[str] = field(default_factory=list)
    # shards of a sharded collection that did not answer: the hits come from the others
    failed_shards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """True when some shard's hits are missing."""
        return bool(self.failed_shards)


class CircuitBreaker:
    """Skip a dependency for ``cooldown_s`` after ``threshold`` consecutive failures, then probe again."""

    def __init__(self, threshold: int = 3, cooldown_s: float = 2.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None

    def allow(self) -> bool:
        """True when a call may go through (closed, or half-open after the cooldown)."""
        if self.opened_at is None:
            return True
        return time.monotonic() - self.opened_at >= self.cooldown_s

    def success(self) -> None:
        """Record a successful call: close the circuit."""
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        """Record a failed call: open (or re-open) the circuit once the threshold is reached."""
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = time.monotonic()
