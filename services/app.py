"""Application factory: ``create_app(settings, roles)`` mounts the routes of the chosen roles.

Each role module (``services.embedder_api``, ``services.indexer_api``, ``services.gateway_api``,
``services.cache_api``, ``services.ui_api``) exposes ``router`` plus ``async start(app, settings)`` /
``async stop(app)``.
Shared objects live on ``app.state``:

- ``embedder_client``: an ``embedder.client.EmbedderClient`` (in-process when the embedder role is
  mounted here, else HTTP to ``settings.embedder_url``)
- ``indexer_client``: the gateway's view of the indexer (in-process or HTTP)
- ``ready_checks``: list of ``(name, callable -> bool)`` consulted by ``GET /ready``
- ``auth_guard``: the process's :class:`services.auth.Guard` (keys, scopes, quotas; see docs/security.md)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from importlib import import_module
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.auth import AuthMiddleware, Guard
from services.errors import error_body, install_error_handlers
from services.guard import DEFAULT_MAX_BODY_BYTES, RequestGuard, default_allowed_hosts

log = logging.getLogger(__name__)

ROLE_MODULES: dict[str, list[str]] = {
    "embedder": ["services.embedder_api"],
    "indexer": ["services.indexer_api", "services.aliases_api"],
    "gateway": [
        "services.gateway_api",
        "services.cache_api",
        "services.keys_api",
        "services.shards_api",
        "services.ui_api",
    ],
}
# the gateway's collection routes front remote indexer shards; with the indexer in the same process its
# own routes answer instead
SHADOWED_BY = {"services.shards_api": "indexer"}
ALL_ROLES = ("embedder", "indexer", "gateway")


def _auth_redis(settings: Any) -> Any:
    """The Redis client of the key store and quota buckets (connects on first use)."""
    url = getattr(settings, "redis_url", None)
    if not url:
        return None
    from gateway.cache.redis_client import is_cluster, make_client

    return make_client(url, is_cluster(url, getattr(settings, "redis_cluster", False)), 0.5, 0.5)


def create_app(settings: Any, roles: Iterable[str] = ALL_ROLES) -> FastAPI:
    """Build the FastAPI app for ``roles`` (embedder → indexer → gateway start order)."""
    roles = [r for r in ALL_ROLES if r in set(roles)]
    modules = [
        import_module(name)
        for role in roles
        for name in ROLE_MODULES[role]
        if SHADOWED_BY.get(name) not in roles
    ]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = []
        try:
            for mod in modules:
                await mod.start(app, settings)
                started.append(mod)
            yield
        finally:
            for mod in reversed(started):
                try:
                    await mod.stop(app)
                except Exception:  # pragma: no cover - best effort on shutdown
                    log.exception("error stopping %s", mod.__name__)
            if auth_redis is not None:
                await auth_redis.aclose()

    app = FastAPI(
        title="Dowse",
        version="0.1.0",
        description="Dense retrieval: embeddings, indexing, hybrid search, semantic cache",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.roles = roles
    app.state.ready_checks: list[tuple[str, Callable[[], bool]]] = []
    install_error_handlers(app)
    auth_redis = _auth_redis(settings) if "gateway" in roles else None
    app.state.auth_guard = Guard(settings, roles, auth_redis)
    app.add_middleware(AuthMiddleware, guard=app.state.auth_guard)
    allowed = getattr(settings, "allowed_hosts", None)
    if allowed is None:
        allowed = default_allowed_hosts(str(getattr(settings, "host", "127.0.0.1")))
    app.add_middleware(
        RequestGuard,
        max_body_bytes=int(getattr(settings, "max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
        allowed_hosts=None if "*" in allowed else allowed,
    )

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "roles": roles}

    @app.get("/ready", tags=["ops"])
    async def ready() -> Response:
        """Readiness: 503 until every component (models, indexes, ...) is loaded."""
        states = {name: bool(check()) for name, check in app.state.ready_checks}
        if all(states.values()):
            return JSONResponse({"status": "ready", "components": states})
        waiting = [n for n, ok in states.items() if not ok]
        body = error_body("not_ready", f"not ready: {', '.join(waiting)}", field="components")
        body["components"] = states
        return JSONResponse(status_code=503, content=body)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for mod in modules:
        app.include_router(mod.router)
    return app
