"""Search routes of :class:`~indexer.service.IndexerService`: dense, BM25 and BM25 term statistics."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

from embedder.errors import Conflict, InvalidInput
from indexer.client import Hit
from indexer.collection import Collection
from indexer.errors import InvalidCollectionSpec
from indexer.filters import compile_filters
from indexer.manifest import Manifest
from indexer.rotated import MAX_FUNNEL_M
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
        funnel_m: int | None = None,
        funnel_dims: int | None = None,
    ) -> list[Hit]:
        """Top-k by vector similarity; ``vector`` must have the collection's dims.

        A rotating collection takes full model-dim vectors (rotated here, shortlisted in ``dims`` and the
        top ``funnel_m`` re-scored at full dims) or ``dims``-dim vectors already rotated (``/v1/embeddings``
        with ``collection``), searched in ``dims`` only.

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
        man = coll.manifest
        ok_dims = {man.store_dims, man.dims} if coll.rotation is not None else {man.store_dims}
        if q.shape[0] not in ok_dims:
            raise InvalidInput(
                f"vector has {q.shape[0]} dims, collection {name!r} has "
                + " or ".join(str(d) for d in sorted(ok_dims, reverse=True)),
                field="vector",
                limit=man.store_dims,
            )
        _check_funnel(man, funnel_m, funnel_dims)
        if not np.all(np.isfinite(q)):
            raise InvalidInput("vector values must be finite", field="vector")
        if coll.manifest.metric == "cosine":
            norm = float(np.linalg.norm(q))
            if norm == 0 or not math.isfinite(norm):
                raise InvalidInput("vector must be non-zero for cosine similarity", field="vector")
            q = q / norm
        check_texts(texts)
        return await asyncio.to_thread(
            coll.search_dense, q, k, filters, per_chunk, None, texts, funnel_m, funnel_dims
        )

    # ---- rotation -----------------------------------------------------------------------------
    async def rotation_info(self, name: str) -> dict[str, Any]:
        """The serving rotation of a collection (version 0: none fitted yet, full dims)."""
        coll = self._get(name)
        return await asyncio.to_thread(coll.rotation_info)

    async def refit_rotation(self, name: str) -> dict[str, Any]:
        """Re-fit the collection's rotation on its current vectors; atomic swap (old serves on failure)."""
        coll = self._get(name)
        if not coll.manifest.rotate:
            raise InvalidCollectionSpec(f"collection {name!r} does not rotate", field="collection")
        try:
            return await asyncio.to_thread(coll.refit)
        except LookupError as exc:
            raise Conflict(f"too few vectors to fit a rotation: {exc}", field="collection") from None

    async def rotate_vectors(self, name: str, vecs: np.ndarray, dims: int) -> np.ndarray:
        """Full-dim vectors -> collection ``name``'s rotated leading ``dims`` (for /v1/embeddings)."""
        coll = self._get(name)
        if coll.rotation is None:
            raise InvalidInput(f"collection {name!r} has no rotation fitted yet", field="collection")
        return await asyncio.to_thread(coll.rotate_vectors, vecs, dims)

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


def _check_funnel(man: Manifest, funnel_m: int | None, funnel_dims: int | None) -> None:
    """422 unless ``funnel_m`` in [0, MAX_FUNNEL_M] and ``funnel_dims`` in [1, dims] (rotating, not l2)."""
    if funnel_m is not None and (
        isinstance(funnel_m, bool) or not isinstance(funnel_m, int) or not 0 <= funnel_m <= MAX_FUNNEL_M
    ):
        raise InvalidInput(
            f"funnel_m must be an integer in [0, {MAX_FUNNEL_M}]", field="funnel_m", limit=MAX_FUNNEL_M
        )
    if funnel_dims is not None and (
        isinstance(funnel_dims, bool)
        or not isinstance(funnel_dims, int)
        or not 1 <= funnel_dims <= man.dims
        or man.metric == "l2"
        or not man.rotate
    ):
        raise InvalidInput(
            f"funnel_dims must be an integer in [1, {man.dims}] on a rotating cosine / ip collection",
            field="funnel_dims",
            limit=man.dims,
        )
