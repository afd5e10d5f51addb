"""EmbedderClient that calls an EmbeddingService in the same process (no HTTP)."""

from __future__ import annotations

from typing import Any

from embedder.client import EmbedResult
from embedder.service import EmbeddingService


class InProcessEmbedderClient:
    """Direct calls into an :class:`EmbeddingService` (``dowse serve`` runs everything in one process)."""

    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    async def embed(
        self,
        texts: list[str],
        *,
        model: str | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> EmbedResult:
        """Embed ``texts`` through the service's batching queue."""
        return await self.service.embed(
            texts,
            model=model,
            prompt_name=prompt_name,
            instruction=instruction,
            dimensions=dimensions,
            truncate=truncate,
            priority=priority,
        )

    async def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        model: str | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> list[float]:
        """Cross-encoder logits, one per document, in input order."""
        return await self.service.rerank(query, documents, model=model, truncate=truncate, priority=priority)

    async def model_info(self, model: str | None = None) -> dict[str, Any]:
        """Name, dim, max_length, pooling, prompts, revision, kind of a loaded model."""
        return self.service.model_info(model)

    async def aclose(self) -> None:
        """Nothing to release: the service belongs to its owner."""
