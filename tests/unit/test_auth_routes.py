"""Every route in the OpenAPI schema of every role refuses a request without a key when auth is on.

The apps are built with ``create_app`` (no lifespan: the middleware answers before any handler runs), so a
route added later to any role shows up here and must be listed in ``services.auth.ROUTES``.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from services.app import create_app
from services.auth import OPEN, ROUTES, match
from services.settings import ServeSettings
from tests.conftest import REDIS_URL

ADMIN = "adm-" + "a" * 40
SERVICE = "svc-" + "s" * 40
OPEN_PATHS = {"/health", "/ready"}
ROLE_SETS = [["embedder"], ["indexer"], ["gateway"], ["embedder", "indexer", "gateway"]]


def _settings(**kw: Any) -> ServeSettings:
    base: dict[str, Any] = dict(
        auth="required",
        admin_key=SecretStr(ADMIN),
        service_token=SecretStr(SERVICE),
        redis_url=REDIS_URL,  # a wrong but well-formed key is looked up (and not found) there
    )
    return ServeSettings(**{**base, **kw})  # type: ignore[arg-type]


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    ops = []
    for path, item in app.openapi()["paths"].items():
        for method in item:
            ops.append((method.upper(), path))
    return ops


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def _call(app: FastAPI, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    import asyncio

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            body = None if method in ("GET", "DELETE") else {}
            return await c.request(method, _concrete(path), json=body, headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize("roles", ROLE_SETS, ids=["+".join(r) for r in ROLE_SETS])
def test_every_route_refuses_a_request_without_a_key(roles: list[str]) -> None:
    """No key, a malformed header, or a wrong key: 401 on every route but /health and /ready."""
    app = create_app(_settings(), roles)
    ops = _operations(app)
    assert len(ops) >= 5
    wrong = "dws_0123456789ab_" + "z" * 43
    for method, path in ops:
        for headers in (None, {"Authorization": "Basic abc"}, {"Authorization": f"Bearer {wrong}"}):
            r = _call(app, method, path, headers)
            if path in OPEN_PATHS:
                assert r.status_code != 401, (method, path)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
                assert r.json()["error"]["type"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
    # the schema routes FastAPI keeps out of OpenAPI are closed too
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert _call(app, "GET", path).status_code == 401


@pytest.mark.parametrize("roles", ROLE_SETS, ids=["+".join(r) for r in ROLE_SETS])
def test_every_route_has_a_rule_and_only_health_ready_are_open(roles: list[str]) -> None:
    """The table maps each OpenAPI operation to its own template; OPEN rules are exactly /health, /ready."""
    app = create_app(_settings(), roles)
    for method, path in _operations(app):
        found = match(method, _concrete(path))
        assert found is not None, f"{method} {path} is missing from services.auth.ROUTES"
        template = re.sub(r":\w+\}", "}", found[0])
        assert template == path, (method, path, found[0])
        assert (found[1].kinds == OPEN) == (path in OPEN_PATHS), (method, path)
    open_rules = {t for (_m, t), r in ROUTES.items() if r.kinds == OPEN}
    # /ui: static playground files, no data; /: a redirect to it
    assert open_rules == OPEN_PATHS | {"/", "/ui", "/ui/{path:path}"}


def test_unlisted_route_is_refused_even_to_admin() -> None:
    """Fail-closed: a route the table does not know answers 403 to the admin key."""
    app = create_app(_settings(), ["gateway"])

    @app.get("/v1/secret-new-route")
    async def new_route() -> dict[str, str]:
        return {"leak": "yes"}

    r = _call(app, "GET", "/v1/secret-new-route", {"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 403 and "leak" not in r.text
    assert _call(app, "GET", "/v1/secret-new-route").status_code == 401


def test_service_roles_accept_only_the_service_token() -> None:
    """--role embedder / indexer: the admin key is refused (401); the service token passes the middleware."""
    app = create_app(_settings(), ["indexer"])
    r = _call(app, "GET", "/v1/collections", {"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 401
    r = _call(app, "GET", "/v1/collections", {"Authorization": f"Bearer {SERVICE}"})
    assert r.status_code != 401  # no lifespan here: the handler itself fails, but auth let it through
    gw = create_app(_settings(), ["gateway"])
    r = _call(gw, "GET", "/metrics", {"Authorization": f"Bearer {SERVICE}"})
    assert r.status_code == 401  # the gateway does not take the service token from its callers
    r = _call(gw, "GET", "/metrics", {"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200


def test_auth_off_and_auto_without_keys_keep_todays_behaviour() -> None:
    """DOWSE_AUTH=off, or auto on a service role without a token: no key needed."""
    app = create_app(_settings(auth="off"), ["gateway"])
    assert _call(app, "GET", "/metrics").status_code == 200
    app = create_app(_settings(auth="auto", service_token=None), ["embedder"])
    assert _call(app, "GET", "/metrics").status_code == 200


def test_route_path_strips_root_path_like_starlette() -> None:
    """Behind a proxy prefix the middleware matches the same path the router does."""
    from starlette._utils import get_route_path

    from services.auth import route_path

    for path, root in (
        ("/api/v1/search", "/api"),
        ("/v1/search", ""),
        ("/apix/v1", "/api"),
        ("/api", "/api"),
    ):
        scope = {"path": path, "root_path": root}
        assert route_path(scope) == get_route_path(scope)  # type: ignore[arg-type]


def test_websockets_are_refused_when_auth_is_on() -> None:
    """No websocket route is in the table: a handshake is closed (1008) before any route sees it."""
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    app = create_app(_settings(), ["gateway"])

    @app.websocket("/v1/ws")
    async def ws(sock: WebSocket) -> None:
        await sock.accept()
        await sock.send_text("leak")

    client = TestClient(app)  # no `with`: no lifespan, the middleware answers first
    with pytest.raises(WebSocketDisconnect) as exc, client.websocket_connect("/v1/ws") as sock:
        sock.receive_text()
    assert exc.value.code == 1008
