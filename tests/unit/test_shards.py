"""Sharding plumbing: the id hash, exact merges, collection-wide BM25, partial answers and write acks.

Shards here are real indexer apps (IndexerService + FastAPI routes, a hashing fake embedder) reached over
httpx through an in-memory transport that can play dead or slow; the gateway is the real search pipeline
and shard routes. Quality and speed are measured elsewhere (tests/integration/test_shards_http.py,
bench/shards.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from embedder.errors import DependencyFailed, InvalidInput, NotFound
from gateway.shard_admin import ShardAdmin
from gateway.shards import ShardedIndexerClient, merge_hits, settle, sum_term_stats
from indexer.aliases import AliasStore
from indexer.client import Hit
from indexer.fake_embedder import FakeEmbedder
from indexer.http_client import HttpIndexerClient
from indexer.lexical import LexicalIndex
from indexer.service import IndexerService
from indexer.sharding import shard_of, split_ids
from services import aliases_api, gateway_api, indexer_api, shards_api
from services.errors import install_error_handlers
from services.settings import GatewaySettings

pytestmark = pytest.mark.timeout(120)
VOCAB = [
    "protein",
    "cell",
    "gene",
    "virus",
    "cancer",
    "brain",
    "heart",
    "drug",
    "trial",
    "mouse",
    "liver",
    "blood",
]


# ---- the hash --------------------------------------------------------------------------------
def test_shard_of_follows_the_documented_formula_and_is_pinned() -> None:
    for doc_id in ("a", "doc-17", "ünïcode", "x" * 500):
        digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
        assert shard_of(doc_id, 7) == int.from_bytes(digest, "big") % 7
    # pinned values: placement must never change between releases (it would strand stored documents)
    assert [shard_of(f"doc{i}", 3) for i in range(8)] == PINNED
    assert shard_of("anything", 1) == 0


PINNED = [2, 0, 1, 0, 1, 0, 0, 2]


def test_shard_of_spreads_ids_evenly() -> None:
    counts = np.bincount([shard_of(f"id-{i}", 3) for i in range(30_000)], minlength=3)
    # a fair 3-way split of 30k ids has sd ~82 per shard: 5 sd is a wide margin for a good hash
    assert np.all(np.abs(counts - 10_000) < 410), counts
    groups = split_ids(["a", "b", "c", "d", "a"], 2)
    assert sorted(i for g in groups.values() for i in g) == ["a", "a", "b", "c", "d"]
    assert all(shard_of(i, 2) == s for s, g in groups.items() for i in g)


# ---- merge and settle ------------------------------------------------------------------------
def test_merge_hits_is_the_top_k_of_the_union() -> None:
    a = [Hit("a1", 0.9), Hit("a2", 0.5), Hit("a3", 0.1)]
    b = [Hit("b1", 0.95), Hit("b2", 0.5), Hit("b3", 0.4)]
    c: list[Hit] = []
    merged = merge_hits([a, b, c], 4)
    assert [(h.id, h.score) for h in merged] == [("b1", 0.95), ("a1", 0.9), ("a2", 0.5), ("b2", 0.5)]
    assert merge_hits([a, b], 100) == sorted(a + b, key=lambda h: (-h.score, h.id))
    assert merge_hits([], 3) == []


def test_settle_partial_user_errors_and_total_failure() -> None:
    ok, failed = settle([[1], DependencyFailed("down", field="indexer"), TimeoutError()], 2.0)
    assert ok == {0: [1]}
    assert [(f.shard, f.reason) for f in failed] == [(1, "down"), (2, "timed out after 2.0 s")]
    with pytest.raises(InvalidInput):
        settle([[1], InvalidInput("bad filter", field="filters")], 1.0)
    with pytest.raises(NotFound):
        settle([NotFound("no such collection"), NotFound("no such collection")], 1.0)
    with pytest.raises(DependencyFailed, match="shard 0: a; shard 1: b"):
        settle([DependencyFailed("a"), DependencyFailed("b")], 1.0)


# ---- BM25 with collection-wide statistics ----------------------------------------------------
def test_global_idf_makes_shards_score_like_one_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    # every document has 6 words, so each shard's average length equals the whole index's: the only
    # difference left between sharded and single-index BM25 is the idf, which the stats must fix
    docs = [(i, "", " ".join(rng.choice(VOCAB, 6))) for i in range(90)]
    one = LexicalIndex(tmp_path / "one")
    one.apply([], docs, 1)
    parts = [LexicalIndex(tmp_path / f"s{j}") for j in range(3)]
    for j, part in enumerate(parts):
        part.apply([], [d for d in docs if shard_of(str(d[0]), 3) == j], 1)
    local_differs = False
    for query in ("protein cell", "virus virus heart", "brain liver blood trial", "mouse"):
        stats = sum_term_stats([p.term_stats(query) for p in parts])
        assert stats["num_docs"] == 90
        want = dict(zip(*(x.tolist() for x in one.search(query, 90)), strict=True))
        got: dict[int, float] = {}
        local: dict[int, float] = {}
        for p in parts:
            got.update(zip(*(x.tolist() for x in p.search(query, 90, None, stats)), strict=True))
            local.update(zip(*(x.tolist() for x in p.search(query, 90)), strict=True))
        assert got.keys() == want.keys()
        for dno, score in want.items():
            assert got[dno] == pytest.approx(score, rel=1e-5)  # float32 rounding of the boost
        local_differs |= any(abs(local[d] - s) > 1e-3 * s for d, s in want.items())
    assert local_differs  # without the statistics the shards really do score differently
    # one index given its own statistics scores exactly as the plain query parser does
    q = "gene gene drug"
    assert np.allclose(one.search(q, 10, None, one.term_stats(q))[1], one.search(q, 10)[1], rtol=1e-6)


# ---- a gateway over three in-memory indexer shards -------------------------------------------
class Switch(httpx.AsyncBaseTransport):
    """An ASGI transport that can refuse connections (a killed shard) or answer late (a slow one)."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.dead = False
        self.delay_s = 0.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.dead:
            raise httpx.ConnectError("connection refused", request=request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await self.inner.handle_async_request(request)


def shard_app(root: Path) -> tuple[FastAPI, IndexerService]:
    svc = IndexerService(root, FakeEmbedder())
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(indexer_api.router)
    app.include_router(aliases_api.router)
    app.state.settings = SimpleNamespace(model="fake")
    app.state.indexer_service = svc
    return app, svc


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    services, switches = [], []
    for i in range(3):
        app, svc = shard_app(tmp_path / f"shard{i}")
        await svc.open()
        services.append(svc)
        switches.append(Switch(app))
    clients = [
        HttpIndexerClient(
            f"http://shard{i}", client=httpx.AsyncClient(transport=t, base_url=f"http://shard{i}")
        )
        for i, t in enumerate(switches)
    ]
    sharded = ShardedIndexerClient(clients, timeout_s=1.0)
    settings = GatewaySettings(retrieve_timeout_s=2.0, search_timeout_s=5.0, embed_timeout_s=5.0)
    gw = FastAPI()
    install_error_handlers(gw)
    gw.include_router(gateway_api.router)
    gw.include_router(shards_api.router)
    gw.state.search_pipeline = gateway_api.build_pipeline(settings, FakeEmbedder(), sharded)
    gw.state.shard_admin = ShardAdmin(sharded, write_timeout_s=5.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw), base_url="http://gw") as http:
        yield SimpleNamespace(http=http, services=services, switches=switches, sharded=sharded)
    for svc in services:
        await svc.close()


