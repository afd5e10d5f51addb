"""HTTP routes of the gateway role (mounted by services.app.create_app): ``POST /v1/search``."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field

from embedder.errors import DowseError, NotReady
from gateway.pipeline import SearchLimits, SearchPipeline, SearchRequest, SearchResponse
from services.auth import service_token

log = logging.getLogger(__name__)

router = APIRouter(tags=["search"])
LIMITS = SearchLimits()

SEARCH_LATENCY = Histogram(
    "dowse_search_seconds",
    "Search latency by mode",
    ["mode", "rerank"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SEARCH_DEGRADED = Counter(
    "dowse_search_degraded_total",
    "Fallbacks in searches answered in degraded form (reason: <stage>_<cause>, e.g. embed_timeout)",
    ["mode", "reason"],
)
SEARCH_PARTIAL = Counter(
    "dowse_search_partial_total", "Searches answered without some shard's hits", ["shard"]
)
SEARCH_ERRORS = Counter("dowse_search_errors_total", "Searches answered with an error", ["type"])


class SearchBody(BaseModel):
    """``POST /v1/search`` request (see DESIGN.md, contract details)."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, max_length=128, description="collection name")
    # Length limits on `query` are enforced by the pipeline (422 naming field "query"): services.errors
    # drops a loc part literally named "query" when it builds the field name of a validation error.
    query: str = Field(description=f"1..{LIMITS.max_query_chars} characters, not blank")
    top_k: int = Field(10, ge=1, le=LIMITS.max_top_k)
    mode: Literal["bm25", "dense", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "convex"] = "rrf"
    rrf_k: float = Field(60.0, ge=0, le=10_000, description="RRF constant k")
    alpha: float | None = Field(None, ge=0, le=1, description="convex weight of the dense list (default 0.5)")
    normalization: Literal["min-max", "z-score"] = "min-max"
    candidates: int | None = Field(
        None, ge=1, le=LIMITS.max_candidates, description="hits per retriever (default max(100, top_k))"
    )
    rerank: bool = False
    rerank_top_n: int | None = Field(
        None, ge=1, le=LIMITS.max_rerank_top_n, description="fused candidates sent to the cross-encoder"
    )
    rerank_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="weight of the cross-encoder score vs the first stage (1 = plain CE order); default: "
        "chosen by `dowse eval` for the collection, else built in per first stage (GET /v1/search/defaults)",
    )
    filters: dict[str, Any] | None = Field(
        None, description='metadata filters: {"year": 2020}, {"tag": {"in": [..]}}, {"year": {"gte": 2000}}'
    )
    instruction: str | None = Field(
        None,
        max_length=LIMITS.max_query_chars,
        description="query-encoder prompt text (overrides the model's)",
    )
    explain: bool = False


class HitOut(BaseModel):
    """One hit."""

    id: str
    score: float
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    explain: dict[str, Any] | None = None


class SearchOut(BaseModel):
    """``POST /v1/search`` response."""

    hits: list[HitOut]
    timings_ms: dict[str, float]
    degraded: bool | str = False
    partial: bool = Field(False, description="true: some shards did not answer; their hits are missing")
    failed_shards: list[dict[str, Any]] = Field(
        default_factory=list, description='[{"shard": i, "reason": "..."}] when partial'
    )


def _server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={ms:.3f}" for name, ms in timings.items())


def _body(resp: SearchResponse) -> dict[str, Any]:
    hits = []
    for h in resp.hits:
        out: dict[str, Any] = {
            "id": h.id,
            "score": h.score,
            "title": h.title,
            "text": h.text,
            "metadata": h.metadata,
        }
        if h.explain is not None:
            out["explain"] = h.explain
        hits.append(out)
    return {
        "hits": hits,
        "timings_ms": resp.timings_ms,
        "degraded": resp.degraded or False,
        "partial": resp.partial,
        "failed_shards": resp.failed_shards,
    }


@router.post(
    "/v1/search",
    response_model=SearchOut,
    responses={
        404: {"description": "unknown collection"},
        422: {"description": "invalid field (the body names it and its limit)"},
        424: {"description": "every retriever failed"},
        503: {"description": "not ready"},
    },
)
async def search(body: SearchBody, request: Request) -> JSONResponse:
    """Hybrid BM25 + dense search with fusion and optional cross-encoder rerank."""
    pipeline: SearchPipeline | None = getattr(request.app.state, "search_pipeline", None)
    if pipeline is None:
        raise NotReady("search pipeline is not started", field="gateway")
    req = SearchRequest(**body.model_dump())
    with SEARCH_LATENCY.labels(body.mode, str(body.rerank).lower()).time():
        try:
            resp = await pipeline.search(req)
        except DowseError as exc:
            SEARCH_ERRORS.labels(exc.type).inc()
            raise
    if resp.degraded:
        for reason in resp.degraded_reasons or ["unknown"]:
            SEARCH_DEGRADED.labels(body.mode, reason).inc()
    for failure in resp.failed_shards:
        SEARCH_PARTIAL.labels(str(failure["shard"])).inc()
    return JSONResponse(_body(resp), headers={"Server-Timing": _server_timing(resp.timings_ms)})


