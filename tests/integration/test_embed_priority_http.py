"""Priority classes and request caps with the real models: batch invariance under mixed load, the
``priority`` field / ``X-Dowse-Priority`` header, 413 caps and ``/info`` limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedder.service import EmbeddingService

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def scifact(shared_data: Path, n: int) -> tuple[list[str], list[str]]:
    """``n`` SciFact passages (long: most hit minilm's 256 tokens) and ``n`` queries."""
    root = shared_data / "scifact"
    docs = []
    with (root / "corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            docs.append(f"{d['title']} {d['text']}")
            if len(docs) == n:
                break
    with (root / "queries.jsonl").open() as fh:
        queries = [json.loads(line)["text"] for line, _ in zip(fh, range(n), strict=False)]
    return docs, queries


async def test_vector_does_not_depend_on_micro_batch_or_class(
    model_cache: Path, exported_minilm: Path, shared_data: Path
) -> None:
    """Each probe text alone (idle) vs the same text inside a mixed interactive + batch load."""
    docs, queries = scifact(shared_data, 48)
    probes = queries[:4] + docs[:4]
    svc = EmbeddingService(model_cache, [], micro_batch_tokens=600)  # 2 passages per micro-batch
    await svc.start()
    try:
        alone = np.stack([(await svc.embed([t], priority="interactive")).vectors[0] for t in probes])
        # batch work with the probes somewhere inside, and interactive requests that land between its
        # micro-batches (other queries mixed in with the probe queries)
        bulk = asyncio.ensure_future(svc.embed(docs[4:24] + probes + docs[24:], priority="batch"))
        await asyncio.sleep(0.05)
        inter = await asyncio.gather(
            *(
                svc.embed([queries[10 + k], probes[k], queries[20 + k]], priority="interactive")
                for k in range(4)
            )
        )
        mixed = (await bulk).vectors[20 : 20 + len(probes)]
    finally:
        await svc.stop()
    inter_vecs = np.stack([r.vectors[1] for r in inter])
    # Per-token int8 quantisation makes each row independent of its batch companions: measured here the
    # rows are bit-identical (max abs difference 0.0). 1e-6 on unit vectors leaves room for float32
    # summation order if a CPU's kernels block a MatMul differently for another batch shape, and still
    # catches per-batch activation scales (cosine 0.987, i.e. components off by ~1e-2).
    np.testing.assert_allclose(mixed, alone, atol=1e-6)
    np.testing.assert_allclose(inter_vecs, alone[:4], atol=1e-6)


async def _asgi(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    from services.app import create_app

    app = create_app(settings, ["embedder"])
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client,
    ):
        for _ in range(600):
            if (await client.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield client


def batches(metrics: str, model: str, priority: str) -> float:
    key = f'dowse_embedder_batches_total{{model="{model}",priority="{priority}"}} '
    line = next((ln for ln in metrics.splitlines() if ln.startswith(key)), None)
    return float(line.split()[-1]) if line else 0.0


async def test_caps_priority_field_header_and_info(
    model_cache: Path, exported_minilm: Path, shared_data: Path
) -> None:
    from services.settings import EmbedderSettings

    docs, _ = scifact(shared_data, 140)
    settings = EmbedderSettings(
        model_cache=model_cache, extra_models=["ms-marco-l12"], max_rerank_tokens=1000
    )
    async for c in _asgi(settings):
        info = (await c.get("/info")).json()
        limits = info["limits"]
        assert limits["max_request_tokens"] == 32768 and limits["max_rerank_documents"] == 100
        assert limits["max_rerank_tokens"] == 1000
        assert limits["micro_batch_tokens"] == settings.micro_batch_tokens

        # 140 passages x 256 tokens (truncated) > 32768 tokens per request
        r = await c.post("/v1/embeddings", json={"input": docs})
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["type"] == "too_large" and err["field"] == "input" and err["limit"] == 32768
        r = await c.post("/embed", json={"inputs": docs, "truncate": True})
        assert r.status_code == 413 and r.json()["error"]["field"] == "inputs"

        r = await c.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 101})
        assert r.status_code == 413
        assert r.json()["error"] == {
            "type": "too_large",
            "message": r.json()["error"]["message"],
            "field": "documents",
            "limit": 100,
        }
        r = await c.post("/rerank", json={"query": "q", "texts": ["d"] * 101})
        assert r.status_code == 413 and r.json()["error"]["field"] == "texts"
        r = await c.post("/v1/rerank", json={"query": "q", "documents": docs[:10]})  # ~10 x 256 > 1000
        assert r.status_code == 413 and r.json()["error"]["limit"] == 1000
        assert (await c.post("/v1/rerank", json={"query": "q", "documents": docs[:2]})).status_code == 200

        # priority: the body field on /v1/embeddings and /v1/rerank, the header on the TEI routes
        before = (await c.get("/metrics")).text
        hdr, hdr2 = {"X-Dowse-Priority": "batch"}, {"x-dowse-priority": "Batch"}  # any case
        ok = [
            await c.post("/v1/embeddings", json={"input": ["a short text"], "priority": "batch"}),
            await c.post("/embed", json={"inputs": ["a short text"]}, headers=hdr),
            await c.post("/v1/rerank", json={"query": "q", "documents": ["d"], "priority": "batch"}),
            await c.post("/rerank", json={"query": "q", "texts": ["d"]}, headers=hdr2),
            await c.post("/v1/embeddings", json={"input": ["x"], "priority": "interactive"}),
        ]
        assert [r.status_code for r in ok] == [200] * 5
        after = (await c.get("/metrics")).text
        # each batch-class request ran as (at least) one batch-class model batch; tiny requests default
        # to interactive, so nothing else in this test runs in the batch class
        assert batches(after, "minilm", "batch") - batches(before, "minilm", "batch") == 2
        assert batches(after, "ms-marco-l12", "batch") - batches(before, "ms-marco-l12", "batch") == 2

        bad = await c.post("/v1/embeddings", json={"input": ["x"], "priority": "urgent"})
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "priority"
        assert bad.json()["error"]["limit"] == ["interactive", "batch"]
        bad = await c.post("/embed", json={"inputs": ["x"]}, headers={"X-Dowse-Priority": "now"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "X-Dowse-Priority"
