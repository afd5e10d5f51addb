"""HTTP routes of the semantic cache (mounted by the gateway role next to the search routes)."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, Field

from embedder.errors import InvalidInput, NotReady
from gateway.cache.judge import EmbeddingJudge, ExactMatchJudge, Judge
from gateway.cache.service import CacheConfig, CacheService
from gateway.cache.validate import CacheLimits
from services import cache_ui
from services.auth import allowed, service_token

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/cache", tags=["cache"])

NS_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"  # pydantic (Rust regex): $ is the end of the text
ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"  # entry and lookup ids (gateway.cache.store.ID_RE)
Scope = str | dict[str, Any] | None

# Prometheus metrics: module level, defined once per process.
LOOKUPS = Counter("dowse_cache_lookups_total", "Cache lookups by decision", ["decision"])
DEGRADED = Counter("dowse_cache_degraded_lookups_total", "Lookups answered miss because Redis was down")
STORES = Counter("dowse_cache_stores_total", "Cache stores by result", ["result"])
FEEDBACK = Counter("dowse_cache_feedback_total", "Feedback by judged outcome", ["outcome"])
EST_WRONG = Counter("dowse_cache_estimated_wrong_total", "Sum over exploits of the fit's 1 - P(correct|s)")
LATENCY = Histogram(
    "dowse_cache_lookup_seconds",
    "Lookup latency (embedding included)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REDIS_UP = Gauge("dowse_cache_redis_up", "1 while the cache reaches Redis")
ENTRIES = Gauge("dowse_cache_entries", "Entries in this replica's mirror")


class LookupRequest(BaseModel):
    """``POST /v1/cache/lookup``."""

    namespace: str = Field(pattern=NS_PATTERN, max_length=128)
    prompt: str = Field(min_length=1)
    scope: Scope = Field(None, description="system prompt, model, generation params: hashed into the key")
    policy: Literal["adaptive", "static"] = "adaptive"
    max_error: float | None = Field(None, gt=0, lt=1, description="delta of the adaptive policy")
    threshold: float | None = Field(None, ge=0, le=1, description="similarity threshold of the static policy")
    explain: bool = Field(False, description="add the policy's inputs: contrast score, fit, risk, bound")


class LookupResponse(BaseModel):
    """Outcome of a lookup; ``response`` only on a hit."""

    hit: bool
    decision: Literal["exploit", "explore", "miss"]
    lookup_id: str
    response: str | None = None
    similarity: float | None = None
    entry_id: str | None = None
    exploit_probability: float | None = None
    degraded: str | None = None
    explain: dict[str, Any] | None = None


class StoreRequest(BaseModel):
    """``POST /v1/cache/store``."""

    namespace: str = Field(pattern=NS_PATTERN, max_length=128)
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    scope: Scope = None
    metadata: dict[str, Any] | None = None
    ttl_s: int | None = Field(None, ge=1)


class StoreResponse(BaseModel):
    """``stored`` is false (with ``degraded``) when Redis was down and the store was dropped."""

    stored: bool
    entry_id: str | None = None
    evicted: int = 0
    degraded: str | None = None


class FeedbackRequest(BaseModel):
    """``POST /v1/cache/feedback``: namespace + lookup id, or namespace + entry id + prompt (+ scope)."""

    lookup_id: str | None = Field(None, min_length=1, max_length=64, pattern=ID_PATTERN)
    response: str = Field(min_length=1, description="the fresh LLM response")
    namespace: str | None = Field(None, pattern=NS_PATTERN, max_length=128)
    entry_id: str | None = Field(None, min_length=1, max_length=64, pattern=ID_PATTERN)
    prompt: str | None = Field(None, min_length=1)
    scope: Scope = None


class FeedbackResponse(BaseModel):
    """What the judge said and what was stored."""

    correct: bool | None
    entry_id: str | None
    stored_entry_id: str | None
    observations: int


class CacheUnavailable(NotReady):
    """Redis is down: a store cannot be kept (503; lookups keep answering miss)."""

    type = "unavailable"


def _svc(request: Request) -> CacheService:
    svc: CacheService | None = getattr(request.app.state, "cache", None)
    if svc is None or not svc.started:
        raise NotReady("the cache is starting", field="cache")
    return svc


@router.post("/lookup", response_model=LookupResponse, response_model_exclude_none=True)
async def lookup(req: LookupRequest, request: Request) -> LookupResponse:
    """Serve a cached response (exploit), ask for feedback (explore), or miss."""
    svc = _svc(request)
    before = cache_ui.budget_before(svc, req.namespace, req.policy, req.max_error) if req.explain else None
    t0 = time.perf_counter()
    res = await svc.lookup(req.namespace, req.prompt, req.scope, req.policy, req.max_error, req.threshold)
    LATENCY.observe(time.perf_counter() - t0)
    LOOKUPS.labels(res.decision).inc()
    if res.degraded:
        DEGRADED.inc()
    elif res.hit and res.exploit_probability is not None:
        entry = svc.mirror.get(req.namespace, res.entry_id or "")
        fit = svc.fit_for(entry) if entry else None
        if fit is not None and fit.usable and res.similarity is not None:
            import math

            EST_WRONG.inc(1.0 - 1.0 / (1.0 + math.exp(-fit.gamma * (res.similarity - fit.t))))
    out = LookupResponse(**res.__dict__)
    if before is not None:
        out.explain = await cache_ui.explain(
            svc, req.namespace, req.policy, req.max_error, req.threshold, res, before
        )
    return out


@router.post("/store", response_model=StoreResponse, response_model_exclude_none=True)
async def store(req: StoreRequest, request: Request) -> StoreResponse:
    """Store a prompt/response pair (503, dropped and counted, when Redis is down)."""
    svc = _svc(request)
    res = await svc.store(req.namespace, req.prompt, req.response, req.scope, req.metadata, req.ttl_s)
    STORES.labels("stored" if res.stored else "dropped").inc()
    if not res.stored:  # Redis down: the client must know the pair was not kept (issue 10: 503)
        raise CacheUnavailable("cache store (Redis) is unavailable: the pair was not stored", field="redis")
    return StoreResponse(**res.__dict__)


def feedback_source(request: Request) -> str:
    """Who gives feedback: the API key's id when the request carried one, else the client's address."""
    key_id = getattr(getattr(request.state, "principal", None), "key_id", None)
    if key_id:
        return f"key:{key_id}"
    client = request.client
    return f"addr:{client.host if client else 'unknown'}"


@router.post("/feedback", response_model=FeedbackResponse)
async def feedback(req: FeedbackRequest, request: Request) -> FeedbackResponse:
    """Judge the cached response against the fresh one and update the entry's statistics."""
    svc = _svc(request)
    source = feedback_source(request)
    if req.lookup_id is not None:
        if req.namespace is None:  # a lookup id alone authorises nothing: it must match its namespace
            raise InvalidInput("feedback names the lookup's namespace", field="namespace")
        res = await svc.feedback(req.lookup_id, req.response, namespace=req.namespace, source=source)
    elif req.namespace and req.entry_id and req.prompt:
        res = await svc.feedback_entry(
            req.namespace, req.entry_id, req.prompt, req.response, req.scope, source=source
        )
    else:
        raise InvalidInput("give namespace + lookup_id, or namespace + entry_id + prompt", field="lookup_id")
    outcome = "none" if res.correct is None else ("correct" if res.correct else "wrong")
    FEEDBACK.labels(outcome).inc()
    return FeedbackResponse(**res.__dict__)


