"""The official `openai` and `cohere` SDKs and dowse_client against a real `dowse serve`: answers equal
Dowse's own (raw HTTP), errors come back as each SDK's typed 422 / 429, jobs and documents round-trip."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import numpy as np
import openai
import pytest

import dowse_client as dc
from tests.integration.client_server import FAQ, MAX_QUEUE, dowse_server, metric, raw_search

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
TEXTS = ["How do I reset my password?", "Vitamin D and hip fractures", "a"]
DOCS = [d["text"] for d in FAQ]
COLL = "faq"
# ONNX Runtime is deterministic for one input on one machine, but a vector computed in another request may
# sit in a differently-composed batch; per-token int8 keeps rows independent of their companions, so any
# difference is float32 accumulation order: far below 1e-5 on unit vectors.
ATOL = 1e-5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, redis_url: str) -> Iterator[str]:
    with dowse_server(tmp_path_factory.mktemp("client-sdk"), model_cache, redis_url) as url:
        with dc.DowseClient(url) as client:
            client.create_collection(COLL)
            assert client.upsert(COLL, FAQ).upserted == len(FAQ)
        yield url


def dowse_vectors(url: str, texts: list[str], **extra: Any) -> np.ndarray:
    r = httpx.post(f"{url}/v1/embeddings", json={"input": texts, "model": "minilm", **extra}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([row["embedding"] for row in r.json()["data"]], dtype=np.float64)


def test_openai_sdk_embeddings_equal_dowse_float_base64_and_dimensions(server: str) -> None:
    sent: list[dict[str, Any]] = []
    http = openai.DefaultHttpxClient(
        event_hooks={"request": [lambda req: sent.append(json.loads(req.content))]}
    )
    oa = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, http_client=http)
    ref = dowse_vectors(server, TEXTS)
    floats = oa.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    default = oa.embeddings.create(model="minilm", input=TEXTS)  # the SDK's default: base64 on the wire
    assert sent[0]["encoding_format"] == "float" and sent[1]["encoding_format"] == "base64"
    assert floats.model == "minilm" and floats.usage.prompt_tokens > 0
    for res in (floats, default):
        got = np.array([d.embedding for d in res.data])
        assert got.shape == (3, 384) and [d.index for d in res.data] == [0, 1, 2]
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    short = oa.embeddings.create(model="minilm", input=TEXTS, dimensions=128)
    got = np.array([d.embedding for d in short.data])
    np.testing.assert_allclose(got, dowse_vectors(server, TEXTS, dimensions=128), atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # truncated, then re-normalised


def test_openai_sdk_errors_422_and_429(server: str) -> None:
    oa = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=1)
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        oa.embeddings.create(model="text-embedding-3-small", input="x")
    assert bad.value.status_code == 422 and isinstance(bad.value.body, dict)
    assert bad.value.body["field"] == "model" and "minilm" in bad.value.body["limit"]
    before = metric(server, "dowse_embedder_requests_total", endpoint="/v1/embeddings", status="429")
    with pytest.raises(openai.RateLimitError) as busy:
        oa.embeddings.create(model="minilm", input=["x"] * (MAX_QUEUE + 1))
    assert busy.value.status_code == 429 and busy.value.body["type"] == "overloaded"
    after = metric(server, "dowse_embedder_requests_total", endpoint="/v1/embeddings", status="429")
    assert after - before == 2  # the SDK retried once (max_retries=1), then raised


def test_cohere_v1_and_v2_rerank_equal_dowse(server: str) -> None:
    query = "I forgot my password"
    r = httpx.post(f"{server}/v1/rerank", json={"query": query, "documents": DOCS, "top_n": 3}, timeout=60)
    ref = [(x["index"], x["relevance_score"]) for x in r.json()["results"]]
    assert DOCS[ref[0][0]] == FAQ[0]["text"]
    v1 = cohere.Client(base_url=server, api_key="unused")
    res1 = v1.rerank(model="ms-marco-l12", query=query, documents=DOCS, top_n=3)
    v2 = cohere.ClientV2(base_url=server, api_key="unused")
    res2 = v2.rerank(model="ms-marco-l12", query=query, documents=DOCS, top_n=3)
    for res in (res1, res2):
        assert [x.index for x in res.results] == [i for i, _ in ref]
        np.testing.assert_allclose([x.relevance_score for x in res.results], [s for _, s in ref], atol=ATOL)
    assert res2.id


def test_cohere_errors_422_and_429(server: str) -> None:
    co = cohere.ClientV2(base_url=server, api_key="unused")
    with pytest.raises(cohere.errors.UnprocessableEntityError) as bad:
        co.rerank(model="rerank-v3.5", query="q", documents=["a"])
    assert bad.value.status_code == 422 and bad.value.body["error"]["field"] == "model"
    with pytest.raises(cohere.errors.TooManyRequestsError) as busy:
        co.rerank(model="ms-marco-l12", query="q", documents=["d"] * (MAX_QUEUE + 1),
                  request_options={"max_retries": 0})  # fmt: skip
    assert busy.value.status_code == 429 and busy.value.body["error"]["type"] == "overloaded"


SEARCHES: list[dict[str, Any]] = [
    {"query": "forgot my password", "mode": "hybrid", "top_k": 5},
    {"query": "card lost abroad", "mode": "bm25", "top_k": 3, "filters": {"topic": "cards"}},
    {"query": "bone fractures", "mode": "dense", "top_k": 4},
    {"query": "change email", "mode": "hybrid", "fusion": "convex", "alpha": 0.3, "rerank": True, "top_k": 3},
]


@pytest.mark.parametrize("body", SEARCHES)
async def test_client_search_sync_and_async_equal_raw_http(server: str, body: dict[str, Any]) -> None:
    ref = raw_search(server, {"collection": COLL, **body})
    opts = {k: v for k, v in body.items() if k != "query"}
    with dc.DowseClient(server) as client:
        sync = client.search(COLL, body["query"], **opts)
    async with dc.AsyncDowseClient(server) as aclient:
        asy = await aclient.search(COLL, body["query"], **opts)
    for res in (sync, asy):
        assert [(h.id, h.title, h.text, h.metadata) for h in res.hits] == [
            (h["id"], h["title"], h["text"], h["metadata"]) for h in ref["hits"]
        ]
        np.testing.assert_allclose([h.score for h in res.hits], [h["score"] for h in ref["hits"]], atol=ATOL)
        assert res.degraded is False and "total" in res.timings_ms


def test_client_embed_and_rerank_equal_raw_http(server: str) -> None:
    with dc.DowseClient(server) as client:
        emb = client.embed(TEXTS, model="minilm")
        ranked = client.rerank("I forgot my password", DOCS, top_n=2, return_documents=True)
    np.testing.assert_allclose(np.array(emb.vectors), dowse_vectors(server, TEXTS), atol=ATOL, rtol=0)
    assert emb.model == "minilm" and len(emb.token_counts) == 3 and emb.prompt_tokens == sum(emb.token_counts)
    assert (
        ranked[0].index == 0
        and ranked[0].text == DOCS[0]
        and ranked[0].relevance_score > ranked[1].relevance_score
    )


def test_client_typed_errors_from_the_server(server: str) -> None:
    with dc.DowseClient(server, max_retries=1, backoff_s=0.01) as client:
        with pytest.raises(dc.NotFound) as nf:
            client.search("no-such-collection", "q")
        with pytest.raises(dc.InvalidInput) as inv:
            client.search(COLL, "q", top_k=1000)
        with pytest.raises(dc.Conflict) as conflict:
            client.create_collection(COLL, dims=64)
        with pytest.raises(dc.Overloaded) as busy:
            client.embed(["x"] * (MAX_QUEUE + 1))
    assert nf.value.status_code == 404 and nf.value.message
    assert inv.value.field == "top_k" and inv.value.limit == 100
    assert conflict.value.status_code == 409 and conflict.value.field == "name"
    assert busy.value.limit == MAX_QUEUE and busy.value.field == "input"


def test_client_jobs_and_documents_round_trip(server: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": f"j{i}", "title": f"T{i}", "text": f"job document number {i} about sleep"} for i in range(6)
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with dc.DowseClient(server) as client:
        client.create_collection("jobs", chunk_tokens=64)
        job = client.start_job("jobs", str(corpus))
        progress = list(client.iter_job("jobs", job.id, poll_s=0.2, timeout_s=120))
        assert progress[-1].status == "completed" and progress[-1].done == 6 and progress[-1].errors == []
        assert all(not p.finished for p in progress[:-1])
        assert [j.id for j in client.list_jobs("jobs")] == [job.id]
        docs = client.get_documents("jobs", ["j2", "missing", "j0"])
        assert [(d.id, d.title) for d in docs] == [("j2", "T2"), ("j0", "T0")]
        assert client.delete_documents("jobs", ["j0", "j1", "nope"]) == 2
        assert client.get_collection("jobs").stats["documents"] == 4
        assert "jobs" in [c.name for c in client.list_collections()]
        client.delete_collection("jobs")
        with pytest.raises(dc.NotFound):
            client.get_collection("jobs")


def test_client_get_or_call_against_the_real_cache(server: str) -> None:
    ns = f"goc-{uuid.uuid4().hex[:8]}"
    calls: list[str] = []

    def llm(answer: str) -> Any:
        return lambda: calls.append(answer) or answer

    with dc.DowseClient(server) as client:
        first = client.get_or_call(ns, "How do I reset my password?", llm("Settings > Security."))
        again = client.get_or_call(ns, "how can I reset my password", llm("Settings > Security."))
        other = client.get_or_call(ns, "How do I reset my card PIN?", llm("Call your bank."))
        stats = client.cache_stats(ns)
        client.cache_delete_namespace(ns)
    assert first.lookup.decision == "miss" and first.feedback is not None and first.feedback.stored_entry_id
    # a new entry is explored: the LLM runs, and its answer judges the cached one (correct) ...
    assert (
        again.lookup.decision == "explore" and again.feedback is not None and again.feedback.correct is True
    )
    # ... or, for another question with another answer, wrong: the fresh pair is stored as a new entry
    assert (
        other.lookup.decision == "explore" and other.feedback is not None and other.feedback.correct is False
    )
    assert other.feedback.stored_entry_id and calls == ["Settings > Security."] * 2 + ["Call your bank."]
    assert stats["feedback_correct"] == 1 and stats["feedback_wrong"] == 1 and stats["entries"] == 3
