"""SearchPipeline plumbing against fake clients: concurrency, degradation, rerank, explain, validation."""

from __future__ import annotations

import asyncio
import time

import pytest

from embedder.errors import InvalidInput, NotFound, Overloaded
from gateway import fusion
from gateway.errors import InvalidSearch, SearchFailed
from gateway.pipeline import CircuitBreaker, SearchPipeline, SearchRequest
from tests.unit.test_pipeline_fakes import FakeEmbedder, FakeIndexer, outage

pytestmark = pytest.mark.timeout(30)

Q = "aspirin heart fever"


def make(**kw: object) -> tuple[SearchPipeline, FakeEmbedder, FakeIndexer]:
    emb, idx = FakeEmbedder(), FakeIndexer()
    kw.setdefault("embed_timeout_s", 0.3)
    kw.setdefault("rerank_timeout_s", 0.3)
    return SearchPipeline(emb, idx, **kw), emb, idx  # type: ignore[arg-type]


def ids(resp: object) -> list[str]:
    return [h.id for h in resp.hits]  # type: ignore[attr-defined]


async def test_hybrid_rrf_is_fusion_of_the_two_retrievers() -> None:
    pipe, emb, idx = make()
    resp = await pipe.search(SearchRequest("sci", Q, top_k=5))
    assert resp.degraded is None
    lex = await idx.search_lexical("sci", Q, 100)
    vec = (await emb.embed([Q])).vectors[0]
    den = await idx.search_dense("sci", vec, 100)
    expected = fusion.rrf([[(h.id, h.score) for h in lex], [(h.id, h.score) for h in den]], k=60)
    assert ids(resp) == [r.id for r in expected][:5]
    assert [h.score for h in resp.hits] == pytest.approx([r.score for r in expected][:5])
    top = resp.hits[0]
    assert top.title and top.text  # documents come back with the hit
    for key in ("collection", "embed", "bm25", "dense", "retrieve", "fusion", "total"):
        assert key in resp.timings_ms


async def test_query_embedding_uses_collection_model_prompt_dims_and_instruction() -> None:
    pipe, emb, _ = make()
    await pipe.search(SearchRequest("sci", Q, mode="dense"))
    assert emb.calls[-1] == {
        "texts": [Q],
        "model": "fake-model",
        "prompt_name": "query",
        "instruction": None,
        "dimensions": 16,
        "priority": "interactive",  # a search's query embedding goes before ingest micro-batches
    }
    await pipe.search(SearchRequest("sci", Q, mode="dense", instruction="Find evidence: "))
    assert emb.calls[-1]["instruction"] == "Find evidence: " and emb.calls[-1]["prompt_name"] is None


async def test_bm25_and_dense_run_concurrently() -> None:
    pipe, emb, idx = make(embed_timeout_s=2.0)
    idx.lexical_delay_s = 0.25
    emb.delay_s = 0.25
    t0 = time.perf_counter()
    resp = await pipe.search(SearchRequest("sci", Q))
    wall = time.perf_counter() - t0
    assert resp.degraded is None
    # serial would take >= 0.5 s; concurrent ~0.25 s (+ scheduling slack on a loaded 2-core box)
    assert wall < 0.45


async def test_convex_modes_and_alpha_extremes() -> None:
    pipe, _, _ = make()
    bm25 = await pipe.search(SearchRequest("sci", Q, mode="bm25", top_k=3))
    dense = await pipe.search(SearchRequest("sci", Q, mode="dense", top_k=3))
    lex_only = await pipe.search(SearchRequest("sci", Q, fusion="convex", alpha=0.0, top_k=3))
    den_only = await pipe.search(SearchRequest("sci", Q, fusion="convex", alpha=1.0, top_k=3))
    # min-max maps each list's last score to 0 (= absent), so compare the strictly-positive part only
    assert ids(lex_only)[:2] == ids(bm25)[:2]
    assert ids(den_only)[:2] == ids(dense)[:2]
    z = await pipe.search(SearchRequest("sci", Q, fusion="convex", alpha=0.5, normalization="z-score"))
    assert z.hits and z.degraded is None


