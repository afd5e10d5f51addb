"""Embedder over real HTTP: a `dowse serve --role embedder` subprocess, plus in-process ASGI apps for
queue limits and readiness. Shapes (OpenAI / TEI / Cohere), errors, client parity, metrics, no torch."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from embedder.errors import DependencyFailed, InvalidInput, TooLarge
from embedder.http_client import HttpEmbedderClient
from embedder.inprocess import InProcessEmbedderClient
from embedder.service import EmbeddingService

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
TOKEN = "svc-" + "t" * 40  # DOWSE_SERVICE_TOKEN: a separate embedder role answers only the gateway's token
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(
    model_cache: Path, exported_minilm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real embedder process (minilm + ms-marco-l12, batching on)."""
    port = free_port()
    env = dict(
        os.environ,
        DOWSE_MODEL_CACHE=str(model_cache),
        DOWSE_DATA_DIR=str(tmp_path_factory.mktemp("embed-data")),
        DOWSE_EXTRA_MODELS='["ms-marco-l12"]',
        DOWSE_MAX_CLIENT_BATCH="64",
        DOWSE_SERVICE_TOKEN=TOKEN,
    )
    cmd = [sys.executable, "-m", "services.cli", "serve", "--role", "embedder", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "server died"
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        else:
            raise TimeoutError("embedder did not become ready")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def post(base: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=60, headers=AUTH)


def test_service_token_required(server: str) -> None:
    """The embedder role with DOWSE_SERVICE_TOKEN: 401 without it or with another key; /ready stays open."""
    assert httpx.post(f"{server}/v1/embeddings", json={"input": "a"}).status_code == 401
    wrong = {"Authorization": "Bearer " + "w" * 44}
    assert httpx.post(f"{server}/v1/embeddings", json={"input": "a"}, headers=wrong).status_code == 401
    assert httpx.get(f"{server}/ready").status_code == 200
    assert post(server, "/v1/embeddings", {"input": "a"}).status_code == 200


def test_openai_embeddings_float_and_base64_agree(server: str) -> None:
    r = post(server, "/v1/embeddings", {"input": ["hello world", "a second text"]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert (
        body["usage"]["prompt_tokens"]
        == body["usage"]["total_tokens"]
        == sum(d["tokens"] for d in body["data"])
    )
    vec = np.array(body["data"][0]["embedding"], dtype=np.float32)
    assert vec.shape == (384,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    r64 = post(
        server, "/v1/embeddings", {"input": "hello world", "encoding_format": "base64", "dimensions": 64}
    )
    v64 = np.frombuffer(base64.b64decode(r64.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(v64, vec[:64] / np.linalg.norm(vec[:64]), atol=1e-6)


def test_tei_embed_and_info(server: str) -> None:
    r = post(server, "/embed", {"inputs": "hello world"})
    assert r.status_code == 200 and len(r.json()) == 1 and len(r.json()[0]) == 384
    info = httpx.get(f"{server}/info", headers=AUTH).json()
    assert info["model_id"] == "minilm" and info["loaded"] == ["minilm", "ms-marco-l12"]
    assert info["max_client_batch_size"] == 64 and info["batching"] is True


def test_rerank_shapes(server: str) -> None:
    docs = ["Paris is in France.", "Cats are mammals.", "Dogs bark."]
    tei = post(server, "/rerank", {"query": "are cats mammals", "texts": docs, "return_text": True}).json()
    assert [row["index"] for row in tei][0] == 1 and 0 < tei[0]["score"] <= 1 and tei[0]["text"] == docs[1]
    assert tei[0]["score"] >= tei[1]["score"] >= tei[2]["score"]
    raw = post(server, "/rerank", {"query": "are cats mammals", "texts": docs, "raw_scores": True}).json()
    assert raw[0]["score"] > 1  # a logit, not a probability
    co = post(
        server,
        "/v1/rerank",
        {
            "query": "are cats mammals",
            "documents": [docs[0], {"text": docs[1]}],
            "top_n": 1,
            "return_documents": True,
        },
    ).json()
    assert len(co["results"]) == 1 and co["results"][0]["index"] == 1
    assert co["results"][0]["document"] == {"text": docs[1]} and co["model"] == "ms-marco-l12"
    # Cohere v2 (cohere.ClientV2): same scores as v1, no documents echoed, an id and api_version meta
    v1 = post(server, "/v1/rerank", {"query": "are cats mammals", "documents": docs}).json()
    v2 = post(server, "/v2/rerank", {"model": "ms-marco-l12", "query": "are cats mammals", "documents": docs})
    body = v2.json()
    assert v2.status_code == 200 and body["id"] and body["meta"]["api_version"]["version"] == "2"
    assert [r["index"] for r in body["results"]] == [r["index"] for r in v1["results"]]
    assert [r["relevance_score"] for r in body["results"]] == [r["relevance_score"] for r in v1["results"]]
    assert set(body["results"][0]) == {"index", "relevance_score"}
    top = post(server, "/v2/rerank", {"query": "are cats mammals", "documents": docs, "top_n": 2}).json()
    assert [r["index"] for r in top["results"]] == [r["index"] for r in v1["results"]][:2]


BAD_REQUESTS = [
    ("/v1/embeddings", {"input": []}, 422, "input", 1),
    ("/v1/embeddings", {"input": ""}, 422, "input[0]", "non-empty string"),
    ("/v1/embeddings", {"input": ["ok", 5]}, 422, "input[1]", "str"),
    ("/v1/embeddings", {"input": ["x"] * 65}, 413, "input", 64),
    ("/v1/embeddings", {"input": "word " * 300, "truncate": False}, 413, "input", 256),
    ("/v1/embeddings", {"input": "x", "model": "gpt-9"}, 422, "model", ["minilm", "ms-marco-l12"]),
    ("/v1/embeddings", {"input": "x", "dimensions": 0}, 422, "dimensions", 384),
    ("/v1/embeddings", {"input": "x", "dimensions": 385}, 422, "dimensions", 384),
    (
        "/v1/embeddings",
        {"input": "x", "encoding_format": "hex"},
        422,
        "encoding_format",
        "'float' or 'base64'",
    ),
    ("/v1/embeddings", {"input": "x", "prompt_name": "zzz"}, 422, "prompt_name", ["passage", "query"]),
    ("/v1/embeddings", {"input": "x", "input_type": "zzz"}, 422, "input_type", None),
    ("/embed", {"inputs": ["a", ""]}, 422, "inputs[1]", "non-empty string"),
    ("/embed", {"inputs": "word " * 300}, 413, "inputs", 256),  # TEI default: truncate=false
    ("/rerank", {"query": "q", "texts": []}, 422, "texts", 1),
    ("/v1/rerank", {"query": "", "documents": ["a"]}, 422, "query", "non-empty string"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n", 1),
    ("/v1/rerank", {"query": "q", "documents": [{"txt": "a"}]}, 422, "documents[0].text", "str"),
    ("/v2/rerank", {"model": "rerank-v3.5", "query": "q", "documents": ["a"]}, 422, "model", None),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n", 1),
    (
        "/v2/rerank",
        {"query": "q", "documents": ["a"], "max_tokens_per_doc": 64},
        422,
        "max_tokens_per_doc",
        256,
    ),
    ("/v2/rerank", {"query": "q", "documents": []}, 422, "documents", 1),
]


@pytest.mark.parametrize(("path", "body", "status", "field", "limit"), BAD_REQUESTS)
def test_bad_input_is_4xx_naming_field_and_limit(
    server: str, path: str, body: Any, status: int, field: str, limit: Any
) -> None:
    r = post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and err["message"]
    if limit is not None:
        assert err["limit"] == limit


def test_malformed_json_is_400(server: str) -> None:
    r = httpx.post(
        f"{server}/v1/embeddings",
        content=b'{"input": "a",',
        headers={"content-type": "application/json", **AUTH},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "malformed_json"


async def test_http_and_inprocess_clients_give_identical_results(
    server: str, embedding_service: EmbeddingService
) -> None:
    texts = ["The protein binds DNA.", "A longer sentence about galaxies and dark matter halos.", "short"]
    http = HttpEmbedderClient(server, token=TOKEN)
    local = InProcessEmbedderClient(embedding_service)
    try:
        a, b = await http.embed(texts, dimensions=128), await local.embed(texts, dimensions=128)
        np.testing.assert_array_equal(a.vectors, b.vectors)
        assert a.token_counts == b.token_counts and a.model == b.model == "minilm"
        ra = await http.rerank("what binds DNA", texts)
        rb = await local.rerank("what binds DNA", texts)
        assert ra == rb
        ia, ib = await http.model_info("minilm"), await local.model_info("minilm")
        for key in ("name", "dim", "max_length", "pooling", "prompts", "revision", "kind"):
            assert ia[key] == ib[key]
        with pytest.raises(TooLarge) as err:
            await http.embed(["x"] * 65)
        assert err.value.limit == 64
        with pytest.raises(InvalidInput) as err2:
            await http.embed(["x"], dimensions=999)
        assert err2.value.field == "dimensions"
    finally:
        await http.aclose()


def _batches(server: str, model: str, priority: str) -> float:
    key = f'dowse_embedder_batches_total{{model="{model}",priority="{priority}"}} '
    text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    return next((float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(key)), 0.0)


async def test_http_client_sends_the_priority(server: str) -> None:
    """The field (embeddings) and the X-Dowse-Priority header (rerank) reach the server's batcher."""
    http = HttpEmbedderClient(server, token=TOKEN)
    try:
        e0, r0 = _batches(server, "minilm", "batch"), _batches(server, "ms-marco-l12", "batch")
        await http.embed(["one short text"], priority="batch")
        await http.rerank("q", ["a document"], priority="batch")
        assert _batches(server, "minilm", "batch") == e0 + 1
        assert _batches(server, "ms-marco-l12", "batch") == r0 + 1
        i0 = _batches(server, "minilm", "interactive")
        await http.embed(["one short text"])  # absent: small, so interactive
        assert _batches(server, "minilm", "interactive") == i0 + 1
        assert _batches(server, "minilm", "batch") == e0 + 1
        with pytest.raises(InvalidInput) as err:
            await http.embed(["x"], priority="later")
        assert err.value.field == "priority"
    finally:
        await http.aclose()


async def test_http_client_maps_connection_errors_to_dependency_failed() -> None:
    client = HttpEmbedderClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    try:
        with pytest.raises(DependencyFailed):
            await client.embed(["x"])
    finally:
        await client.aclose()


def test_metrics_exposed(server: str) -> None:
    post(server, "/v1/embeddings", {"input": ["metrics probe"]})
    post(server, "/v1/embeddings", {"input": []})
    text = httpx.get(f"{server}/metrics", headers=AUTH).text
    for name in (
        'dowse_embedder_requests_total{endpoint="/v1/embeddings",status="200"}',
        'dowse_embedder_requests_total{endpoint="/v1/embeddings",status="422"}',
        "dowse_embedder_request_seconds_bucket",
        'dowse_embedder_batch_size_count{model="minilm"}',
        'dowse_embedder_queue_depth{model="minilm"}',
        'dowse_embedder_tokens_total{model="minilm"}',
    ):
        assert name in text, name


# -- in-process ASGI apps -------------------------------------------------------------------------------


async def _asgi(settings: Any, wait_ready: bool = True) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    from services.app import create_app

    app = create_app(settings, ["embedder"])
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        if wait_ready:
            for _ in range(600):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        yield app, client


async def test_full_queue_answers_429(model_cache: Path, exported_minilm: Path) -> None:
    from services.settings import EmbedderSettings

    settings = EmbedderSettings(model_cache=model_cache, extra_models=[], max_queue=4, max_wait_ms=200)
    async for _, client in _asgi(settings):
        rs = await asyncio.gather(
            *(client.post("/v1/embeddings", json={"input": ["t", "u"]}) for _ in range(10))
        )
        codes = sorted(r.status_code for r in rs)
        assert codes.count(200) >= 2 and 429 in codes and set(codes) <= {200, 429}
        err = next(r for r in rs if r.status_code == 429).json()["error"]
        assert err["type"] == "overloaded" and err["limit"] == 4 and err["field"] == "input"


async def test_not_ready_is_503_while_health_is_200(tmp_path: Path) -> None:
    from services.settings import EmbedderSettings

    # nothing exported and auto_export off: loading fails, the process stays up but never ready
    settings = EmbedderSettings(model_cache=tmp_path, extra_models=[], auto_export=False)
    async for _, client in _asgi(settings, wait_ready=False):
        assert (await client.get("/health")).status_code == 200
        await asyncio.sleep(0.2)
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["components"] == {"embedder": False}
        r2 = await client.post("/v1/embeddings", json={"input": "x"})
        assert r2.status_code == 503 and r2.json()["error"]["type"] == "not_ready"
        info = (await client.get("/info")).json()
        assert info["ready"] is False and "dowse models export minilm" in info["load_error"]


NO_TORCH_SCRIPT = """
import asyncio, json, sys
import httpx
from services.app import create_app
from services.settings import EmbedderSettings

async def main():
    app = create_app(EmbedderSettings(model_cache=sys.argv[1], extra_models=["ms-marco-l12"]), ["embedder"])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            while (await c.get("/ready")).status_code != 200:
                await asyncio.sleep(0.05)
            e = await c.post("/v1/embeddings", json={"input": ["served without torch"]})
            r = await c.post("/rerank", json={"query": "q", "texts": ["a", "b"]})
            codes = [e.status_code, r.status_code]
    roots = {"torch", "sentence_transformers", "transformers"}
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in roots)
    print(json.dumps({"codes": codes, "heavy": heavy}))

asyncio.run(main())
"""


def test_serving_path_imports_no_torch(model_cache: Path, exported_minilm: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(model_cache)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codes"] == [200, 200]
    assert result["heavy"] == []


# -- property-based fuzz of the embedder's OpenAPI (acceptance 4: no 5xx) ----------------------------------
def _openapi() -> dict[str, Any]:
    from services.app import create_app
    from services.settings import EmbedderSettings

    return create_app(EmbedderSettings(), ["embedder"]).openapi()


FUZZ_SCHEMA = schemathesis.openapi.from_dict(_openapi())
FUZZ_OPS = [
    ("/v1/embeddings", "POST"),
    ("/embed", "POST"),
    ("/rerank", "POST"),
    ("/v1/rerank", "POST"),
    ("/v2/rerank", "POST"),
    ("/info", "GET"),
]


@pytest.mark.parametrize(("path", "method"), FUZZ_OPS)
def test_fuzz_openapi_never_5xx(server: str, path: str, method: str) -> None:
    """Schemathesis-generated requests (arbitrary JSON where the schema allows it) against the live server."""
    seen: list[int] = []

    @given(case=FUZZ_SCHEMA[path][method].as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        response = case.call(base_url=server, timeout=60, headers=AUTH)
        seen.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text[:300])
        if response.status_code >= 400:
            err = response.json()["error"]
            assert err["type"] and err["message"]

    check()
    assert len(seen) >= (1 if method == "GET" else 10)  # GET /info has a single possible request
