"""Authentication, scopes and quotas for every role: the one route -> scope table and the ASGI middleware.

Every request is matched against :data:`ROUTES` by method and path template (the same templates FastAPI
serves). A route missing from the table is refused (403) to any key, admin included: fail-closed, so a
route added later cannot slip through (``tests/unit/test_auth_routes.py`` enumerates the OpenAPI of
every role against this table). ``/health`` and ``/ready`` are open.

Order of checks: 401 (no, unknown, revoked or expired key) -> 403 (no scope of the route's kind) ->
429 (request quota) -> 404 (a collection / namespace outside the key's globs answers exactly like a
missing one) -> 429 (texts quota). Roles run without the gateway (``--role embedder`` / ``indexer``)
accept only ``DOWSE_SERVICE_TOKEN``, which the gateway's HTTP clients send.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.errors import CollectionNotFound
from services.errors import error_body
from services.keys import AuthUnavailable, KeyStore, KeyVerifier, Principal, parse_key
from services.quota import Limiter, retry_after

log = logging.getLogger(__name__)

OPEN = ()
ANY_KEY = ("any",)
PEEK_LIMIT = 64 * 1024 * 1024  # the most body the middleware buffers to read a collection / namespace


def _n(field: str) -> Callable[[Any], int]:
    """Texts in a request: the length of a list field, 1 for a single string."""

    def count(body: Any) -> int:
        val = body.get(field) if isinstance(body, dict) else None
        return len(val) if isinstance(val, list) else 1

    return count


def _search_texts(body: Any) -> int:
    if not isinstance(body, dict) or body.get("rerank") is not True:
        return 1
    top_n = body.get("rerank_top_n")
    return 1 + (top_n if isinstance(top_n, int) and top_n > 0 else 20)


@dataclass(frozen=True)
class Rule:
    """What a route needs: a scope of one of ``kinds``; the resource it names, and where."""

    kinds: tuple[str, ...]
    resource: str | None = None  # "collection" | "namespace"
    path: str | None = None  # path parameter naming the resource
    body: str | None = None  # JSON body field naming the resource
    query: str | None = None  # query parameter naming the resource; absent -> admin only
    texts: Callable[[Any], int] | None = None  # texts this request costs (embed/rerank/ingest quota)


C, NS = "collection", "namespace"
ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): Rule(OPEN),
    ("GET", "/ready"): Rule(OPEN),
    # the playground's static files (code, no data); the page asks for a key and sends it
    ("GET", "/"): Rule(OPEN),  # a redirect to /ui/
    ("GET", "/ui"): Rule(OPEN),
    ("GET", "/ui/{path:path}"): Rule(OPEN),
    ("GET", "/metrics"): Rule(("admin",)),
    ("GET", "/openapi.json"): Rule(ANY_KEY),
    ("GET", "/docs"): Rule(ANY_KEY),
    ("GET", "/docs/oauth2-redirect"): Rule(ANY_KEY),
    ("GET", "/redoc"): Rule(ANY_KEY),
    # embedder role
    ("POST", "/v1/embeddings"): Rule(("embed",), texts=_n("input")),
    ("POST", "/embed"): Rule(("embed",), texts=_n("inputs")),
    ("POST", "/rerank"): Rule(("embed",), texts=_n("texts")),
    ("POST", "/v1/rerank"): Rule(("embed",), texts=_n("documents")),
    ("POST", "/v2/rerank"): Rule(("embed",), texts=_n("documents")),
    ("GET", "/info"): Rule(("embed",)),
    # indexer role
    ("POST", "/v1/collections"): Rule(("admin",)),
    ("GET", "/v1/collections"): Rule(("search", "write")),  # the handler lists only names in scope
    ("GET", "/v1/collections/{name}"): Rule(("search", "write"), C, path="name"),
    ("DELETE", "/v1/collections/{name}"): Rule(("admin",)),
    ("POST", "/v1/collections/{name}/documents"): Rule(("write",), C, path="name", texts=_n("documents")),
    ("POST", "/v1/collections/{name}/documents/delete"): Rule(("write",), C, path="name"),
    ("POST", "/v1/collections/{name}/documents/get"): Rule(("search",), C, path="name"),
    ("GET", "/v1/collections/{name}/documents/{doc_id:path}"): Rule(("search",), C, path="name"),
    ("POST", "/v1/collections/{name}/search/dense"): Rule(("search",), C, path="name"),
    ("POST", "/v1/collections/{name}/search/lexical"): Rule(("search",), C, path="name"),
    ("POST", "/v1/collections/{name}/search/lexical/stats"): Rule(("search",), C, path="name"),
    ("GET", "/v1/collections/{name}/rotation"): Rule(("search", "write"), C, path="name"),
    ("POST", "/v1/collections/{name}/rotation/refit"): Rule(("write",), C, path="name"),
    ("POST", "/v1/collections/{name}/jobs"): Rule(("write",), C, path="name"),
    ("GET", "/v1/collections/{name}/jobs"): Rule(("write",), C, path="name"),
    ("GET", "/v1/collections/{name}/jobs/{job_id}"): Rule(("write",), C, path="name"),
    # gateway role: search, cache, aliases, keys
    ("POST", "/v1/search"): Rule(("search",), C, body="collection", texts=_search_texts),
    ("GET", "/v1/search/defaults/{collection}"): Rule(("search",), C, path="collection"),
    ("POST", "/v1/cache/lookup"): Rule(("cache",), NS, body="namespace"),
    ("POST", "/v1/cache/store"): Rule(("cache",), NS, body="namespace"),
    # the body names the namespace; the service checks the lookup id belongs to it
    ("POST", "/v1/cache/feedback"): Rule(("cache",), NS, body="namespace"),
    ("DELETE", "/v1/cache/namespaces/{namespace}"): Rule(("cache",), NS, path="namespace"),
    ("DELETE", "/v1/cache/namespaces/{namespace}/entries/{entry_id}"): Rule(("cache",), NS, path="namespace"),
    ("GET", "/v1/cache/stats"): Rule(("cache",), NS, query="namespace"),
    ("GET", "/v1/cache/namespaces"): Rule(("cache",)),  # the handler lists only names in scope
    # playground: relevance judgements of a collection's hits; eval / bench result files (no collection data)
    ("POST", "/v1/judgements"): Rule(("search",), C, body="collection"),
    ("GET", "/v1/judgements/{collection}"): Rule(("search",), C, path="collection"),
    ("GET", "/v1/eval/results"): Rule(ANY_KEY),
    ("GET", "/v1/eval/results/{source}/{name}"): Rule(ANY_KEY),
    ("GET", "/v1/aliases"): Rule(("admin",)),
    ("PUT", "/v1/aliases/{alias}"): Rule(("admin",)),
    ("DELETE", "/v1/aliases/{alias}"): Rule(("admin",)),
    ("GET", "/v1/aliases/{alias}"): Rule(("admin",)),
    ("POST", "/v1/keys"): Rule(("admin",)),
    ("GET", "/v1/keys"): Rule(("admin",)),
    ("DELETE", "/v1/keys/{key}"): Rule(("admin",)),
}
_COMPILED = [(m, t, compile_path(t)[0], r) for (m, t), r in ROUTES.items()]


def match(method: str, path: str) -> tuple[str, Rule, dict[str, str]] | None:
    """The table entry serving ``method path`` (HEAD counts as GET) and its path parameters."""
    method = "GET" if method == "HEAD" else method
    for m, template, regex, rule in _COMPILED:
        if m == method:
            hit = regex.match(path)
            if hit:
                return template, rule, hit.groupdict()
    return None


def route_path(scope: Scope) -> str:
    """The path the router matches: ``path`` less ``root_path`` (as ``starlette._utils.get_route_path``)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def out_of_scope(resource: str, name: str) -> dict[str, Any]:
    """The body a missing collection / namespace answers with (an out-of-scope one answers the same)."""
    if resource == C:
        return {
            "error": CollectionNotFound(f"collection {name!r} does not exist", field="collection").to_dict()
        }
    return error_body("not_found", f"namespace {name!r} does not exist", field="namespace")