async def test_embedder_down_degrades_to_bm25() -> None:
    pipe, emb, _ = make()
    bm25 = await pipe.search(SearchRequest("sci", Q, mode="bm25"))
    emb.fail = outage()
    for mode in ("hybrid", "dense"):
        resp = await pipe.search(SearchRequest("sci", Q, mode=mode))  # type: ignore[arg-type]
        assert resp.degraded and "bm25 only" in resp.degraded and "unreachable" in resp.degraded
        assert resp.degraded_reasons == ["embed_failed"]
        assert ids(resp) == ids(bm25)
        assert [h.score for h in resp.hits] == [h.score for h in bm25.hits]


async def test_embedder_hang_degrades_within_budget() -> None:
    pipe, emb, _ = make(embed_timeout_s=0.2)
    emb.delay_s = 10.0
    t0 = time.perf_counter()
    resp = await pipe.search(SearchRequest("sci", Q))
    assert time.perf_counter() - t0 < 1.0
    assert resp.degraded and "timed out" in resp.degraded
    assert resp.degraded_reasons == ["embed_timeout"]
    assert resp.hits


async def test_circuit_breaker_opens_then_recovers() -> None:
    pipe, emb, _ = make(breaker=CircuitBreaker(threshold=2, cooldown_s=0.2))
    emb.fail = outage()
    for _ in range(2):
        await pipe.search(SearchRequest("sci", Q))
    n = len(emb.calls)
    resp = await pipe.search(SearchRequest("sci", Q))
    assert len(emb.calls) == n  # circuit open: the embedder is not even called
    assert resp.degraded and "circuit open" in resp.degraded
    assert resp.degraded_reasons == ["embed_circuit_open"]
    emb.fail = None
    await asyncio.sleep(0.25)
    resp = await pipe.search(SearchRequest("sci", Q))
    assert resp.degraded is None and len(emb.calls) == n + 1 and resp.degraded_reasons == []


async def test_lexical_failure_degrades_to_dense_and_both_failing_is_424() -> None:
    pipe, emb, idx = make()
    dense = await pipe.search(SearchRequest("sci", Q, mode="dense"))
    idx.lexical_fail = RuntimeError("tantivy exploded")
    resp = await pipe.search(SearchRequest("sci", Q))
    assert resp.degraded and "dense only" in resp.degraded
    assert resp.degraded_reasons == ["bm25_failed"]
    assert ids(resp) == ids(dense)
    emb.fail = outage()
    with pytest.raises(SearchFailed):
        await pipe.search(SearchRequest("sci", Q))


async def test_user_errors_propagate() -> None:
    pipe, _, _ = make()
    with pytest.raises(NotFound):
        await pipe.search(SearchRequest("nope", Q))
    with pytest.raises(InvalidInput) as err:
        await pipe.search(SearchRequest("sci", Q, filters={"year": [1, 2]}))
    assert err.value.field == "filters.year"
    resp = await pipe.search(SearchRequest("sci", Q, filters={"year": 2015}))
    assert ids(resp) == ["d3"]


async def test_rerank_weight_extremes_and_explain() -> None:
    pipe, emb, _ = make()
    base = await pipe.search(SearchRequest("sci", Q, top_k=6))
    keep = await pipe.search(SearchRequest("sci", Q, top_k=6, rerank=True, rerank_weight=0.0))
    assert ids(keep) == ids(base)
    plain = await pipe.search(SearchRequest("sci", Q, top_k=6, rerank=True, rerank_weight=1.0, explain=True))
    head_ids = ids(base)
    texts = {h.id: f"{h.title} {h.text}" for h in base.hits}
    by_ce = sorted(head_ids, key=lambda i: (-len(texts[i]), head_ids.index(i)))
    assert ids(plain) == by_ce
    query, docs = emb.rerank_calls[-1]
    assert query == Q and docs == [texts[i] for i in head_ids]
    ex = plain.hits[0].explain
    assert ex is not None and ex["rerank"]["score"] == pytest.approx(len(texts[by_ce[0]]) / 10.0)
    assert ex["fused"]["method"] == "rrf" and ex["fused"]["rank"] == head_ids.index(by_ce[0]) + 1
    assert ex["bm25"] is None or ex["bm25"]["rank"] >= 1
    assert "rerank" in plain.timings_ms


