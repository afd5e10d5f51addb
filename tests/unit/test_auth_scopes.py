"""Scopes over a real key store (Redis) and real indexer/search/cache routes (plumbing embedder).

A ``search:demo`` key searches demo but cannot search ``other`` (answered exactly like a missing
collection), write demo, use the cache, or create keys; out-of-scope names never reveal existence.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from pydantic import SecretStr

from gateway.cache.service import CacheConfig, CacheService
from gateway.pipeline import SearchPipeline
from indexer.fake_embedder import FakeEmbedder
from indexer.inprocess import InProcessIndexerClient
from indexer.service import IndexerService
from services import cache_api, gateway_api, indexer_api, keys_api
from services.auth import AuthMiddleware, Guard
from services.errors import install_error_handlers
from services.keys import KEYS_HASH, KeyStore
from services.settings import ServeSettings
from tests.conftest import REDIS_URL
from tests.integration.cache_helpers import HashEmbedder

pytestmark = [pytest.mark.timeout(120)]
ADMIN = "adm-" + "k" * 40
DOCS = [{"id": f"d{i}", "text": f"aspirin heart dose {i}"} for i in range(5)]


class Env:
    """The app, an HTTP client on it and a key store."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, store: KeyStore, redis: Any) -> None:
        self.app, self.c, self.store, self.redis = app, client, store, redis

    async def key(self, *scopes: str, **quota: Any) -> dict[str, str]:
        key, _ = await self.store.create("t", list(scopes), **quota)
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    redis = aioredis.Redis.from_url(REDIS_URL)
    await redis.flushdb()
    fake = FakeEmbedder()
    idx = IndexerService(tmp_path / "idx", fake)
    await idx.open()
    settings = ServeSettings(auth="required", admin_key=SecretStr(ADMIN), redis_url=REDIS_URL, model="fake")  # type: ignore[call-arg]
    app = FastAPI()
    install_error_handlers(app)
    app.state.settings = settings
    app.state.auth_guard = Guard(settings, ["embedder", "indexer", "gateway"], redis)
    app.add_middleware(AuthMiddleware, guard=app.state.auth_guard)
    for mod in (indexer_api, gateway_api, cache_api, keys_api):
        app.include_router(mod.router)
    app.state.indexer_service = idx
    app.state.search_pipeline = SearchPipeline(fake, InProcessIndexerClient(idx), embed_timeout_s=5)  # type: ignore[arg-type]
    cache = CacheService(REDIS_URL, HashEmbedder(), CacheConfig(op_timeout_s=1.0))  # type: ignore[arg-type]
    await cache.start()
    app.state.cache = cache
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for name in ("demo", "other"):
            r = await c.post("/v1/collections", json={"name": name, "model": "fake"}, headers=admin)
            assert r.status_code == 201, r.text
            r = await c.post(f"/v1/collections/{name}/documents", json={"documents": DOCS}, headers=admin)
            assert r.status_code == 200, r.text
        yield Env(app, c, KeyStore(redis), redis)
    await cache.close()
    await idx.close()
    await redis.flushdb()
    await redis.aclose()


def _same_as_missing(out_of_scope: httpx.Response, missing: httpx.Response, name: str, ghost: str) -> None:
    assert out_of_scope.status_code == missing.status_code == 404
    assert out_of_scope.text == missing.text.replace(ghost, name)


