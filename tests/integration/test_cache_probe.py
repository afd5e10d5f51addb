"""Regression tests of the outside probe's cache findings (issue 10), over HTTP on the real Redis.

`create_app(settings, ["gateway"])` with the plumbing embedder: feedback bound to the lookup's namespace,
one source's repeated confirmations adding no evidence, names that cannot reach another namespace's keys,
stats per namespace only, and odd JSON (lone surrogates, deep nesting) answering 422 naming the field.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from services.app import create_app
from services.settings import GatewaySettings
from tests.integration.cache_helpers import HashEmbedder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
JSON = {"content-type": "application/json"}


@pytest.fixture
async def gateway(redis_url: str) -> AsyncIterator[Any]:
    r = aioredis.Redis.from_url(redis_url)
    await r.flushdb()
    # "shared" is written by clients that do not trust each other: the opt-in distinct-sources rule
    app = create_app(
        GatewaySettings(redis_url=redis_url, cache_op_timeout_s=1.0, cache_min_sources=2), ["gateway"]
    )
    app.state.embedder_client = HashEmbedder()
    app.state.indexer_client = object()  # search is not exercised here
    async with app.router.lifespan_context(app):
        yield app
    await r.flushdb()
    await r.aclose()


def client(app: Any, addr: str = "127.0.0.1") -> httpx.AsyncClient:
    """An HTTP client seen by the server as coming from ``addr``."""
    transport = httpx.ASGITransport(app=app, client=(addr, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


async def test_feedback_is_bound_to_the_lookups_namespace(gateway: Any) -> None:
    async with client(gateway) as victim, client(gateway, "10.0.0.9") as attacker:
        await victim.post("/v1/cache/store", json={"namespace": "victim", "prompt": "q", "response": "A"})
        look = (await victim.post("/v1/cache/lookup", json={"namespace": "victim", "prompt": "q#1"})).json()
        assert look["decision"] == "explore"
        lid = look["lookup_id"]
        bad = {"lookup_id": lid, "response": "EVIL"}
        r = await attacker.post("/v1/cache/feedback", json={**bad, "namespace": "attacker"})
        unknown = await attacker.post(
            "/v1/cache/feedback", json={**bad, "namespace": "attacker", "lookup_id": "0" * 32}
        )
        assert r.status_code == unknown.status_code == 404  # answers exactly like an unknown id
        assert r.json()["error"]["message"].replace(lid, "") == unknown.json()["error"]["message"].replace(
            "0" * 32, ""
        )
        r = await attacker.post("/v1/cache/feedback", json=bad)  # a lookup id alone authorises nothing
        assert r.status_code == 422 and r.json()["error"]["field"] == "namespace"
        r = await victim.post(
            "/v1/cache/feedback", json={"namespace": "victim", "lookup_id": lid, "response": "A"}
        )
        assert r.status_code == 200 and r.json()["correct"] is True  # not 409: the attempts burnt nothing
        look2 = (await victim.post("/v1/cache/lookup", json={"namespace": "victim", "prompt": "q#2"})).json()
        assert look2["lookup_id"] != lid and len(look2["lookup_id"]) == 32


async def _teach(c: httpx.AsyncClient, i: int) -> bool:
    """One round of evidence: even rounds confirm EVIL for a paraphrase of "poison", odd rounds answer
    unrelated prompts with their own answers (the wrong observations that sharpen a fit). True on a hit."""
    prompt = f"other{i}" if i % 2 else f"poison#{i}"
    look = (await c.post("/v1/cache/lookup", json={**LOOK, "prompt": prompt})).json()
    if not look["hit"]:
        fb = {
            "namespace": "shared",
            "lookup_id": look["lookup_id"],
            "response": f"OTHER{i}" if i % 2 else "EVIL",
        }
        assert (await c.post("/v1/cache/feedback", json=fb)).status_code == 200
    return bool(look["hit"])


# a permissive delta: on this plumbing embedder trusted evidence reaches exploits within ~15 rounds
LOOK = {"namespace": "shared", "max_error": 0.3}


async def test_one_client_confirming_its_own_answer_does_not_get_it_served(gateway: Any) -> None:
    async with client(gateway, "10.0.0.66") as attacker, client(gateway) as victim:
        body = {"namespace": "shared", "prompt": "poison", "response": "EVIL"}
        assert (await attacker.post("/v1/cache/store", json=body)).json()["stored"]
        hits = [await _teach(attacker, i) for i in range(120)]  # ~15 sufficed before
        assert not any(hits), hits
        for _ in range(20):  # the same confirmation again and again adds nothing either
            look = (await attacker.post("/v1/cache/lookup", json={**LOOK, "prompt": "poison#0"})).json()
            fb = {"namespace": "shared", "lookup_id": look["lookup_id"], "response": "EVIL"}
            assert (await attacker.post("/v1/cache/feedback", json=fb)).status_code == 200
        stats = (await victim.get("/v1/cache/stats", params={"namespace": "shared"})).json()
        assert stats["feedback_repeated"] >= 19
        served = [
            (await victim.post("/v1/cache/lookup", json={**LOOK, "prompt": f"poison#{i}"})).json()
            for i in range(1000, 1020)
        ]
        assert not any(hits) and not any(s["hit"] for s in served), served


async def test_evidence_from_distinct_sources_still_teaches_the_policy(gateway: Any) -> None:
    """The rule is per source, not a switch-off: the same rounds from distinct clients are learnt."""
    async with client(gateway, "10.0.1.1") as first:
        body = {"namespace": "shared", "prompt": "poison", "response": "EVIL"}
        assert (await first.post("/v1/cache/store", json=body)).json()["stored"]
    hits = []
    for i in range(120):
        async with client(gateway, f"10.1.{i // 200}.{i % 200 + 1}") as c:
            hits.append(await _teach(c, i))
    assert sum(hits[60:]) >= 10, hits


async def test_stats_need_a_namespace(gateway: Any) -> None:
    async with client(gateway) as c:
        await c.post("/v1/cache/store", json={"namespace": "t1", "prompt": "p", "response": "r"})
        r = await c.get("/v1/cache/stats")
        assert r.status_code == 422 and r.json()["error"]["field"] == "namespace"
        stats = (await c.get("/v1/cache/stats", params={"namespace": "t1"})).json()
        assert stats["entries"] == 1 and "namespaces" in stats and stats["namespaces"] == 1


async def test_names_cannot_reach_another_namespaces_keys(gateway: Any, redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    async with client(gateway) as c:
        for ns in ("a:child", "a\n", "a*", "a b"):
            for path, body in (
                ("/v1/cache/store", {"namespace": ns, "prompt": "p", "response": "r"}),
                ("/v1/cache/lookup", {"namespace": ns, "prompt": "p"}),
            ):
                resp = await c.post(path, json=body)
                assert resp.status_code == 422 and resp.json()["error"]["field"] == "namespace", (
                    ns,
                    resp.text,
                )
        assert (await c.delete("/v1/cache/namespaces/a:child")).status_code == 422
        for ns in ("a", "a.child", "a-child", "a_child"):
            await c.post("/v1/cache/store", json={"namespace": ns, "prompt": "p", "response": ns})
        assert (await c.delete("/v1/cache/namespaces/a")).json()["deleted_entries"] == 1
        for ns in ("a.child", "a-child", "a_child"):  # neither Redis nor the mirror lost them
            assert await r.zcard(f"dowse:cache:ns:{ns}:ids") == 1
            look = {"namespace": ns, "prompt": "p", "policy": "static", "threshold": 0.5}
            assert (await c.post("/v1/cache/lookup", json=look)).json()["response"] == ns
        for eid in ("x:y", "e:1:2", "*"):
            resp = await c.delete(f"/v1/cache/namespaces/a.child/entries/{eid}")
            assert resp.status_code == 422 and resp.json()["error"]["field"] == "entry_id", eid
            fb = {"namespace": "a.child", "entry_id": eid, "prompt": "p", "response": "r"}
            resp = await c.post("/v1/cache/feedback", json=fb)
            assert resp.status_code == 422 and resp.json()["error"]["field"] == "entry_id", eid
    await r.aclose()


def raw(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()


S = "\ud800"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/cache/lookup", {"namespace": "n", "prompt": "p" + S}, "prompt"),
        ("/v1/cache/lookup", {"namespace": "n", "prompt": "p", "scope": {"system": S}}, "scope.system"),
        ("/v1/cache/lookup", {"namespace": "n", "prompt": "p", "scope": {S: 1}}, "scope"),
        ("/v1/cache/lookup", {"namespace": "n", "prompt": "p", "scope": S}, "scope"),
        ("/v1/cache/store", {"namespace": "n", "prompt": "p", "response": "r" + S}, "response"),
        (
            "/v1/cache/store",
            {"namespace": "n", "prompt": "p", "response": "r", "metadata": {"k": S}},
            "metadata.k",
        ),
        ("/v1/cache/feedback", {"namespace": "n", "lookup_id": "a" * 32, "response": S}, "response"),
    ],
)
async def test_lone_surrogates_in_cache_requests_are_422(
    gateway: Any, path: str, body: dict[str, Any], field: str
) -> None:
    async with client(gateway) as c:
        resp = await c.post(path, content=raw(body), headers=JSON)
        assert resp.status_code == 422 and resp.json()["error"]["field"] == field, resp.text


async def test_deep_scope_and_metadata_are_422(gateway: Any) -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    async with client(gateway) as c:
        for path, body, field in (
            ("/v1/cache/lookup", {"namespace": "n", "prompt": "p", "scope": {"x": deep}}, "scope"),
            (
                "/v1/cache/store",
                {"namespace": "n", "prompt": "p", "response": "r", "metadata": {"x": deep}},
                "metadata",
            ),
        ):
            resp = await c.post(path, json=body)
            assert resp.status_code == 422 and resp.json()["error"]["field"] == field, resp.text