@router.get("/namespaces")
async def list_namespaces(request: Request) -> dict[str, Any]:
    """Namespace names with their entry and lookup counts (with auth on: those in the key's cache scope)."""
    return await cache_ui.namespaces(_svc(request), lambda ns: allowed(request, "cache", ns))


@router.delete("/namespaces/{namespace}")
async def delete_namespace(namespace: str, request: Request) -> dict[str, Any]:
    """Delete a namespace: its entries, observations and statistics."""
    svc = _svc(request)
    from gateway.cache.validate import check_namespace

    check_namespace(namespace)
    return {"namespace": namespace, "deleted_entries": await svc.delete_namespace(namespace)}


@router.delete("/namespaces/{namespace}/entries/{entry_id}")
async def delete_entry(namespace: str, entry_id: str, request: Request) -> dict[str, Any]:
    """Delete one entry (404 if it does not exist)."""
    from gateway.cache.feedback import UnknownEntry
    from gateway.cache.validate import check_namespace

    svc = _svc(request)
    check_namespace(namespace)
    if not await svc.delete_entry(namespace, entry_id):
        raise UnknownEntry(f"no entry {entry_id!r} in namespace {namespace!r}", field="entry_id")
    return {"namespace": namespace, "deleted": entry_id}


@router.get("/stats")
async def stats(request: Request, namespace: str) -> dict[str, Any]:
    """One namespace's entries, lookups, exploit/explore/miss rates and estimated error rate.

    The namespace is required: an answer never sums other tenants' counters."""
    from gateway.cache.validate import check_namespace

    svc = _svc(request)
    check_namespace(namespace)
    out = await svc.stats(namespace)
    REDIS_UP.set(1 if svc.redis_ok else 0)
    ENTRIES.set(svc.mirror.count())
    return out


