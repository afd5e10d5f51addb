"""EmbedderClient over HTTP (httpx) against a Dowse embedder: ``/v1/embeddings`` and ``/rerank``.

Vectors travel as base64 float32, so they are bit-identical to the in-process client's. 4xx JSON errors
come back as the matching :class:`~embedder.errors.DowseError` category; connection errors, timeouts and
5xx become :class:`~embedder.errors.DependencyFailed`.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx
import numpy as np

from embedder.client import EmbedResult
from embedder.errors import (
    DependencyFailed,
    DowseError,
    InvalidInput,
    category_for_status,
    category_for_type,
)
from embedder.registry import UnknownModel, canonical_name

log = logging.getLogger(__name__)

PRIORITY_HEADER = "X-Dowse-Priority"  # the TEI routes' way to say interactive | batch


def auth_headers(token: str | None) -> dict[str, str]:
    """``Authorization: Bearer <service token>`` for calls to another Dowse role (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def error_from_response(
    resp: httpx.Response, service: str = "embedder", unknown: type[DowseError] = InvalidInput
) -> DowseError:
    """The DowseError a non-2xx response of a Dowse ``service`` stands for.

    5xx -> DependencyFailed; a 4xx maps back by the body's error type, else by its status, else ``unknown``.
    """
    try:
        err = resp.json().get("error") or {}
    except (ValueError, AttributeError):
        err = {}
    message = str(err.get("message") or f"{service} answered HTTP {resp.status_code}")
    field, limit = err.get("field"), err.get("limit")
    if resp.status_code >= 500:
        return DependencyFailed(f"{service} failed (HTTP {resp.status_code}): {message}", field=service)
    if resp.status_code in (401, 403):  # the service token is missing or wrong: not the caller's fault
        return DependencyFailed(f"{service} refused this service (HTTP {resp.status_code})", field=service)
    cls = category_for_type(str(err.get("type"))) or category_for_status(resp.status_code) or unknown
    return cls(message, field=field, limit=limit)


async def request_json(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    json: Any = None,
    *,
    service: str,
    unknown: type[DowseError] = InvalidInput,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Any:
    """One JSON call to a Dowse ``service``.

    Transport failures, timeouts, 5xx and invalid JSON become DependencyFailed (``field`` = the service);
    a 4xx becomes the matching DowseError (see :func:`error_from_response`). ``timeout`` overrides the
    client's for this call.
    """
    try:
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        resp = await client.request(method, path, json=json, headers=headers, **extra)
    except httpx.TimeoutException as exc:
        raise DependencyFailed(f"{service} timed out on {path}", field=service) from exc
    except httpx.HTTPError as exc:
        log.warning("%s unreachable at %s: %r", service, client.base_url, exc)
        raise DependencyFailed(f"{service} is unreachable", field=service) from exc
    if resp.status_code >= 300:
        raise error_from_response(resp, service, unknown)
    try:
        return resp.json()
    except ValueError as exc:
        raise DependencyFailed(f"{service} sent invalid JSON on {path}", field=service) from exc


class HttpEmbedderClient:
    """Talks to a remote embedder; one pooled httpx client per instance."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 10.0,
        client: httpx.AsyncClient | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, headers=auth_headers(token)
        )
        self._info: dict[str, Any] | None = None

    async def _request(
        self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        return await request_json(self._client, method, path, json, service="embedder", headers=headers)

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
        """POST /v1/embeddings (base64) and decode to float32 rows; ``priority`` travels as the field."""
        body: dict[str, Any] = {"input": list(texts), "encoding_format": "base64", "truncate": truncate}
        for key, val in (
            ("model", model),
            ("prompt_name", prompt_name),
            ("instruction", instruction),
            ("dimensions", dimensions),
            ("priority", priority),
        ):
            if val is not None:
                body[key] = val
        data = await self._request("POST", "/v1/embeddings", body)
        try:
            rows = sorted(data["data"], key=lambda d: d["index"])
            vecs = np.stack([np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4") for r in rows])
            counts = [int(r.get("tokens", 0)) for r in rows]
            return EmbedResult(vecs.astype(np.float32), counts, str(data.get("model", model or "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DependencyFailed(
                "embedder sent an unexpected /v1/embeddings body", field="embedder"
            ) from exc

    async def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        model: str | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> list[float]:
        """POST /rerank with raw_scores: logits in input order; ``priority`` as ``X-Dowse-Priority``."""
        body: dict[str, Any] = {
            "query": query,
            "texts": list(documents),
            "raw_scores": True,
            "truncate": truncate,
        }
        if model is not None:
            body["model"] = model
        headers = {PRIORITY_HEADER: priority} if priority is not None else None
        data = await self._request("POST", "/rerank", body, headers)
        try:
            scores = [0.0] * len(documents)
            for row in data:
                scores[int(row["index"])] = float(row["score"])
            return scores
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DependencyFailed("embedder sent an unexpected /rerank body", field="embedder") from exc

    async def model_info(self, model: str | None = None) -> dict[str, Any]:
        """Info of ``model`` (default bi-encoder when None) from GET /info."""
        info = await self._request("GET", "/info")
        name = canonical_name(model) if model else info.get("model_id")
        for m in info.get("models", []):
            if m.get("name") == name:
                return dict(m)
        raise UnknownModel(f"model {name!r} is not loaded", field="model", limit=info.get("loaded"))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
