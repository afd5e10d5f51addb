"""Transport-free half of the clients: each API call as a ``Call`` (method, path, body, parser), the retry
policy, and base64 vector decoding. ``DowseClient`` and ``AsyncDowseClient`` only send ``Call``s."""

from __future__ import annotations

import base64
import email.utils
import random
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from dowse_client import types as t

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 503})
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and the function turning its JSON answer into a typed result."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries on 429 / 503 and connection failures: exponential backoff with jitter, or ``Retry-After``."""

    max_retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based); a server's ``Retry-After`` wins, capped."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff_s)
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        return base * (0.5 + random.random() / 2)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def decode_vector(b64: str) -> list[float]:
    """A base64 little-endian float32 vector (the OpenAI base64 encoding) as floats."""
    arr = array("f")
    arr.frombytes(base64.b64decode(b64))
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tolist()


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _seg(name: str) -> str:
    return quote(name, safe="")


def _docs(documents: Sequence[t.Document | dict[str, Any]]) -> list[dict[str, Any]]:
    return [d.to_json() if isinstance(d, t.Document) else d for d in documents]


# ---- calls ------------------------------------------------------------------------------------------
def search(collection: str, query: str, **options: Any) -> Call[t.SearchResult]:
    """``POST /v1/search`` (options: top_k, mode, fusion, rrf_k, alpha, normalization, candidates, rerank,
    rerank_top_n, rerank_weight, filters, instruction, explain; None = the server's default)."""
    body = {"collection": collection, "query": query, **_drop_none(options)}
    return Call("POST", "/v1/search", t.SearchResult.from_json, body)


def embed(
    texts: str | Sequence[str],
    *,
    model: str | None = None,
    dimensions: int | None = None,
    input_type: str | None = None,
    prompt_name: str | None = None,
    instruction: str | None = None,
    truncate: bool | None = None,
    priority: str | None = None,
) -> Call[t.Embeddings]:
    """``POST /v1/embeddings`` in base64 (a third of the bytes of JSON floats, exact float32)."""
    inputs = [texts] if isinstance(texts, str) else list(texts)
    body = _drop_none(
        {
            "input": inputs,
            "model": model,
            "dimensions": dimensions,
            "input_type": input_type,
            "prompt_name": prompt_name,
            "instruction": instruction,
            "truncate": truncate,
            "priority": priority,
            "encoding_format": "base64",
        }
    )

    def parse(d: dict[str, Any]) -> t.Embeddings:
        rows = sorted(d["data"], key=lambda r: r["index"])
        vecs = [
            decode_vector(r["embedding"]) if isinstance(r["embedding"], str) else r["embedding"] for r in rows
        ]
        usage = d.get("usage") or {}
        return t.Embeddings(vecs, d.get("model", ""), int(usage.get("prompt_tokens", 0)),
                            [int(r.get("tokens", 0)) for r in rows])  # fmt: skip

    return Call("POST", "/v1/embeddings", parse, body)


def rerank(
    query: str,
    documents: Sequence[str],
    *,
    top_n: int | None = None,
    model: str | None = None,
    return_documents: bool = False,
    truncate: bool | None = None,
) -> Call[list[t.RerankResult]]:
    """``POST /v1/rerank`` (Cohere shape): results by descending relevance."""
    body = _drop_none(
        {"query": query, "documents": list(documents), "top_n": top_n, "model": model,
         "return_documents": return_documents, "truncate": truncate}
    )  # fmt: skip
    return Call("POST", "/v1/rerank", lambda d: [t.RerankResult.from_json(r) for r in d["results"]], body)


def create_collection(name: str, **options: Any) -> Call[t.Collection]:
    """``POST /v1/collections`` (options: model, dims, metric, index, analyzer, chunk_tokens, ...)."""
    body = {"name": name, **_drop_none(options)}
    return Call("POST", "/v1/collections", t.Collection.from_json, body)


def list_collections() -> Call[list[t.Collection]]:
    """``GET /v1/collections``."""
    return Call("GET", "/v1/collections", lambda d: [t.Collection.from_json(c) for c in d["collections"]])


def get_collection(name: str) -> Call[t.Collection]:
    """``GET /v1/collections/{name}``."""
    return Call("GET", f"/v1/collections/{_seg(name)}", t.Collection.from_json)