async def test_rerank_only_top_n_and_tail_kept() -> None:
    pipe, emb, _ = make()
    base = await pipe.search(SearchRequest("sci", Q, top_k=6))
    resp = await pipe.search(SearchRequest("sci", Q, top_k=6, rerank=True, rerank_top_n=2, rerank_weight=1.0))
    assert len(emb.rerank_calls[-1][1]) == 2
    assert set(ids(resp)[:2]) == set(ids(base)[:2]) and ids(resp)[2:] == ids(base)[2:]
    scores = [h.score for h in resp.hits]
    assert scores == sorted(scores, reverse=True)  # the tail sits below the reranked head on one scale


async def test_slow_reranker_keeps_fused_order_flagged() -> None:
    pipe, emb, _ = make(rerank_timeout_s=0.2)
    base = await pipe.search(SearchRequest("sci", Q))
    emb.rerank_delay_s = 5.0
    t0 = time.perf_counter()
    resp = await pipe.search(SearchRequest("sci", Q, rerank=True, rerank_weight=0.5, explain=True))
    assert time.perf_counter() - t0 < 1.0
    assert resp.degraded and "rerank skipped (timed out)" in resp.degraded
    assert resp.degraded_reasons == ["rerank_timeout"]
    assert emb.rerank_priorities[-1] == "interactive"
    assert ids(resp) == ids(base)
    assert resp.hits[0].explain is not None and resp.hits[0].explain["rerank"] is None


async def test_overloaded_embedder_is_its_own_reason() -> None:
    pipe, emb, _ = make()
    emb.fail = Overloaded("embedder interactive queue is full", field="input", limit=4)
    resp = await pipe.search(SearchRequest("sci", Q, mode="dense"))
    assert resp.degraded and "bm25 only" in resp.degraded
    assert resp.degraded_reasons == ["embed_overloaded"]


async def test_collection_info_is_cached() -> None:
    pipe, _, idx = make(info_ttl_s=60)
    for _ in range(3):
        await pipe.search(SearchRequest("sci", Q, mode="bm25"))
    assert idx.info_calls == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": "  "}, "query"),
        ({"query": "x" * 5000}, "query"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 101}, "top_k"),
        ({"mode": "fuzzy"}, "mode"),
        ({"fusion": "borda"}, "fusion"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"normalization": "softmax"}, "normalization"),
        ({"candidates": 0}, "candidates"),
        ({"candidates": 5, "top_k": 10}, "candidates"),
        ({"rerank_top_n": 0}, "rerank_top_n"),
        ({"rerank_weight": 2.0}, "rerank_weight"),
        ({"filters": ["year"]}, "filters"),
        ({"rrf_k": -1}, "rrf_k"),
        ({"collection": ""}, "collection"),
    ],
)
async def test_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    pipe, emb, _ = make()
    args: dict[str, object] = {"collection": "sci", "query": Q, **kwargs}
    with pytest.raises(InvalidSearch) as err:
        await pipe.search(SearchRequest(**args))  # type: ignore[arg-type]
    assert err.value.field == field
    assert not emb.calls


async def test_indexer_failures_in_bm25_mode_are_424_never_500() -> None:
    pipe, _, idx = make(retrieve_timeout_s=0.2)
    idx.lexical_fail = ValueError("bad url")  # e.g. an httpx.InvalidURL escaping a client
    with pytest.raises(SearchFailed, match="bm25 failed") as err:
        await pipe.search(SearchRequest("sci", Q, mode="bm25"))
    assert "ValueError" not in err.value.message  # exception classes are logged, never shown to clients
    idx.lexical_fail = None
    idx.lexical_delay_s = 5.0
    t0 = time.perf_counter()
    with pytest.raises(SearchFailed, match="timed out"):
        await pipe.search(SearchRequest("sci", Q, mode="bm25"))
    assert time.perf_counter() - t0 < 1.0


async def test_malformed_collection_name_is_rejected_before_any_call() -> None:
    pipe, emb, idx = make()
    with pytest.raises(InvalidSearch) as err:
        await pipe.search(SearchRequest("\x1b", Q))
    assert err.value.field == "collection" and idx.info_calls == 0 and not emb.calls