def docs(n: int, start: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(start)
    return [
        {"id": f"d{i}", "title": "", "text": " ".join(rng.choice(VOCAB, 6)), "metadata": {"i": i}}
        for i in range(start, start + n)
    ]


async def search(http: httpx.AsyncClient, coll: str, query: str, **kw: Any) -> dict[str, Any]:
    body = {"collection": coll, "query": query, "top_k": 20, **kw}
    r = await http.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_sharded_collection_answers_like_one_shard(stack: SimpleNamespace) -> None:
    http = stack.http
    r = await http.post("/v1/collections", json={"name": "sh", "shards": 3})
    assert r.status_code == 201, r.text
    assert r.json()["shards"] == 3 and "shard" not in r.json()
    assert (await http.post("/v1/collections", json={"name": "one"})).status_code == 201
    assert (await http.post("/v1/collections", json={"name": "sh", "shards": 3})).status_code == 409
    r = await http.post("/v1/collections", json={"name": "big", "shards": 4})
    assert r.status_code == 422 and r.json()["error"]["field"] == "shards"
    batch = docs(60)
    for coll in ("sh", "one"):
        r = await http.post(f"/v1/collections/{coll}/documents", json={"documents": batch})
        assert r.status_code == 200, r.text
        assert r.json()["acknowledged"] == [d["id"] for d in batch] and r.json()["partial"] is False
    info = (await http.get("/v1/collections/sh")).json()
    assert info["stats"]["documents"] == 60
    for st in info["shard_stats"]:  # each shard holds exactly its hash's documents, indexes agree
        mine = [d for d in batch if shard_of(d["id"], 3) == st["shard"]]
        assert st["documents"] == st["lexical_documents"] == len(mine) > 0
        assert st["chunks"] == st["dense_vectors"]
    # dense: same ids and scores; BM25 (equal-length documents): same ids, scores to float32 rounding
    for query in ("protein cell gene", "heart drug", "mouse liver blood"):
        a = await search(http, "sh", query, mode="dense")
        b = await search(http, "one", query, mode="dense")
        assert a["partial"] is False and a["failed_shards"] == []
        assert [(h["id"], h["score"]) for h in a["hits"]] == [(h["id"], h["score"]) for h in b["hits"]]
        # every matching document (top_k 100 > 60): BM25 ties abound here, so compare id -> score
        a = await search(http, "sh", query, mode="bm25", top_k=100)
        b = await search(http, "one", query, mode="bm25", top_k=100)
        want = {h["id"]: h["score"] for h in b["hits"]}
        assert {h["id"] for h in a["hits"]} == want.keys()
        assert all(h["score"] == pytest.approx(want[h["id"]], rel=1e-5) for h in a["hits"])
    # a write that bypasses the gateway's routing is refused by the shard
    stray = next(d for d in docs(10, 100) if shard_of(d["id"], 3) != 0)
    with pytest.raises(Exception, match="belongs to shard"):
        await stack.services[0].upsert("sh", [stray])
    got = await http.post("/v1/collections/sh/documents/get", json={"ids": ["d5", "nope", "d1"]})
    assert [d["id"] for d in got.json()["documents"]] == ["d5", "d1"]
    r = await http.post("/v1/collections/sh/documents/delete", json={"ids": ["d1", "d2"]})
    assert r.json()["deleted"] == 2 and r.json()["acknowledged"] == ["d1", "d2"]
    assert (await http.get("/v1/collections/sh/documents/d1")).status_code == 404


async def test_dead_or_slow_shard_gives_partial_answers_and_no_false_acks(stack: SimpleNamespace) -> None:
    http = stack.http
    assert (await http.post("/v1/collections", json={"name": "sh", "shards": 3})).status_code == 201
    assert (await http.post("/v1/collections/sh/documents", json={"documents": docs(60)})).status_code == 200
    full = await search(http, "sh", "protein cell heart", mode="hybrid")
    stack.switches[1].dead = True
    for mode in ("bm25", "dense", "hybrid"):
        body = await search(http, "sh", "protein cell heart", mode=mode)
        assert body["partial"] is True
        assert [f["shard"] for f in body["failed_shards"]] == [1]
        assert "unreachable" in body["failed_shards"][0]["reason"]  # no exception class names reach clients
        assert body["hits"] and all(shard_of(h["id"], 3) != 1 for h in body["hits"])
    # writes: ids of the dead shard are never acknowledged
    batch = docs(30, 200)
    r = await http.post("/v1/collections/sh/documents", json={"documents": batch})
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"]["type"] == "shard_unavailable" and body["error"]["field"] == "shards[1]"
    assert body["acknowledged"] == [d["id"] for d in batch if shard_of(d["id"], 3) != 1]
    assert body["failed_shards"][0]["ids"] == [d["id"] for d in batch if shard_of(d["id"], 3) == 1]
    only_dead = [d for d in docs(30, 300) if shard_of(d["id"], 3) == 1]
    r = await http.post("/v1/collections/sh/documents", json={"documents": only_dead})
    assert r.status_code == 503 and r.json()["acknowledged"] == []
    dead_id = next(d["id"] for d in batch if shard_of(d["id"], 3) == 1)
    r = await http.get(f"/v1/collections/sh/documents/{dead_id}")
    assert r.status_code == 503 and r.json()["error"]["field"] == "shards[1]"
    got = (await http.post("/v1/collections/sh/documents/get", json={"ids": body["acknowledged"]})).json()
    assert [d["id"] for d in got["documents"]] == body["acknowledged"] and got["partial"] is False
    # back: complete again, and the acknowledged ids are there; a slow shard is named as timed out
    stack.switches[1].dead = False
    again = await search(http, "sh", "protein cell heart", mode="hybrid")
    assert again["partial"] is False
    assert [h["id"] for h in again["hits"]][:5] != [] and full["partial"] is False
    stack.switches[2].delay_s = 1.5  # the shard timeout is 1.0 s
    body = await search(http, "sh", "protein cell heart", mode="dense")
    assert body["failed_shards"] == [{"shard": 2, "reason": "timed out after 1.0 s"}]
    stack.switches[2].delay_s = 0.0
    for s in stack.switches:
        s.dead = True
    r = await http.post("/v1/search", json={"collection": "sh", "query": "protein", "mode": "bm25"})
    assert r.status_code == 424 and r.json()["error"]["type"] == "dependency_failed"


async def test_aliases_route_everything_and_survive_restart(stack: SimpleNamespace) -> None:
    http = stack.http
    for name, shards in (("v1", 1), ("v2", 3)):
        assert (await http.post("/v1/collections", json={"name": name, "shards": shards})).status_code == 201
    assert (await http.post("/v1/collections/v1/documents", json={"documents": docs(5)})).status_code == 200
    r = await http.put("/v1/aliases/live", json={"collection": "v1"})
    assert r.status_code == 200 and r.json()["previous"] is None
    assert (await http.get("/v1/aliases")).json() == {"aliases": {"live": "v1"}}
    assert len((await search(http, "live", "protein cell gene"))["hits"]) > 0
    r = await http.post("/v1/collections/live/documents", json={"documents": docs(40, 100)})
    assert r.status_code == 200 and (await http.get("/v1/collections/v1")).json()["stats"]["documents"] == 45
    assert (await http.get("/v1/collections/live/documents/d3")).json()["id"] == "d3"
    # switch: the next search goes to v2 (empty), with no client change
    assert (await http.put("/v1/aliases/live", json={"collection": "v2"})).json()["previous"] == "v1"
    assert (await http.post("/v1/collections/live/documents", json={"documents": docs(9)})).status_code == 200
    assert (await http.get("/v1/collections/v2")).json()["stats"]["documents"] == 9
    # an alias cannot shadow a collection, point nowhere, or leave its collection deletable
    assert (await http.put("/v1/aliases/v1", json={"collection": "v2"})).status_code == 409
    assert (await http.put("/v1/aliases/x", json={"collection": "nope"})).status_code == 404
    assert (await http.post("/v1/collections", json={"name": "live"})).status_code == 409
    assert (await http.delete("/v1/collections/v2")).status_code == 409
    assert (await http.get("/v1/collections/v2")).status_code == 200  # nothing deleted on any shard
    # durable: the table is on shard 0's disk before the answer (a restart reads it back)
    assert AliasStore(stack.services[0].aliases.path).all() == {"live": "v2"}
    assert (await http.delete("/v1/aliases/live")).status_code == 200
    assert (await http.delete("/v1/aliases/live")).status_code == 404


async def test_aliases_in_one_process_and_after_restart(tmp_path: Path) -> None:
    from embedder.errors import Conflict
    from gateway.pipeline import SearchPipeline, SearchRequest
    from indexer.inprocess import InProcessIndexerClient

    svc = IndexerService(tmp_path, FakeEmbedder())
    await svc.open()
    await svc.create_collection("v1", model="fake")
    await svc.upsert("v1", docs(5))
    assert (await svc.put_alias("live", "v1"))["previous"] is None
    assert (await svc.collection_info("live"))["name"] == "v1"
    await svc.upsert("live", docs(3, 10))
    assert (await svc.collection_info("v1"))["stats"]["documents"] == 8
    pipe = SearchPipeline(FakeEmbedder(), InProcessIndexerClient(svc))
    resp = await pipe.search(SearchRequest("live", "protein cell heart", top_k=3))
    assert len(resp.hits) == 3 and resp.partial is False
    with pytest.raises(Conflict):
        await svc.delete_collection("v1")  # an alias points at it
    with pytest.raises(Conflict):
        await svc.create_collection("live", model="fake")
    with pytest.raises(InvalidInput, match="gateway"):
        await svc.create_collection("x", model="fake", shards=3)  # one indexer cannot hold 3 shards
    await svc.close()
    again = IndexerService(tmp_path, FakeEmbedder())
    await again.open()
    try:
        assert await again.list_aliases() == {"live": "v1"}
        assert (await again.collection_info("live"))["stats"]["documents"] == 8
        await again.delete_alias("live")
        assert (await again.delete_collection("v1"))["deleted"] == "v1"
    finally:
        await again.close()


# ---- fuzz: the gateway's shard routes from their OpenAPI schema -----------------------------
def _fuzz_gateway() -> FastAPI:
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="dowse-shards-fuzz-"))
    atexit.register(shutil.rmtree, root, True)
    clients = []
    svcs = []
    for i in range(2):
        app, svc = shard_app(root / f"s{i}")
        svcs.append(svc)
        t = httpx.ASGITransport(app=app)
        clients.append(
            HttpIndexerClient(f"http://s{i}", client=httpx.AsyncClient(transport=t, base_url=f"http://s{i}"))
        )

    async def prepare() -> None:
        for svc in svcs:
            await svc.open()
        for i, svc in enumerate(svcs):
            await svc.create_collection("c", model="fake", shards=2, shard=i)
            await svc.upsert("c", [d for d in docs(20) if shard_of(d["id"], 2) == i])

    asyncio.run(prepare())
    gw = FastAPI()
    install_error_handlers(gw)
    gw.include_router(shards_api.router)
    # alias TTL 0 and no layout cache: every call reads shard 0 in its own event loop
    sharded = ShardedIndexerClient(clients, timeout_s=5.0, alias_ttl_s=0.0, layout_ttl_s=0.0)
    gw.state.shard_admin = ShardAdmin(sharded, write_timeout_s=10.0, max_batch_docs=50)
    return gw


import schemathesis  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

_gw_schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzz_gateway())


@_gw_schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_gateway_shard_routes_never_5xx(case: Any) -> None:
    """Every gateway collection / document / alias route over healthy shards: never a 5xx; typed errors."""
    if case.method == "DELETE" and case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = "fuzz-" + str(case.path_parameters["name"])[:40]  # keep "c" alive
    response = case.call()
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        err = response.json()["error"]
        assert err["type"] and err["message"]