def delete_collection(name: str) -> Call[None]:
    """``DELETE /v1/collections/{name}``."""
    return Call("DELETE", f"/v1/collections/{_seg(name)}", lambda _: None)


def upsert(
    collection: str,
    documents: Sequence[t.Document | dict[str, Any]],
    *,
    model: str | None = None,
    dims: int | None = None,
) -> Call[t.UpsertResult]:
    """``POST /v1/collections/{c}/documents``: one all-or-nothing batch."""
    body = _drop_none({"documents": _docs(documents), "model": model, "dims": dims})
    return Call("POST", f"/v1/collections/{_seg(collection)}/documents", t.UpsertResult.from_json, body)


def delete_documents(collection: str, ids: Sequence[str]) -> Call[int]:
    """``POST /v1/collections/{c}/documents/delete``: how many were deleted."""
    path = f"/v1/collections/{_seg(collection)}/documents/delete"
    return Call("POST", path, lambda d: int(d["deleted"]), {"ids": list(ids)})


def get_documents(collection: str, ids: Sequence[str]) -> Call[list[t.Document]]:
    """``POST /v1/collections/{c}/documents/get``: stored documents in ``ids`` order, missing skipped."""
    path = f"/v1/collections/{_seg(collection)}/documents/get"
    return Call("POST", path, lambda d: [t.Document.from_json(x) for x in d["documents"]], {"ids": list(ids)})


def start_job(collection: str, path: str, format: str | None = None) -> Call[t.Job]:
    """``POST /v1/collections/{c}/jobs``: ingest a server-side file in the background."""
    body = _drop_none({"path": path, "format": format})
    return Call("POST", f"/v1/collections/{_seg(collection)}/jobs", t.Job.from_json, body)


def get_job(collection: str, job_id: str) -> Call[t.Job]:
    """``GET /v1/collections/{c}/jobs/{id}``."""
    return Call("GET", f"/v1/collections/{_seg(collection)}/jobs/{_seg(job_id)}", t.Job.from_json)


def list_jobs(collection: str) -> Call[list[t.Job]]:
    """``GET /v1/collections/{c}/jobs``: newest first."""
    path = f"/v1/collections/{_seg(collection)}/jobs"
    return Call("GET", path, lambda d: [t.Job.from_json(j) for j in d["jobs"]])


def cache_lookup(
    namespace: str,
    prompt: str,
    *,
    scope: str | dict[str, Any] | None = None,
    policy: t.CachePolicy | None = None,
    max_error: float | None = None,
    threshold: float | None = None,
) -> Call[t.CacheLookup]:
    """``POST /v1/cache/lookup``."""
    body = _drop_none({"namespace": namespace, "prompt": prompt, "scope": scope, "policy": policy,
                       "max_error": max_error, "threshold": threshold})  # fmt: skip
    return Call("POST", "/v1/cache/lookup", t.CacheLookup.from_json, body)


def cache_store(
    namespace: str,
    prompt: str,
    response: str,
    *,
    scope: str | dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    ttl_s: int | None = None,
) -> Call[t.CacheStore]:
    """``POST /v1/cache/store``."""
    body = _drop_none({"namespace": namespace, "prompt": prompt, "response": response, "scope": scope,
                       "metadata": metadata, "ttl_s": ttl_s})  # fmt: skip
    return Call("POST", "/v1/cache/store", t.CacheStore.from_json, body)


def cache_feedback(namespace: str, lookup_id: str, response: str) -> Call[t.CacheFeedback]:
    """``POST /v1/cache/feedback`` for an explored lookup: the fresh response to judge the cached one by."""
    body = {"namespace": namespace, "lookup_id": lookup_id, "response": response}
    return Call("POST", "/v1/cache/feedback", t.CacheFeedback.from_json, body)


def cache_stats(namespace: str | None = None) -> Call[dict[str, Any]]:
    """``GET /v1/cache/stats``."""
    return Call("GET", "/v1/cache/stats", lambda d: d, params=_drop_none({"namespace": namespace}) or None)


def cache_delete_namespace(namespace: str) -> Call[int]:
    """``DELETE /v1/cache/namespaces/{ns}``: how many entries were deleted."""
    return Call("DELETE", f"/v1/cache/namespaces/{_seg(namespace)}", lambda d: int(d["deleted_entries"]))


def ready() -> Call[dict[str, Any]]:
    """``GET /ready`` (raises NotReady while starting)."""
    return Call("GET", "/ready", lambda d: d)
