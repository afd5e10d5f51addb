"""Indexer REST routes: shapes, bad input -> 4xx JSON naming the problem (collection unchanged), fuzz."""

from __future__ import annotations

import asyncio
import atexit
import base64
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from pydantic import SecretStr

from indexer.fake_embedder import FakeEmbedder
from indexer.http_client import HttpIndexerClient
from indexer.service import IndexerService
from services import indexer_api
from services.auth import AuthMiddleware, Guard
from services.errors import install_error_handlers

pytestmark = pytest.mark.timeout(120)


def build_app(root: Path) -> tuple[FastAPI, IndexerService, FakeEmbedder]:
    fake = FakeEmbedder()
    svc = IndexerService(root, fake, max_batch_docs=20, max_doc_chars=5000, job_roots=[root / "jobs"])
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(indexer_api.router)
    app.state.settings = SimpleNamespace(model="fake")
    app.state.indexer_service = svc
    return app, svc, fake


DOCS = [
    {"id": f"d{i}", "title": f"T{i}", "text": f"tok{i} alpha beta gamma", "metadata": {"n": i, "tag": "x"}}
    for i in range(10)
]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeEmbedder]]:
    app, svc, fake = build_app(tmp_path)
    await svc.open()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.post("/v1/collections", json={"name": "c", "model": "fake"})
        assert r.status_code == 201, r.text
        r = await c.post("/v1/collections/c/documents", json={"documents": DOCS})
        assert r.status_code == 200 and r.json()["upserted"] == 10
        yield c, fake
    await svc.close()


async def test_routes_roundtrip(client: tuple[httpx.AsyncClient, FakeEmbedder]) -> None:
    c, fake = client
    assert [x["name"] for x in (await c.get("/v1/collections")).json()["collections"]] == ["c"]
    info = (await c.get("/v1/collections/c")).json()
    assert info["model"] == "fake" and info["dims"] == 32 and info["stats"]["documents"] == 10
    assert (await c.get("/v1/collections/c/documents/d3")).json()["text"].startswith("tok3")
    assert (await c.get("/v1/collections/c/documents/zz")).status_code == 404
    hits = (await c.post("/v1/collections/c/search/lexical", json={"query": "tok4", "k": 3})).json()["hits"]
    assert hits[0]["id"] == "d4" and hits[0]["metadata"] == {"n": 4, "tag": "x"}
    vec = fake.encode(["T5\ntok5 alpha beta gamma"])[0]
    hits = (await c.post("/v1/collections/c/search/dense", json={"vector": vec.tolist(), "k": 2})).json()[
        "hits"
    ]
    assert hits[0]["id"] == "d5"
    b64 = base64.b64encode(vec.astype("<f4").tobytes()).decode()
    body = {"vector_b64": b64, "k": 3, "filters": {"n": {"gte": 7}}}
    hits = (await c.post("/v1/collections/c/search/dense", json=body)).json()["hits"]
    assert sorted(h["id"] for h in hits) == ["d7", "d8", "d9"]
    r = await c.post("/v1/collections/c/documents/delete", json={"ids": ["d1", "d2"]})
    assert r.json()["deleted"] == 2
    r = await c.post("/v1/collections/c/documents/get", json={"ids": ["d2", "d3"]})
    assert [d["id"] for d in r.json()["documents"]] == ["d3"]
    assert (await c.delete("/v1/collections/c")).status_code == 200
    assert (await c.get("/v1/collections/c")).status_code == 404


async def test_http_client_maps_errors(client: tuple[httpx.AsyncClient, FakeEmbedder]) -> None:
    c, fake = client
    from embedder.errors import DependencyFailed, InvalidInput, NotFound

    hc = HttpIndexerClient("http://t", client=c)
    assert (await hc.collection_info("c"))["name"] == "c"
    hits = await hc.search_dense("c", fake.encode(["T6\ntok6 alpha beta gamma"])[0], 1)
    assert hits[0].id == "d6"
    assert (await hc.search_lexical("c", "tok2", 1, {"tag": "x"}))[0].id == "d2"
    assert [d["id"] for d in await hc.get_documents("c", ["d9", "d0"])] == ["d9", "d0"]
    with pytest.raises(NotFound):
        await hc.collection_info("nope")
    with pytest.raises(InvalidInput) as err:
        await hc.search_dense("c", np.ones(3), 1)
    assert err.value.field == "vector" and err.value.limit == 32
    down = HttpIndexerClient("http://127.0.0.1:9", timeout_s=0.5)
    with pytest.raises(DependencyFailed):
        await down.collection_info("c")
    await down.aclose()