async def test_search_key_is_confined_to_its_collection(env: Env) -> None:
    """search:demo: demo yes; other 404 like a missing one; no write, cache, keys, admin."""
    c, h = env.c, await env.key("search:demo")
    r = await c.post("/v1/search", json={"collection": "demo", "query": "aspirin"}, headers=h)
    assert r.status_code == 200 and r.json()["hits"], r.text
    other = await c.post("/v1/search", json={"collection": "other", "query": "aspirin"}, headers=h)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    missing = await c.post("/v1/search", json={"collection": "nope9", "query": "aspirin"}, headers=admin)
    _same_as_missing(other, missing, "other", "nope9")
    # the same through every indexer read route that names a collection
    for method, path, body in (
        ("GET", "/v1/collections/{}", None),
        ("POST", "/v1/collections/{}/documents/get", {"ids": ["d1"]}),
        ("GET", "/v1/collections/{}/documents/d1", None),
        ("POST", "/v1/collections/{}/search/lexical", {"query": "aspirin"}),
    ):
        ok = await c.request(method, path.format("demo"), json=body, headers=h)
        assert ok.status_code == 200, (path, ok.text)
        oos = await c.request(method, path.format("other"), json=body, headers=h)
        miss = await c.request(method, path.format("nope9"), json=body, headers=admin)
        _same_as_missing(oos, miss, "other", "nope9")
    listed = await c.get("/v1/collections", headers=h)
    assert [x["name"] for x in listed.json()["collections"]] == ["demo"]
    forbidden = [
        ("POST", "/v1/collections/demo/documents", {"documents": DOCS[:1]}),
        ("POST", "/v1/collections/demo/documents/delete", {"ids": ["d1"]}),
        ("POST", "/v1/collections/demo/jobs", {"path": "x.jsonl"}),
        ("POST", "/v1/cache/lookup", {"namespace": "demo", "prompt": "hi"}),
        ("POST", "/v1/cache/store", {"namespace": "demo", "prompt": "hi", "response": "yo"}),
        ("GET", "/v1/cache/stats", None),
        ("POST", "/v1/keys", {"name": "x", "scopes": ["admin"]}),
        ("GET", "/v1/keys", None),
        ("POST", "/v1/collections", {"name": "mine"}),
        ("DELETE", "/v1/collections/demo", None),
    ]
    for method, path, body in forbidden:
        r = await c.request(method, path, json=body, headers=h)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert r.json()["error"]["type"] == "forbidden"
    assert (await c.get("/v1/collections/demo/documents/d1", headers=h)).status_code == 200  # not deleted


async def test_write_and_glob_scopes(env: Env) -> None:
    """write:de* writes demo, not other (404 like missing); search:* reads both; globs are case-sensitive."""
    c = env.c
    w = await env.key("write:de*")
    r = await c.post("/v1/collections/demo/documents", json={"documents": DOCS[:1]}, headers=w)
    assert r.status_code == 200, r.text
    r = await c.post("/v1/collections/other/documents", json={"documents": DOCS[:1]}, headers=w)
    assert r.status_code == 404 and r.json()["error"]["field"] == "collection"
    r = await c.post("/v1/search", json={"collection": "demo", "query": "aspirin"}, headers=w)
    assert r.status_code == 403
    s = await env.key("search:*")
    for name in ("demo", "other"):
        r = await c.post("/v1/search", json={"collection": name, "query": "aspirin"}, headers=s)
        assert r.status_code == 200
    upper = await env.key("search:DEMO")
    r = await c.post("/v1/search", json={"collection": "demo", "query": "aspirin"}, headers=upper)
    assert r.status_code == 404


async def test_cache_namespaces_and_feedback_by_lookup_id(env: Env) -> None:
    """cache:app1 cannot read app2, nor send feedback on app2's lookup ids (answered like an unknown id)."""
    c = env.c
    k1, k2 = await env.key("cache:app1"), await env.key("cache:app2")
    r = await c.post(
        "/v1/cache/store", json={"namespace": "app2", "prompt": "q#1", "response": "a"}, headers=k2
    )
    assert r.status_code == 200 and r.json()["stored"], r.text
    r = await c.post("/v1/cache/lookup", json={"namespace": "app2", "prompt": "q#1"}, headers=k1)
    assert r.status_code == 404 and r.json()["error"]["field"] == "namespace"
    r = await c.get("/v1/cache/stats", params={"namespace": "app2"}, headers=k1)
    assert r.status_code == 404
    r = await c.delete("/v1/cache/namespaces/app2", headers=k1)
    assert r.status_code == 404
    r = await c.get("/v1/cache/stats", headers=k1)  # no namespace: every tenant's numbers, admin only
    assert r.status_code == 403 and r.json()["error"]["field"] == "namespace"
    assert (await c.get("/v1/cache/stats", params={"namespace": "app1"}, headers=k1)).status_code == 200
    lk = await c.post("/v1/cache/lookup", json={"namespace": "app2", "prompt": "q#2"}, headers=k2)
    lookup_id = lk.json()["lookup_id"]
    # feedback must name the lookup's namespace (a lookup id alone authorises nothing): 422 without it
    bare = await c.post("/v1/cache/feedback", json={"lookup_id": lookup_id, "response": "evil"}, headers=k1)
    assert bare.status_code == 422 and bare.json()["error"]["field"] == "namespace"
    # the victim's namespace is out of k1's scope: answers like a missing one
    body = {"lookup_id": lookup_id, "namespace": "app2", "response": "evil"}
    assert (await c.post("/v1/cache/feedback", json=body, headers=k1)).status_code == 404
    # naming its own namespace does not help: the lookup id is not in it, so it answers like an unknown id
    stolen = await c.post(
        "/v1/cache/feedback",
        json={"lookup_id": lookup_id, "namespace": "app1", "response": "evil"},
        headers=k1,
    )
    unknown = await c.post(
        "/v1/cache/feedback",
        json={"lookup_id": "0" * 32, "namespace": "app1", "response": "evil"},
        headers=k1,
    )
    assert stolen.status_code == unknown.status_code == 404
    assert stolen.text == unknown.text.replace("0" * 32, lookup_id)
    own = await c.post(
        "/v1/cache/feedback", json={"lookup_id": lookup_id, "namespace": "app2", "response": "a"}, headers=k2
    )
    assert own.status_code == 200, own.text


