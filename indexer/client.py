"""Client interface to the indexer, used by the gateway.

Two implementations share this protocol: in-process (direct calls into the indexer's service object)
and HTTP (httpx against the indexer's REST routes). Hits are per document (best chunk) unless
``per_chunk`` is requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class Hit:
    """One search hit from a single retriever; ``score`` is that retriever's raw score."""

    id: str
    score: float
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    chunk: int = 0


@dataclass
class ShardFailure:
    """A shard that did not answer (dead, timed out, failed) while the others did."""

    shard: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """``{"shard", "reason"}`` as search and write responses carry it."""
        return {"shard": self.shard, "reason": self.reason}


class PartialHits(list[Hit]):
    """Hits merged from the shards that answered; ``failed_shards`` names the others (empty: complete)."""

    def __init__(self, hits: Iterable[Hit] = (), failed_shards: list[ShardFailure] | None = None) -> None:
        super().__init__(hits)
        self.failed_shards: list[ShardFailure] = list(failed_shards or [])


@runtime_checkable
class IndexerClient(Protocol):
    """What the gateway needs from the indexer."""

    async def collection_info(self, name: str) -> dict[str, Any]:
        """The collection manifest: ``{"name", "model", "revision", "dims", "metric", "prompt", ...}``.

        Raises ``embedder.errors.NotFound`` for an unknown collection."""
        ...

    async def search_dense(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> list[Hit]:
        """Top-k documents by vector similarity (higher score = closer); ids + scores only past the
        first ``texts`` hits (None: all carry text)."""
        ...

    async def search_lexical(
        self,
        name: str,
        query: str,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> list[Hit]:
        """Top-k documents by BM25; ids + scores only past the first ``texts`` hits."""
        ...

    async def get_documents(self, name: str, ids: list[str]) -> list[dict[str, Any]]:
        """Stored documents ``{"id", "title", "text", "metadata"}`` in ``ids`` order (missing skipped)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
