"""In-process IndexerClient: direct calls into an :class:`~indexer.service.IndexerService`."""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.client import Hit
from indexer.service import IndexerService


class InProcessIndexerClient:
    """Implements ``indexer.client.IndexerClient`` without HTTP."""

    def __init__(self, service: IndexerService) -> None:
        self.service = service

    async def collection_info(self, name: str) -> dict[str, Any]:
        """The collection manifest + stats."""
        return await self.service.collection_info(name)

    async def search_dense(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> list[Hit]:
        """Top-k documents by vector similarity."""
        return await self.service.search_dense(name, vector, k, filters, texts=texts)

    async def search_lexical(
        self,
        name: str,
        query: str,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> list[Hit]:
        """Top-k documents by BM25."""
        return await self.service.search_lexical(name, query, k, filters, texts=texts)

    async def get_documents(self, name: str, ids: list[str]) -> list[dict[str, Any]]:
        """Stored documents in ``ids`` order."""
        return await self.service.get_documents(name, ids)

    async def aclose(self) -> None:
        """The service is owned by whoever created it: nothing to release here."""
