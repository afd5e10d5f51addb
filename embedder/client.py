"""Client interface to the embedding service, used by the indexer and the gateway.

Two implementations share this protocol: in-process (``embedder.inprocess``, direct calls into an
``EmbeddingService``) and HTTP (``embedder.http_client``, httpx against ``/v1/embeddings`` and
``/v1/rerank``). Vectors are float32, L2-normalised, shape ``(n, dims)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class EmbedResult:
    """Vectors for a list of inputs plus the number of tokens each used."""

    vectors: np.ndarray  # float32 (n, dims), L2-normalised
    token_counts: list[int] = field(default_factory=list)
    model: str = ""


@runtime_checkable
class EmbedderClient(Protocol):
    """What the indexer and gateway need from an embedder."""

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
        """Embed ``texts``; ``prompt_name`` is ``query``/``passage``/model-defined; ``instruction``
        overrides the prompt text verbatim; ``priority`` is ``interactive`` (a search waits for it) or
        ``batch`` (bulk work, cut into micro-batches behind interactive work); None = by request size."""
        ...

    async def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        model: str | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> list[float]:
        """Cross-encoder scores (raw logits), one per document, in input order (``priority`` as in embed)."""
        ...

    async def model_info(self, model: str | None = None) -> dict[str, Any]:
        """``{"name", "dim", "max_length", "pooling", "prompts", "revision", "kind"}`` of a model."""
        ...

    async def aclose(self) -> None:
        """Release connections / threads."""
        ...