def service_token(settings: Any) -> str | None:
    """``DOWSE_SERVICE_TOKEN`` as plain text, for the HTTP clients that call other roles."""
    token = getattr(settings, "service_token", None)
    return token.get_secret_value() if token is not None else None


def is_loopback(host: str) -> bool:
    """``host`` only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """Per-process auth state: the mode, the key verifier, the quota limiter."""

    def __init__(self, settings: Any, roles: list[str], redis: Any | None = None) -> None:
        self.service_role = "gateway" not in roles
        self.mode: str = getattr(settings, "auth", "auto")
        admin = getattr(settings, "admin_key", None)
        token = getattr(settings, "service_token", None)
        self.admin_key = admin.get_secret_value() if admin is not None else None
        self.service_token = token.get_secret_value() if token is not None else None
        self.redis = None if self.service_role else redis
        self.store = KeyStore(self.redis) if self.redis is not None else None
        ttl = float(getattr(settings, "auth_cache_ttl_s", 2.0))
        self.verifier = KeyVerifier(
            self.store,
            admin_key=None if self.service_role else self.admin_key,
            service_token=self.service_token if self.service_role else None,
            ttl_s=ttl,
        )
        self.limiter = Limiter(self.redis)
        self.flag_ttl_s = ttl
        self._on = False
        self._flag_at = -1e9

    async def enforcing(self) -> bool:
        """Whether this request must carry a key (auto: on once a key exists; then stays on)."""
        if self.mode == "off":
            return False
        if self.mode == "required" or self._on:
            return True
        if self.service_role:
            return self.service_token is not None
        if self.admin_key:
            return True
        now = time.monotonic()
        if self.store is not None and now - self._flag_at >= self.flag_ttl_s:
            self._flag_at = now
            try:
                self._on = await asyncio.wait_for(self.store.enabled(), 0.1)
            except Exception:  # Redis down: keep the last answer (once on, on for good)
                log.debug("auth: key flag unreadable")
        return self._on


def _key_label(scope: Scope) -> str:
    """What a refused request carried, safe to log: a key's public id at most, never the key."""
    header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    if header is None:
        return "no key"
    key_id = parse_key(header.decode("latin-1").partition(" ")[2].strip())
    return f"key id {key_id}" if key_id else "not a Dowse key"


