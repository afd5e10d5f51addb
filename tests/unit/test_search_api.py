"""POST /v1/search over ASGI with fake clients: contract, bad input, degradation flag, Server-Timing, fuzz."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from prometheus_client import REGISTRY
from pydantic import SecretStr

from gateway.pipeline import SearchPipeline
from services import gateway_api
from services.auth import AuthMiddleware, Guard
from services.errors import install_error_handlers
from tests.unit.test_pipeline_fakes import FakeEmbedder, FakeIndexer, outage

pytestmark = pytest.mark.timeout(120)


def build_app() -> tuple[FastAPI, FakeEmbedder, FakeIndexer]:
    emb, idx = FakeEmbedder(), FakeIndexer()
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(gateway_api.router)
    app.state.search_pipeline = SearchPipeline(emb, idx, embed_timeout_s=0.3, rerank_timeout_s=0.3)  # type: ignore[arg-type]
    return app, emb, idx


@pytest.fixture
async def client() -> Any:
    app, emb, idx = build_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        c.fake_embedder = emb  # type: ignore[attr-defined]
        yield c


async def test_search_contract_and_server_timing(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/search", json={"collection": "sci", "query": "aspirin heart", "explain": True})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"hits", "timings_ms", "degraded", "partial", "failed_shards"}
    assert body["degraded"] is False
    assert body["partial"] is False and body["failed_shards"] == []
    hit = body["hits"][0]
    assert set(hit) == {"id", "score", "title", "text", "metadata", "explain"}
    assert set(hit["explain"]) == {"bm25", "dense", "fused", "rerank"}
    timing = r.headers["server-timing"]
    for stage in ("embed", "bm25", "dense", "fusion", "total"):
        assert f"{stage};dur=" in timing
        assert stage in body["timings_ms"]
    r2 = await client.post("/v1/search", json={"collection": "sci", "query": "aspirin heart"})
    assert "explain" not in r2.json()["hits"][0]


async def test_degraded_flag_in_json(client: httpx.AsyncClient) -> None:
    client.fake_embedder.fail = outage()  # type: ignore[attr-defined]
    r = await client.post("/v1/search", json={"collection": "sci", "query": "aspirin heart"})
    assert r.status_code == 200
    assert isinstance(r.json()["degraded"], str) and "bm25 only" in r.json()["degraded"]


def degraded_count(mode: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("dowse_search_degraded_total", {"mode": mode, "reason": reason})
    return value or 0.0


async def test_every_fallback_is_counted_by_mode_and_reason(client: httpx.AsyncClient) -> None:
    emb = client.fake_embedder  # type: ignore[attr-defined]
    before = {k: degraded_count(*k) for k in [("hybrid", "embed_failed"), ("dense", "embed_timeout")]}
    ok = await client.post("/v1/search", json={"collection": "sci", "query": "aspirin heart"})
    assert ok.json()["degraded"] is False
    assert degraded_count("hybrid", "embed_failed") == before["hybrid", "embed_failed"]  # healthy: none
    emb.fail = outage()
    for _ in range(2):
        r = await client.post("/v1/search", json={"collection": "sci", "query": "aspirin heart"})
        assert "bm25 only" in r.json()["degraded"]  # the response still says so
    assert degraded_count("hybrid", "embed_failed") == before["hybrid", "embed_failed"] + 2
    emb.fail, emb.delay_s = None, 2.0  # over the 0.3 s embed budget
    r = await client.post("/v1/search", json={"collection": "sci", "query": "aspirin", "mode": "dense"})
    assert "timed out" in r.json()["degraded"]
    assert degraded_count("dense", "embed_timeout") == before["dense", "embed_timeout"] + 1


@pytest.mark.parametrize(
    ("patch", "status", "field"),
    [
        ({"query": ""}, 422, "query"),
        ({"query": "   "}, 422, "query"),
        ({"top_k": 0}, 422, "top_k"),
        ({"top_k": 101}, 422, "top_k"),
        ({"collection": "missing"}, 404, "collection"),
        ({"mode": "fuzzy"}, 422, "mode"),
        ({"fusion": "borda"}, 422, "fusion"),
        ({"alpha": 1.01}, 422, "alpha"),
        ({"alpha": -0.5}, 422, "alpha"),
        ({"normalization": "softmax"}, 422, "normalization"),
        ({"filters": "year=2020"}, 422, "filters"),
        ({"filters": {"year": {"between": [1, 2]}}}, 422, "filters.year.between"),
        ({"filters": {"year": [2020]}}, 422, "filters.year"),
        ({"filters": {"bad key!": 1}}, 422, "filters.bad key!"),
        ({"candidates": 5000}, 422, "candidates"),
        ({"rerank_top_n": 0}, 422, "rerank_top_n"),
        ({"surprise": 1}, 422, "surprise"),
    ],
)
async def test_bad_input_names_the_field(
    client: httpx.AsyncClient, patch: dict[str, Any], status: int, field: str
) -> None:
    body = {"collection": "sci", "query": "aspirin", **patch}
    r = await client.post("/v1/search", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field
    assert err["type"] and err["message"]
    if field in ("top_k", "alpha", "candidates"):
        assert err["limit"] is not None


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"


async def test_not_ready_without_pipeline() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(gateway_api.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.post("/v1/search", json={"collection": "sci", "query": "x"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"


_fuzz_app, _, _ = build_app()
# auth on, as `dowse serve` runs it: the fuzz sends a valid admin key
_ADMIN = {"Authorization": "Bearer " + "f" * 40}
_fuzz_app.add_middleware(
    AuthMiddleware,
    guard=Guard(
        SimpleNamespace(auth="required", admin_key=SecretStr("f" * 40), service_token=None), ["gateway"]
    ),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzz_app, headers=_ADMIN)


@schema.include(path="/v1/search").parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_search_never_5xx(case: Any) -> None:
    """Schemathesis generates valid and invalid bodies from the OpenAPI schema: never a 5xx."""
    response = case.call(headers=_ADMIN)
    assert response.status_code < 500, response.text
    assert response.status_code != 401
    if response.status_code >= 400:
        err = response.json()["error"]
        assert err["type"] and err["message"]
        if response.status_code == 422:
            assert err["field"]


async def test_start_wires_clients_and_readiness() -> None:
    from fastapi import FastAPI

    from services.settings import GatewaySettings

    emb, idx = FakeEmbedder(), FakeIndexer()
    app = FastAPI()
    app.state.ready_checks = []
    app.state.embedder_client, app.state.indexer_client = emb, idx
    await gateway_api.start(app, GatewaySettings(rerank_weight=0.3, search_alpha=0.25))
    pipe = app.state.search_pipeline
    assert pipe.embedder is emb and pipe.indexer is idx
    assert pipe.default_rerank_weight == 0.3 and pipe.default_alpha == 0.25
    assert [n for n, _ in app.state.ready_checks] == ["gateway"] and app.state.ready_checks[0][1]()
    await gateway_api.stop(app)
    assert not app.state.ready_checks[0][1]()

    remote = FastAPI()
    remote.state.ready_checks = []
    urls = "http://127.0.0.1:9, http://127.0.0.1:10/"
    settings = GatewaySettings(embedder_url="http://127.0.0.1:9", indexer_url=urls, retrieve_timeout_s=2.0)
    await gateway_api.start(remote, settings)
    assert type(remote.state.search_pipeline.embedder).__name__ == "HttpEmbedderClient"
    sharded = remote.state.search_pipeline.indexer
    assert type(sharded).__name__ == "ShardedIndexerClient"  # the shard map, one URL per shard
    assert [type(c).__name__ for c in sharded.shards] == ["HttpIndexerClient"] * 2
    assert [c.base_url for c in sharded.shards] == ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    assert sharded.timeout_s == pytest.approx(1.8)  # 90 % of the retrieve budget
    await gateway_api.stop(remote)

    bare = FastAPI()
    bare.state.ready_checks = []
    with pytest.raises(RuntimeError, match="embedder"):
        await gateway_api.start(bare, GatewaySettings())


@schema.include(path="/v1/search/defaults/{collection}").parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_search_defaults_never_5xx(case: Any) -> None:
    """Any collection path segment: 200, 404 or 422 naming the field, never a 5xx."""
    response = case.call()
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        err = response.json()["error"]
        assert err["type"] and err["message"], response.text
        if response.status_code == 422:
            assert err["field"] == "collection", response.text
