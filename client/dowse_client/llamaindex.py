"""LlamaIndex adapters (``pip install dowse-client[llamaindex]``): a retriever over ``/v1/search`` and an
embedding class over ``/v1/embeddings`` (query prompt for queries, passage prompt for texts)."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from pydantic import PrivateAttr

from dowse_client.aio import AsyncDowseClient
from dowse_client.client import DowseClient
from dowse_client.types import Hit

__all__ = ["DowseLlamaEmbedding", "DowseLlamaRetriever", "hit_to_node"]


def hit_to_node(hit: Hit) -> NodeWithScore:
    """A search hit as a scored TextNode (node id = document id; title in the metadata)."""
    node = TextNode(id_=hit.id, text=hit.text, metadata={**hit.metadata, "title": hit.title})
    return NodeWithScore(node=node, score=hit.score)


class DowseLlamaRetriever(BaseRetriever):
    """LlamaIndex retriever over ``POST /v1/search`` (mode, filters, rerank and any search option)."""

    def __init__(
        self,
        collection: str,
        client: DowseClient | None = None,
        *,
        aclient: AsyncDowseClient | None = None,
        top_k: int = 10,
        mode: str = "hybrid",
        filters: dict[str, Any] | None = None,
        rerank: bool = False,
        **search_options: Any,
    ) -> None:
        super().__init__()
        self.client = client or DowseClient()
        self.aclient = aclient
        self.collection = collection
        self.options = {"top_k": top_k, "mode": mode, "filters": filters, "rerank": rerank, **search_options}

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        res = self.client.search(self.collection, query_bundle.query_str, **self.options)
        return [hit_to_node(h) for h in res.hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self.aclient is None:
            return self._retrieve(query_bundle)
        res = await self.aclient.search(self.collection, query_bundle.query_str, **self.options)
        return [hit_to_node(h) for h in res.hits]


class DowseLlamaEmbedding(BaseEmbedding):
    """LlamaIndex ``BaseEmbedding`` over ``/v1/embeddings``; ``model_name`` is a Dowse preset (or None)."""

    dimensions: int | None = None
    _client: DowseClient = PrivateAttr()
    _aclient: AsyncDowseClient | None = PrivateAttr(default=None)

    def __init__(
        self,
        client: DowseClient | None = None,
        *,
        aclient: AsyncDowseClient | None = None,
        model_name: str = "",
        dimensions: int | None = None,
        embed_batch_size: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name=model_name, embed_batch_size=embed_batch_size, **kwargs)
        self.dimensions = dimensions
        self._client = client or DowseClient()
        self._aclient = aclient

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's serialisation name."""
        return "DowseLlamaEmbedding"

    def _opts(self, input_type: str) -> dict[str, Any]:
        return {"model": self.model_name or None, "dimensions": self.dimensions, "input_type": input_type}

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._client.embed(query, **self._opts("search_query")).vectors[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._client.embed(text, **self._opts("search_document")).vectors[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._client.embed(texts, **self._opts("search_document")).vectors

    async def _aget_query_embedding(self, query: str) -> list[float]:
        if self._aclient is None:
            return self._get_query_embedding(query)
        return (await self._aclient.embed(query, **self._opts("search_query"))).vectors[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if self._aclient is None:
            return self._get_text_embeddings(texts)
        return (await self._aclient.embed(texts, **self._opts("search_document"))).vectors
