"""HTTP IndexerClient (httpx) against the indexer's REST routes; error JSON maps back to DowseError types."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from embedder.errors import DependencyFailed
from embedder.http_client import auth_headers, request_json
from indexer.client import Hit


class HttpIndexerClient:
    """Implements ``indexer.client.IndexerClient`` over HTTP; transport failures -> DependencyFailed.

    Also the gateway's handle on one shard: collection admin, writes, aliases and BM25 term statistics.
    ``timeout_s`` bounds reads; writes embed their documents on the way and get ``write_timeout_s``.
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        write_timeout_s: float = 300.0,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.write_timeout_s = write_timeout_s
        self._client = client or httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, headers=auth_headers(token)
        )

    async def _call(self, method: str, path: str, json: Any = None, timeout: float | None = None) -> Any:
        # an unexpected 4xx (no Dowse category) is the indexer's fault, not the caller's
        return await request_json(
            self._client, method, path, json, service="indexer", unknown=DependencyFailed, timeout=timeout
        )

    async def request(self, method: str, path: str, json: Any = None, *, write: bool = False) -> Any:
        """Any indexer route (``write``: with the write timeout); the JSON body or a DowseError."""
        return await self._call(method, path, json, self.write_timeout_s if write else None)

    async def collection_info(self, name: str) -> dict[str, Any]:
        """The collection manifest + stats."""
        out: dict[str, Any] = await self._call("GET", f"/v1/collections/{_q(name)}")
        return out

    async def search_dense(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> list[Hit]:
        """Top-k documents by vector similarity (vector sent as base64 float32)."""
        vec = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(-1))
        body = {
            "vector_b64": base64.b64encode(vec.tobytes()).decode(),
            "k": k,
            "filters": filters,
            "texts": texts,
        }
        return _hits(await self._call("POST", f"/v1/collections/{_q(name)}/search/dense", body))

    async def search_lexical(
        self,
        name: str,
        query: str,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
        stats: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Top-k documents by BM25 (``stats``: collection-wide term statistics of a sharded collection)."""
        body: dict[str, Any] = {"query": query, "k": k, "filters": filters, "texts": texts}
        if stats is not None:
            body["stats"] = stats
        return _hits(await self._call("POST", f"/v1/collections/{_q(name)}/search/lexical", body))

    async def term_stats(self, name: str, query: str) -> dict[str, Any]:
        """This shard's ``{"num_docs", "df": {term: n}}`` for the query's BM25 terms."""
        out: dict[str, Any] = await self._call(
            "POST", f"/v1/collections/{_q(name)}/search/lexical/stats", {"query": query}
        )
        return out

    async def get_documents(self, name: str, ids: list[str]) -> list[dict[str, Any]]:
        """Stored documents in ``ids`` order."""
        out = await self._call("POST", f"/v1/collections/{_q(name)}/documents/get", {"ids": ids})
        docs: list[dict[str, Any]] = out["documents"]
        return docs

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _q(name: str) -> str:
    """Collection name as one URL path segment."""
    return quote(name, safe="")


def _hits(body: dict[str, Any]) -> list[Hit]:
    return [
        Hit(
            h["id"],
            float(h["score"]),
            h.get("title", ""),
            h.get("text", ""),
            h.get("metadata") or {},
            int(h.get("chunk", 0)),
        )
        for h in body["hits"]
    ]
