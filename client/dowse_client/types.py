"""Typed results of the Dowse API (plain dataclasses; ``raw`` keeps the full JSON for fields added later)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

SearchMode = Literal["bm25", "dense", "hybrid"]
Fusion = Literal["rrf", "convex"]
CachePolicy = Literal["adaptive", "static"]
Decision = Literal["exploit", "explore", "miss"]
JOB_DONE = ("completed", "failed", "cancelled")


class SearchOptions(TypedDict, total=False):
    """Optional fields of ``POST /v1/search``; an absent (or None) field takes the server's default."""

    top_k: int
    mode: SearchMode
    fusion: Fusion
    rrf_k: float
    alpha: float | None
    normalization: Literal["min-max", "z-score"]
    candidates: int | None
    rerank: bool
    rerank_top_n: int | None
    rerank_weight: float | None
    filters: dict[str, Any] | None
    instruction: str | None
    explain: bool


@dataclass(slots=True)
class Hit:
    """One search hit: fused (or reranked) score and the stored document."""

    id: str
    score: float
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    explain: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Hit:
        """Parse one element of ``hits``."""
        return cls(
            d["id"], float(d["score"]), d.get("title", ""), d.get("text", ""), d.get("metadata") or {},
            d.get("explain"),
        )  # fmt: skip


@dataclass(slots=True)
class SearchResult:
    """``POST /v1/search``: hits best first, per-stage timings, and why the answer is degraded (if so)."""

    hits: list[Hit]
    timings_ms: dict[str, float]
    degraded: bool | str = False
    partial: bool = False
    failed_shards: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchResult:
        """Parse the response body."""
        return cls(
            [Hit.from_json(h) for h in d["hits"]],
            d.get("timings_ms") or {},
            d.get("degraded") or False,
            bool(d.get("partial", False)),
            d.get("failed_shards") or [],
        )


@dataclass(slots=True)
class Embeddings:
    """``POST /v1/embeddings``: one vector per input, in input order."""

    vectors: list[list[float]]
    model: str
    prompt_tokens: int
    token_counts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class RerankResult:
    """One reranked document: its index in the request, sigmoid score, raw logit, optionally its text."""

    index: int
    relevance_score: float
    logit: float | None = None
    text: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RerankResult:
        """Parse one element of ``results``."""
        doc = d.get("document")
        return cls(
            int(d["index"]), float(d["relevance_score"]), d.get("logit"), doc.get("text") if doc else None
        )


@dataclass(slots=True)
class Document:
    """A document to upsert, or one read back from a collection."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The upsert body element."""
        return {"id": self.id, "title": self.title, "text": self.text, "metadata": self.metadata}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Document:
        """Parse a stored document."""
        return cls(d["id"], d.get("text", ""), d.get("title", ""), d.get("metadata") or {})


@dataclass(slots=True)
class Collection:
    """A collection's manifest (model, dims, metric, index) and stats; ``raw`` holds every field."""

    name: str
    model: str
    dims: int
    metric: str
    stats: dict[str, Any]
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Collection:
        """Parse a manifest + stats body."""
        return cls(d["name"], d.get("model", ""), int(d.get("dims") or 0), d.get("metric", ""),
                   d.get("stats") or {}, d)  # fmt: skip


@dataclass(slots=True)
class UpsertResult:
    """Documents and chunks written in one transaction, and the collection's sequence number after it."""

    upserted: int
    chunks: int
    seq: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UpsertResult:
        """Parse the upsert response."""
        return cls(int(d["upserted"]), int(d.get("chunks", 0)), d.get("seq"))


@dataclass(slots=True)
class Job:
    """A background ingest job's progress."""

    id: str
    status: str
    total: int | None
    done: int
    skipped: int
    failed: int
    errors: list[str]
    raw: dict[str, Any]

    @property
    def finished(self) -> bool:
        """True once the job completed, failed or was cancelled."""
        return self.status in JOB_DONE

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        """Parse a job body."""
        return cls(d["id"], d["status"], d.get("total"), int(d.get("done", 0)), int(d.get("skipped", 0)),
                   int(d.get("failed", 0)), list(d.get("errors") or []), d)  # fmt: skip


@dataclass(slots=True)
class CacheLookup:
    """Outcome of a cache lookup: ``exploit`` serves ``response``; ``explore`` asks for feedback."""

    hit: bool
    decision: Decision
    lookup_id: str
    response: str | None = None
    similarity: float | None = None
    entry_id: str | None = None
    exploit_probability: float | None = None
    degraded: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CacheLookup:
        """Parse the lookup response."""
        return cls(bool(d["hit"]), d["decision"], d["lookup_id"], d.get("response"), d.get("similarity"),
                   d.get("entry_id"), d.get("exploit_probability"), d.get("degraded"))  # fmt: skip


@dataclass(slots=True)
class CacheStore:
    """``stored`` is false (with ``degraded``) when the server's Redis was down and the store dropped."""

    stored: bool
    entry_id: str | None = None
    evicted: int = 0
    degraded: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CacheStore:
        """Parse the store response."""
        return cls(bool(d["stored"]), d.get("entry_id"), int(d.get("evicted", 0)), d.get("degraded"))


@dataclass(slots=True)
class CacheFeedback:
    """The judge's verdict on an explore (None: nothing to judge) and the entry stored from it, if any."""

    correct: bool | None
    entry_id: str | None
    stored_entry_id: str | None
    observations: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CacheFeedback:
        """Parse the feedback response."""
        return cls(
            d.get("correct"), d.get("entry_id"), d.get("stored_entry_id"), int(d.get("observations", 0))
        )


@dataclass(slots=True)
class CachedAnswer:
    """What ``get_or_call`` returns: the text, whether it came from the cache, and the lookup behind it."""

    response: str
    from_cache: bool
    lookup: CacheLookup
    feedback: CacheFeedback | None = None