async def test_duplicate_json_keys_resolve_like_the_handler(env: Env) -> None:
    """The middleware reads the body with the handler's parser: the last duplicate key wins in both."""
    h = await env.key("search:demo")
    raw = b'{"collection": "demo", "query": "aspirin", "collection": "other"}'
    r = await env.c.post("/v1/search", content=raw, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 404


async def test_revoked_expired_and_admin_api(env: Env) -> None:
    """Keys made over HTTP work at once, list without secrets, and are refused once revoked."""
    c, admin = env.c, {"Authorization": f"Bearer {ADMIN}"}
    r = await c.post("/v1/keys", json={"name": "app", "scopes": ["search:demo"]}, headers=admin)
    assert r.status_code == 201, r.text
    key, kid = r.json()["key"], r.json()["id"]
    h = {"Authorization": f"Bearer {key}"}
    assert (
        await c.post("/v1/search", json={"collection": "demo", "query": "x"}, headers=h)
    ).status_code == 200
    listed = (await c.get("/v1/keys", headers=admin)).text
    stored = json.loads(await env.redis.hget(KEYS_HASH, kid))
    assert key not in listed and stored["hash"] not in listed and key not in json.dumps(stored)
    assert (await c.delete(f"/v1/keys/{kid}", headers=admin)).json() == {"revoked": [kid]}
    env.app.state.auth_guard.verifier._cache.clear()  # the 2 s TTL, without sleeping (see integration test)
    assert (
        await c.post("/v1/search", json={"collection": "demo", "query": "x"}, headers=h)
    ).status_code == 401
    r = await c.post("/v1/keys", json={"name": "bad", "scopes": ["search"]}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["field"] == "scopes"
    key2, rec = await env.store.create("short", ["search:demo"], expires_at=None)
    rec.expires_at = 1.0  # expired long ago
    from dataclasses import asdict

    await env.redis.hset(KEYS_HASH, rec.id, json.dumps(asdict(rec)))
    h2 = {"Authorization": f"Bearer {key2}"}
    assert (
        await c.post("/v1/search", json={"collection": "demo", "query": "x"}, headers=h2)
    ).status_code == 401
    tampered = {"Authorization": f"Bearer {key[:-3]}abc"}  # right id, wrong secret
    assert (await c.get("/v1/collections", headers=tampered)).status_code == 401


async def test_texts_quota_counts_inputs(env: Env) -> None:
    """texts_per_s=5: a batch of 5 documents passes, the next one answers 429 with Retry-After."""
    h = await env.key("write:demo", texts_per_s=5)
    docs = [{"id": f"q{i}", "text": "aspirin"} for i in range(5)]
    r = await env.c.post("/v1/collections/demo/documents", json={"documents": docs}, headers=h)
    assert r.status_code == 200, r.text
    r = await env.c.post("/v1/collections/demo/documents", json={"documents": docs}, headers=h)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limited"
    assert r.json()["error"]["field"] == "texts" and int(r.headers["retry-after"]) >= 1