def _reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


class AuthMiddleware:
    """ASGI middleware applying :data:`ROUTES` with the process's :class:`Guard`."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and await self.guard.enforcing():
            await receive()  # no websocket route is in the table: refuse the handshake (fail-closed)
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = match(scope["method"], route_path(scope))
        if (found is not None and found[1].kinds == OPEN) or not await self.guard.enforcing():
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._authenticate(scope)
        except AuthUnavailable as exc:
            await _reply(503, {"error": exc.to_dict()}, {"Retry-After": "1"})(scope, receive, send)
            return
        if principal is None:
            log.info("auth: 401 %s %s (%s)", scope["method"], scope["path"], _key_label(scope))
            body = error_body("unauthorized", "missing or unknown API key (Authorization: Bearer <key>)")
            await _reply(401, body, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        denied, receive = await self._authorize(scope, receive, principal, found)
        if denied is not None:
            await denied(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Principal | None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            return None
        scheme, _, token = header.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 256:
            return None
        return await self.guard.verifier.principal(token, service_only=self.guard.service_role)

    async def _authorize(
        self, scope: Scope, receive: Receive, who: Principal, found: tuple[str, Rule, dict[str, str]] | None
    ) -> tuple[JSONResponse | None, Receive]:
        if who.service:
            return None, receive
        if found is None:  # fail-closed: a route missing from the table is refused to every key
            msg = f"{scope['method']} {scope['path']}: no such route in the scope table (services.auth)"
            return _reply(403, error_body("forbidden", msg, field="authorization")), receive
        template, rule, params = found
        if rule.kinds != ANY_KEY and not any(who.has_kind(k) for k in rule.kinds):
            need = " or ".join(f"{k}:<glob>" if k in ("search", "write", "cache") else k for k in rule.kinds)
            msg = f"this key has no scope for {scope['method']} {template} (needs {need})"
            return _reply(403, error_body("forbidden", msg, field="authorization")), receive
        wait = await self._quota(who, "requests", who.rps, 1)
        if wait:
            return self._too_many(wait, who.rps, "requests"), receive
        name: Any = None
        if rule.path:
            name = params.get(rule.path)
        elif rule.query:
            qs = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
            name = qs.get(rule.query)
            if name is None and not who.admin:
                msg = f"{template} without ?{rule.query}= covers every {rule.resource}: admin only"
                return _reply(403, error_body("forbidden", msg, field=rule.query)), receive
        body: Any = None
        needs_body = (rule.body and not all(who.covers_all(k) for k in rule.kinds)) or (
            rule.texts is not None and who.texts_per_s is not None
        )
        if needs_body:
            raw, receive = await _buffer(receive)
            if raw is None:
                msg = f"request body over {PEEK_LIMIT} bytes"
                return _reply(413, error_body("too_large", msg, field="body", limit=PEEK_LIMIT)), receive
            try:
                body = json.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError):
                body = None  # the route answers 400 itself
            if rule.body and isinstance(body, dict):
                name = body.get(rule.body)
        if rule.resource and isinstance(name, str) and not any(who.allows(k, name) for k in rule.kinds):
            return _reply(404, out_of_scope(rule.resource, name)), receive
        if rule.texts is not None and who.texts_per_s is not None:
            cost = rule.texts(body)
            wait = await self._quota(who, "texts", who.texts_per_s, cost)
            if wait:
                return self._too_many(wait, who.texts_per_s, "texts"), receive
        return None, receive

    async def _quota(self, who: Principal, kind: str, rate: float | None, cost: int) -> float:
        if rate is None:
            return 0.0
        burst = who.burst if kind == "requests" else None
        return await self.guard.limiter.take(who.key_id, kind, rate, burst, cost)

    @staticmethod
    def _too_many(wait: float, rate: float | None, kind: str) -> JSONResponse:
        msg = f"quota exceeded: this key may send {rate:g} {kind}/s; retry in {wait:.2f} s"
        body = error_body("rate_limited", msg, field=kind, limit=rate)
        return _reply(429, body, {"Retry-After": retry_after(wait)})


async def _buffer(receive: Receive) -> tuple[bytes | None, Receive]:
    """Read the whole request body and a ``receive`` that replays it (None: over :data:`PEEK_LIMIT`)."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > PEEK_LIMIT:
            return None, receive
        chunks.append(chunk)
        more = msg.get("more_body", False)
    raw = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return raw, replay


def allowed(request: Any, kind: str, name: str) -> bool:
    """The request's key (if auth is on) covers ``kind`` on ``name``; True when auth is off."""
    who: Principal | None = getattr(request.state, "principal", None)
    return who is None or who.allows(kind, name)


def covers_all(request: Any, kind: str) -> bool:
    """Every name of ``kind`` is in the request's scope (auth off, admin, or ``kind:*``)."""
    who: Principal | None = getattr(request.state, "principal", None)
    return who is None or who.covers_all(kind)