def config_from_settings(settings: Any) -> CacheConfig:
    """Map ``CacheSettings`` fields onto the core's plain config."""
    g = settings.__dict__.get
    return CacheConfig(
        default_max_error=g("cache_max_error", 0.02),
        default_threshold=g("cache_threshold", 0.9),
        min_obs=g("cache_min_obs", 10),
        adaptive_rule=g("cache_adaptive_rule", "budget"),
        group_by=g("cache_group_by", "response"),
        store_on_correct_explore=g("cache_store_on_correct_explore", True),
        prior_weight=g("cache_prior_weight", 5.0),
        use_prior=g("cache_use_prior", True),
        min_similarity=g("cache_min_similarity", 0.0),
        source_bin=g("cache_source_bin", CacheConfig.source_bin),
        min_sources=g("cache_min_sources", 1),
        contrast_weight=g("cache_contrast_weight", CacheConfig.contrast_weight),
        max_entries=g("cache_max_entries", 1_000_000),
        default_ttl_s=g("cache_default_ttl_s"),
        refresh_ttl_on_hit=g("cache_refresh_ttl_on_hit", False),
        lookup_ttl_s=g("cache_lookup_ttl_s", 3600),
        op_timeout_s=g("cache_op_timeout_s", 0.04),
        embed_model=g("cache_embed_model"),
        redis_cluster=g("redis_cluster", False),
        store_replicas=g("cache_store_replicas", 0),
        store_replicas_timeout_ms=g("cache_store_replicas_timeout_ms", 200),
        sync_poll_s=g("cache_sync_poll_s", 0.05),
        limits=CacheLimits(
            max_prompt_chars=g("cache_max_prompt_chars", 32_768),
            max_response_chars=g("cache_max_response_chars", 262_144),
        ),
    )


async def start(app: FastAPI, settings: Any) -> None:
    """Connect Redis, rebuild the mirror, follow the change stream (degraded, never unready, when down)."""
    embedder = getattr(app.state, "embedder_client", None)
    app.state.cache_owns_embedder = False
    if embedder is None and getattr(settings, "embedder_url", None):
        from embedder.http_client import HttpEmbedderClient

        embedder = HttpEmbedderClient(
            settings.embedder_url,
            timeout_s=getattr(settings, "embed_timeout_s", 2.0),
            token=service_token(settings),
        )
        app.state.cache_owns_embedder = True
    judge: Judge = ExactMatchJudge()
    if getattr(settings, "cache_judge", "exact") == "embedding" and embedder is not None:
        judge = EmbeddingJudge(embedder, settings.cache_judge_threshold, settings.cache_embed_model)
    svc = CacheService(settings.redis_url, embedder, config_from_settings(settings), judge=judge)
    app.state.cache = svc
    await svc.start()
    REDIS_UP.set(1 if svc.redis_ok else 0)
    # ready once started: a Redis outage degrades the cache (misses) but never makes the gateway unready
    app.state.ready_checks.append(("cache", lambda: svc.started))


async def stop(app: FastAPI) -> None:
    """Stop background tasks, close Redis connections."""
    svc: CacheService | None = getattr(app.state, "cache", None)
    if svc is not None:
        await svc.close()
    if getattr(app.state, "cache_owns_embedder", False) and svc is not None and svc.embedder is not None:
        await svc.embedder.aclose()