BAD_UPSERTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("dup", {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, 422, "documents[1].id"),
    ("empty", {"documents": [{"id": "a", "text": ""}]}, 422, "documents[0].text"),
    ("oversize", {"documents": [{"id": "a", "text": "x" * 5001}]}, 413, "documents[0].text"),
    ("meta-str", {"documents": [{"id": "a", "text": "x", "metadata": "{bad"}]}, 422, "documents.0.metadata"),
    ("meta-list", {"documents": [{"id": "a", "text": "x", "metadata": [1]}]}, 422, "documents.0.metadata"),
    ("too-many", {"documents": [{"id": f"i{i}", "text": "x"} for i in range(21)]}, 413, "documents"),
    ("model", {"documents": [{"id": "a", "text": "x"}], "model": "minilm"}, 409, "model"),
    ("dims", {"documents": [{"id": "a", "text": "x"}], "dims": 384}, 409, "dims"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_UPSERTS, ids=[b[0] for b in BAD_UPSERTS])
async def test_bad_upserts(
    client: tuple[httpx.AsyncClient, FakeEmbedder], case: str, body: dict[str, Any], status: int, field: str
) -> None:
    c, _ = client
    before = (await c.get("/v1/collections/c")).json()["stats"]
    r = await c.post("/v1/collections/c/documents", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"]
    if status == 413:
        assert err["limit"] in (20, 5000)
    assert (await c.get("/v1/collections/c")).json()["stats"] == before


async def test_other_bad_requests(client: tuple[httpx.AsyncClient, FakeEmbedder]) -> None:
    c, _ = client
    r = await c.post("/v1/collections/nope/documents", json={"documents": DOCS[:1]})
    assert r.status_code == 404 and r.json()["error"]["field"] == "collection"
    r = await c.post("/v1/collections/c/search/dense", json={"vector": [0.1] * 31})
    assert r.status_code == 422 and r.json()["error"] == {
        "type": "invalid_input",
        "message": "vector has 31 dims, collection 'c' has 32",
        "field": "vector",
        "limit": 32,
    }
    r = await c.post("/v1/collections/c/search/lexical", json={"query": "x", "filters": {"n": {"gte": "a"}}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "filters.n.gte"
    r = await c.post("/v1/collections/c/search/dense", json={"vector_b64": "@@@"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "vector_b64"
    r = await c.post("/v1/collections", json={"name": "c", "model": "fake"})
    assert r.status_code == 409
    r = await c.post(
        "/v1/collections", json={"name": "e", "model": "fake", "index": {"type": "hnsw", "M": 1}}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "index.M"
    r = await c.post("/v1/collections/c/jobs", json={"path": "/etc/passwd"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "path"
    r = await c.get("/v1/collections/c/jobs/nope")
    assert r.status_code == 404


# ---- fuzz: schemathesis generates valid and invalid requests from the OpenAPI schema ----------------
_root = Path(tempfile.mkdtemp(prefix="dowse-index-fuzz-"))
atexit.register(shutil.rmtree, _root, True)
_fuzz_app, _fuzz_svc, _ = build_app(_root)
# auth on, as `dowse serve` runs it: the fuzz sends a valid admin key (routes still validate everything)
_ADMIN = {"Authorization": "Bearer " + "f" * 40}
_fuzz_app.add_middleware(
    AuthMiddleware,
    guard=Guard(
        SimpleNamespace(auth="required", admin_key=SecretStr("f" * 40), service_token=None),
        ["indexer", "gateway"],
    ),
)


async def _prepare() -> None:
    await _fuzz_svc.open()
    await _fuzz_svc.create_collection("c", model="fake")
    await _fuzz_svc.upsert("c", DOCS)


asyncio.run(_prepare())
schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzz_app, headers=_ADMIN)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_indexer_routes_never_5xx(case: Any) -> None:
    """Every indexer route: never a 5xx; errors carry type + message (+ field on 422)."""
    if case.path_parameters and "name" in case.path_parameters and case.method == "DELETE":
        case.path_parameters["name"] = "fuzz-" + str(case.path_parameters["name"])[:40]  # keep "c" alive
    response = case.call(headers=_ADMIN)
    assert response.status_code < 500, response.text
    assert response.status_code != 401
    if response.status_code >= 400:
        err = response.json()["error"]
        assert err["type"] and err["message"]
        if response.status_code == 422:
            assert err["field"]
