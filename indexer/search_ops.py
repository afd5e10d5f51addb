"""Search routes of :class:`~indexer.service.IndexerService`: dense, BM25 and BM25 term statistics."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

from embedder.errors import InvalidInput
from indexer.client import Hit
from indexer.collection import Collection
from indexer.filters import compile_filters
from indexer.validate import MAX_QUERY_CHARS, check_k, check_stats, check_texts


class SearchOps:
    """A mixin over the service's ``_get(name) -> Collection``."""

    def _get(self, name: str) -> Collection:
        raise NotImplementedError

    async def search_dense(
        self,
        name: str,
        vector: Any,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        per_chunk: bool = False,
        texts: int | None = None,
    ) -> list[Hit]:
        """Top-k by vector similarity; ``vector`` must have the collection's dims.

        ``texts``: how many leading hits carry title/text/metadata (None: all; the gateway asks only for
        the few it shows or reranks).
        """
        coll = self._get(name)
        check_k(k)
        compile_filters(filters)
        try:
            q = np.asarray(vector, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidInput("vector must be a list of numbers", field="vector") from None
        if q.shape[0] != coll.manifest.dims:
            raise InvalidInput(
                f"vector has {q.shape[0]} dims, collection {name!r} has {coll.manifest.dims}",
                field="vector",
                limit=coll.manifest.dims,
            )
        if not np.all(np.isfinite(q)):
            raise InvalidInput("vector values must be finite", field="vector")
        if coll.manifest.metric == "cosine":
            norm = float(np.linalg.norm(q))
            if norm == 0 or not math.isfinite(norm):
                raise InvalidInput("vector must be non-zero for cosine similarity", field="vector")
            q = q / norm
        check_texts(texts)
        return await asyncio.to_thread(coll.search_dense, q, k, filters, per_chunk, None, texts)

    async def search_lexical(
        self,
        name: str,
        query: str,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        per_chunk: bool = False,
        texts: int | None = None,
        stats: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Top-k documents by BM25 (``per_chunk`` accepted for symmetry: lexical hits are whole documents).

        ``stats``: collection-wide ``{"num_docs", "df"}`` of the query's terms (summed over the shards of
        a sharded collection by the gateway, from :meth:`term_stats`)."""
        coll = self._get(name)
        check_k(k)
        compile_filters(filters)
        if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS:
            raise InvalidInput("query must be a string", field="query", limit=MAX_QUERY_CHARS)
        check_texts(texts)
        if stats is not None:
            check_stats(stats)
        return await asyncio.to_thread(coll.search_lexical, query, k, filters, texts, stats)

    async def term_stats(self, name: str, query: str) -> dict[str, Any]:
        """This shard's BM25 statistics of ``query``'s terms: ``{"num_docs", "df": {term: n}}``."""
        coll = self._get(name)
        if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS:
            raise InvalidInput("query must be a string", field="query", limit=MAX_QUERY_CHARS)
        return await asyncio.to_thread(coll.term_stats, query)