@router.get(
    "/v1/search/defaults/{collection}",
    responses={404: {"description": "unknown collection"}, 422: {"description": "invalid name"}},
)
async def search_defaults(collection: str, request: Request) -> dict[str, Any]:
    """The rerank weight served per first stage on a collection and where it came from."""
    pipeline: SearchPipeline | None = getattr(request.app.state, "search_pipeline", None)
    if pipeline is None:
        raise NotReady("search pipeline is not started", field="gateway")
    return await pipeline.served_defaults(collection)


def shard_urls(value: str) -> list[str]:
    """The shard map: comma-separated indexer URLs, shard 0 first."""
    urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
    if not urls:
        raise RuntimeError("DOWSE_INDEXER_URL lists no indexer")
    return urls


def sharded_client(settings: Any, token: str | None = None) -> Any:
    """A ShardedIndexerClient over ``settings.indexer_url`` (one indexer = a map of one shard)."""
    from gateway.shards import ShardedIndexerClient
    from indexer.http_client import HttpIndexerClient

    # each shard answers within 90 % of the retrieve budget, so the merge of the others is still in time
    shard_timeout = getattr(settings, "shard_timeout_s", None) or 0.9 * settings.retrieve_timeout_s
    clients = [
        HttpIndexerClient(u, timeout_s=max(shard_timeout, settings.retrieve_timeout_s) + 1.0, token=token)
        for u in shard_urls(settings.indexer_url)
    ]
    return ShardedIndexerClient(
        clients, timeout_s=shard_timeout, global_bm25=getattr(settings, "bm25_global_stats", True)
    )


def build_pipeline(settings: Any, embedder: Any, indexer: Any) -> SearchPipeline:
    """A SearchPipeline configured from GatewaySettings."""
    return SearchPipeline(
        embedder,
        indexer,
        embed_timeout_s=settings.embed_timeout_s,
        retrieve_timeout_s=settings.retrieve_timeout_s,
        rerank_timeout_s=settings.rerank_timeout_s,
        search_timeout_s=settings.search_timeout_s,
        default_candidates=settings.search_candidates,
        default_alpha=settings.search_alpha,
        default_rerank_top_n=settings.rerank_top_n,
        default_rerank_weight=settings.rerank_weight,
        rerank_model=settings.rerank_model,
        limits=LIMITS,
    )


async def start(app: FastAPI, settings: Any) -> None:
    """Build the search pipeline onto ``app.state.search_pipeline`` (clients: in-process or HTTP)."""
    owned: list[Any] = []
    embedder = getattr(app.state, "embedder_client", None)
    if embedder is None:
        if not settings.embedder_url:
            raise RuntimeError("gateway needs an embedder: mount the embedder role or set DOWSE_EMBEDDER_URL")
        from embedder.http_client import HttpEmbedderClient

        embedder = HttpEmbedderClient(
            settings.embedder_url,
            timeout_s=max(settings.rerank_timeout_s, 10.0),
            token=service_token(settings),
        )
        app.state.embedder_client = embedder
        owned.append(embedder)
    indexer = getattr(app.state, "indexer_client", None)
    if indexer is None:
        if not settings.indexer_url:
            raise RuntimeError("gateway needs an indexer: mount the indexer role or set DOWSE_INDEXER_URL")
        indexer = sharded_client(settings, token=service_token(settings))
        app.state.indexer_client = indexer
        app.state.shard_client = indexer
        owned.append(indexer)
    app.state.search_pipeline = build_pipeline(settings, embedder, indexer)
    app.state.gateway_owned_clients = owned
    app.state.ready_checks.append(
        ("gateway", lambda: getattr(app.state, "search_pipeline", None) is not None)
    )
    log.info(
        "gateway search ready (embedder: %s, indexer: %s)",
        type(embedder).__name__,
        type(indexer).__name__,
    )


async def stop(app: FastAPI) -> None:
    """Close the HTTP clients this role opened."""
    app.state.search_pipeline = None
    for client in getattr(app.state, "gateway_owned_clients", []):
        try:
            await client.aclose()
        except Exception:  # pragma: no cover - best effort on shutdown
            log.exception("error closing %s", type(client).__name__)
    app.state.gateway_owned_clients = []
