"""``/v1/embeddings`` with ``collection``: real MiniLM embedder + indexer in one app, over HTTP (ASGI)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from embedder.inprocess import InProcessEmbedderClient
from embedder.service import EmbeddingService
from indexer.service import IndexerService
from services import embedder_api, indexer_api
from services.errors import install_error_handlers

pytestmark = pytest.mark.timeout(300)
CACHE = Path(
    os.environ.get("DOWSE_TEST_MODEL_CACHE", Path(__file__).resolve().parents[2] / ".cache" / "models")
)


async def test_embeddings_with_collection_are_rotated_and_truncated(tmp_path: Path) -> None:
    emb = EmbeddingService(CACHE, [], default_model="minilm", batching=False, auto_export=False)
    emb.start_blocking()
    svc = IndexerService(tmp_path, InProcessEmbedderClient(emb), rotation_min_chunks=0)
    await svc.open()
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(embedder_api.router)
    app.include_router(indexer_api.router)
    app.state.settings = SimpleNamespace(model="minilm")
    app.state.embedding_service = emb
    app.state.indexer_service = svc
    topics = ["protein folding", "heart disease", "gene expression", "vaccine trial", "brain imaging"]
    docs = [
        {"id": f"d{i}", "text": f"{topics[i % 5]} study number {i} in cohort {i % 13}"} for i in range(40)
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/collections", json={"name": "c", "model": "minilm", "dims": 16})
        assert r.status_code == 201, r.text
        body = {"input": ["gene expression in cancer"], "collection": "c", "dimensions": 8}
        r = await c.post("/v1/embeddings", json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == "collection"  # no rotation yet
        assert (await c.post("/v1/collections/c/documents", json={"documents": docs})).status_code == 200
        assert (await c.get("/v1/collections/c/rotation")).json()["version"] == 1  # 40 chunks >= 2 * 16

        r = await c.post("/v1/embeddings", json=body)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["data"][0]["embedding"], np.float32)
        full = emb.encode(["gene expression in cancer"], model="minilm")
        want = svc._collections["c"].rotation.truncate(full, 8, True)[0]  # type: ignore[union-attr]
        assert got.shape == (8,)
        # same model, same input, one rotation: only float32 rounding differs (JSON keeps float32 exactly)
        np.testing.assert_allclose(got, want, atol=1e-6)
        raw = full[0, :8] / np.linalg.norm(full[0, :8])
        assert not np.allclose(got, raw, atol=1e-3)  # rotated, not plain truncation

        r = await c.post("/v1/embeddings", json={"input": "heart", "collection": "c"})
        assert len(r.json()["data"][0]["embedding"]) == 16  # default: the collection's dims
        vec16 = r.json()["data"][0]["embedding"]
        r = await c.post("/v1/collections/c/search/dense", json={"vector": vec16, "k": 3})
        assert r.status_code == 200 and len(r.json()["hits"]) == 3
        r = await c.post("/v1/embeddings", json={"input": "x", "collection": "c", "model": "bge-small"})
        assert r.status_code == 409 and r.json()["error"]["field"] == "model"
        r = await c.post("/v1/embeddings", json={"input": "x", "collection": "nope"})
        assert r.status_code == 404
    await svc.close()
