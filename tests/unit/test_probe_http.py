"""Regression tests of the outside probe's findings (issue 10) on the indexer role as `dowse serve` builds it.

`create_app(settings, ["indexer"])` with the plumbing embedder: the request guard (Host, body cap, JSON
well-formedness), surrogates / deep nesting / huge integers answering 422 naming the field, names that
must fullmatch, and no exception classes or server paths in error messages.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from indexer.fake_embedder import FakeEmbedder
from services.app import create_app
from services.settings import IndexerSettings

pytestmark = pytest.mark.timeout(120)
DOCS = [{"id": f"d{i}", "text": f"tok{i} alpha beta", "metadata": {"n": i}} for i in range(5)]


def make_app(data: Path, **settings: Any) -> Any:
    app = create_app(IndexerSettings(data_dir=data, **settings), ["indexer"])
    app.state.embedder_client = FakeEmbedder()  # the indexer role takes an embedder already on app.state
    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(tmp_path / "data")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            assert (await c.post("/v1/collections", json={"name": "c", "model": "fake"})).status_code == 201
            r = await c.post("/v1/collections/c/documents", json={"documents": DOCS})
            assert r.status_code == 200, r.text
            yield c


def raw(obj: Any) -> bytes:
    """JSON bytes with non-ASCII escaped, so a lone surrogate travels as the escape ``\\ud800``."""
    return json.dumps(obj, ensure_ascii=True).encode()


JSON = {"content-type": "application/json"}
S = "\ud800"  # a lone surrogate: valid JSON escape, not encodable as UTF-8
SURROGATE_CASES = [
    ("/v1/collections/c/documents", {"documents": [{"id": "x" + S, "text": "t"}]}, "documents[0].id"),
    ("/v1/collections/c/documents", {"documents": [{"id": "x", "text": "t" + S}]}, "documents[0].text"),
    (
        "/v1/collections/c/documents",
        {"documents": [{"id": "x", "text": "t", "title": S}]},
        "documents[0].title",
    ),
    (
        "/v1/collections/c/documents",
        {"documents": [{"id": "x", "text": "t", "metadata": {"k": [S]}}]},
        "documents[0].metadata.k[0]",
    ),
    (
        "/v1/collections/c/documents",
        {"documents": [{"id": "x", "text": "t", "metadata": {S: 1}}]},
        "documents[0].metadata",
    ),
    ("/v1/collections/c/search/lexical", {"query": "alpha" + S}, "query"),
    ("/v1/collections/c/search/lexical", {"query": "alpha", "filters": {S: 1}}, "filters"),
    (
        "/v1/collections/c/search/lexical",
        {"query": "alpha", "filters": {"n": {"in": [S]}}},
        "filters.n.in[0]",
    ),
    ("/v1/collections/c/documents/get", {"ids": [S]}, "ids[0]"),
    ("/v1/collections/c/documents/delete", {"ids": ["d1", S]}, "ids[1]"),
    ("/v1/collections", {"name": S, "model": "fake"}, "name"),
    ("/v1/collections/c/jobs", {"path": S}, "path"),
]


@pytest.mark.parametrize(("path", "body", "field"), SURROGATE_CASES)
async def test_lone_surrogate_anywhere_is_422_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    r = await client.post(path, content=raw(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert (await client.get("/v1/collections/c")).json()["stats"]["documents"] == 5  # nothing written


@pytest.mark.parametrize(
    "body",
    [
        b'{"ids": ["\xed\xa0\x80"]}',  # the surrogate as raw (CESU-8) bytes, not as an escape
        '{"ids": ["\ud800"]}'.encode("utf-16-le", "surrogatepass"),
        '{"ids": ["\ud800"]}'.encode("utf-16", "surrogatepass"),
    ],
)
async def test_surrogates_in_raw_bytes_and_other_encodings(client: httpx.AsyncClient, body: bytes) -> None:
    r = await client.post("/v1/collections/c/documents/get", content=body, headers=JSON)
    assert r.status_code in (400, 422), r.text
    if r.status_code == 422:
        assert r.json()["error"]["field"] == "ids[0]"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_numbers_are_422(client: httpx.AsyncClient, number: str) -> None:
    body = f'{{"documents": [{{"id": "n", "text": "t", "metadata": {{"x": {number}}}}}]}}'
    r = await client.post("/v1/collections/c/documents", content=body.encode(), headers=JSON)
    assert r.status_code == 422 and r.json()["error"]["field"] == "documents[0].metadata.x", r.text
    r = await client.post(
        "/v1/collections/c/search/lexical", content=f'{{"query": "a", "k": {number}}}', headers=JSON
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "k", r.text


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_deep_metadata_is_refused_and_reads_keep_working(client: httpx.AsyncClient) -> None:
    for depth, field in ((900, None), (40, "documents[0].metadata")):
        body = {"documents": [{"id": "deep", "text": "alpha deep", "metadata": {"m": nested(depth)}}]}
        r = await client.post("/v1/collections/c/documents", content=raw(body), headers=JSON)
        assert r.status_code == 422, r.text
        if field:  # under the guard's whole-body limit: the core's metadata limit names the field
            assert r.json()["error"] == {
                "type": "invalid_input",
                "message": "documents[0].metadata is nested more than 32 levels deep",
                "field": field,
                "limit": 32,
            }
    ok = {"documents": [{"id": "deep", "text": "alpha deep", "metadata": {"m": nested(30)}}]}
    assert (await client.post("/v1/collections/c/documents", json=ok)).status_code == 200
    assert (await client.get("/v1/collections/c/documents/deep")).status_code == 200
    r = await client.post("/v1/collections/c/search/lexical", json={"query": "alpha deep"})
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "deep"


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"n": 2**63}, "filters.n"),
        ({"n": {"gte": -(2**64)}}, "filters.n.gte"),
        ({"n": {"in": [1, 10**30]}}, "filters.n.in[1]"),
    ],
)
async def test_filter_integers_beyond_int64_are_422(
    client: httpx.AsyncClient, filters: dict[str, Any], field: str
) -> None:
    for route, extra in (("lexical", {"query": "alpha"}), ("dense", {"vector": [0.1] * 32})):
        r = await client.post(f"/v1/collections/c/search/{route}", json={**extra, "filters": filters})
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


async def test_names_must_fullmatch(client: httpx.AsyncClient, tmp_path: Path) -> None:
    r = await client.post("/v1/collections", json={"name": "c2\n", "model": "fake"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "name"
    assert not list((tmp_path / "data" / "collections").glob("c2*"))
    r = await client.post("/v1/collections/c/search/lexical", json={"query": "a", "filters": {"n\n": 1}})
    assert r.status_code == 422


async def test_error_messages_name_no_exception_class(tmp_path: Path) -> None:
    app = make_app(tmp_path / "data")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c,
    ):
        assert (await c.post("/v1/collections", json={"name": "c", "model": "fake"})).status_code == 201
        app.state.indexer_service.embedder.fail = True  # raises ConnectionError inside the core
        r = await c.post("/v1/collections/c/documents", json={"documents": DOCS})
    assert r.status_code == 424
    assert "ConnectionError" not in r.text and "Error" not in r.json()["error"]["message"]


# ---- the guard: body cap, Host check ---------------------------------------------------------------
async def test_body_over_the_cap_is_413_before_parsing(tmp_path: Path) -> None:
    app = make_app(tmp_path / "data", max_body_bytes=4096)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c,
    ):
        big = {"name": "c", "model": "fake", "pad": "x" * 5000}
        r = await c.post("/v1/collections", json=big)  # declared by Content-Length
        assert r.status_code == 413 and r.json()["error"]["limit"] == 4096, r.text

        async def chunks() -> AsyncIterator[bytes]:  # streamed: no Content-Length
            for _ in range(10):
                yield b" " * 1000

        r = await c.post("/v1/collections", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "too_large", r.text
        assert (await c.post("/v1/collections", json={"name": "c", "model": "fake"})).status_code == 201


@pytest.mark.parametrize(
    ("bind", "host", "status"),
    [
        ("127.0.0.1", "127.0.0.1:8000", 200),
        ("127.0.0.1", "localhost", 200),
        ("127.0.0.1", "[::1]:8000", 200),
        ("127.0.0.1", "evil.example:8000", 421),  # DNS rebinding: a page of evil.example resolving to us
        ("127.0.0.1", "", 421),
        ("0.0.0.0", "dowse-indexer:8001", 200),  # wildcard bind (containers): any Host unless configured
    ],
)
async def test_host_header_check(tmp_path: Path, bind: str, host: str, status: int) -> None:
    app = make_app(tmp_path / "data", host=bind)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c,
    ):
        r = await c.get("/v1/collections", headers={"host": host})
    assert r.status_code == status, r.text
    if status != 200:
        assert r.json()["error"]["field"] == "host"


async def test_configured_allowed_hosts(tmp_path: Path) -> None:
    app = make_app(tmp_path / "data", host="0.0.0.0", allowed_hosts=["*.internal", "search.example.com"])
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c,
    ):
        got = [
            (await c.get("/health", headers={"host": h})).status_code
            for h in ("a.internal", "search.example.com:443", "other.example.com", "internal")
        ]
    assert got == [200, 200, 200, 200]  # liveness/readiness probes come with the pod IP as Host
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c,
    ):
        got = [
            (await c.get("/v1/collections", headers={"host": h})).status_code
            for h in (
                "a.internal",
                "search.example.com:443",
                "other.example.com",
                "internal",
                "10.0.0.7:8000",
            )
        ]
    assert got == [200, 200, 421, 421, 421]


# ---- over a real socket: a bad request leaves the keep-alive connection usable -------------------
@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    app = make_app(tmp_path / "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    thread.join(10)


def test_surrogate_keeps_the_connection_alive(server: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    body = raw({"name": "c", "model": "fake"})
    conn.request("POST", "/v1/collections", body, {"content-type": "application/json"})
    assert conn.getresponse().read()
    sock = conn.sock
    conn.request(
        "POST", "/v1/collections/c/documents/get", raw({"ids": [S]}), {"content-type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 422 and json.loads(resp.read())["error"]["field"] == "ids[0]"
    assert resp.getheader("connection") != "close"
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    assert conn.sock is sock  # the same connection answered
    conn.close()
