"""Served rerank weight: request > collection eval > setting > built-in; the eval file; pipeline use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway import fusion
from gateway.eval import choose_value
from gateway.pipeline import SearchPipeline, SearchRequest
from gateway.search_defaults import (
    BUILTIN,
    STAGES,
    builtin_weight,
    choose_rerank_weight,
    eval_entry,
    merge_eval_defaults,
    served_table,
    stage_key,
)
from services import gateway_api
from services.errors import install_error_handlers
from tests.unit.test_pipeline_fakes import FakeEmbedder, FakeIndexer

pytestmark = pytest.mark.timeout(60)

Q = "aspirin heart fever"
EVAL = {"version": 1, "rerank_weight": {"hybrid-rrf": {"weight": 0.6, "created": "2026-12-02T11:00:00Z"}}}


def test_stage_key() -> None:
    assert [stage_key(m, f) for m, f in [("bm25", "rrf"), ("dense", "convex")]] == ["bm25", "dense"]
    assert stage_key("hybrid", "rrf") == "hybrid-rrf" and stage_key("hybrid", "convex") == "hybrid-convex"
    assert set(STAGES) <= set(BUILTIN)


def test_precedence_request_eval_setting_builtin() -> None:
    info: dict[str, Any] = {"model": "minilm", "search_defaults": EVAL}
    # an explicit 0 is a request too (not "unset")
    assert choose_rerank_weight(0.0, "hybrid-rrf", info, setting=0.2) == (0.0, "request")
    assert choose_rerank_weight(None, "hybrid-rrf", info, setting=0.2) == (
        0.6,
        "eval:search_defaults.json@2026-12-02T11:00:00Z",
    )
    # the eval covers hybrid-rrf only: other stages fall to the setting, then to the built-in table
    assert choose_rerank_weight(None, "bm25", info, setting=0.2) == (0.2, "setting")
    assert choose_rerank_weight(None, "bm25", info) == (BUILTIN["bm25"], "default")
    assert choose_rerank_weight(None, "hybrid-rrf", {"model": "minilm"}) == (BUILTIN["hybrid-rrf"], "default")


def test_builtin_model_specific_entries() -> None:
    assert builtin_weight("dense", "minilm") == BUILTIN["dense"] == 0.35
    assert builtin_weight("dense", "bge-small") == 0.0
    assert builtin_weight("hybrid-convex", "bge-small") == BUILTIN["hybrid-convex"]
    assert builtin_weight("dense", None) == BUILTIN["dense"]


@pytest.mark.parametrize(
    "entry",
    [{"weight": 1.5}, {"weight": -0.1}, {"weight": "0.3"}, {"weight": True}, {}, 0.3, None],
)
def test_malformed_eval_entries_are_ignored(entry: Any) -> None:
    defaults = {"rerank_weight": {"hybrid-rrf": entry}}
    assert eval_entry(defaults, "hybrid-rrf") is None
    assert choose_rerank_weight(None, "hybrid-rrf", {"search_defaults": defaults})[1] == "default"
    for broken in (None, [], {"rerank_weight": [1]}, "x"):
        assert eval_entry(broken, "hybrid-rrf") is None  # type: ignore[arg-type]


def test_served_table_covers_every_stage() -> None:
    table = served_table({"model": "minilm", "search_defaults": EVAL})
    assert set(table) == set(STAGES)
    assert table["hybrid-rrf"]["weight"] == 0.6 and table["hybrid-rrf"]["weight_source"].startswith("eval:")
    assert table["bm25"] == {"weight": BUILTIN["bm25"], "weight_source": "default"}


def test_merge_eval_defaults_replaces_only_the_stages_it_chose() -> None:
    existing = {
        "rerank_weight": {
            "bm25": {"weight": 0.25, "created": "old"},
            "dense": {"weight": 7},  # malformed: dropped on rewrite
        }
    }
    run = {"dataset": "scifact", "queries": 300}
    doc = merge_eval_defaults(existing, {"hybrid-rrf": {"weight": 0.05, "per_fold": [0.0, 0.05]}}, run)
    table = doc["rerank_weight"]
    assert set(table) == {"bm25", "hybrid-rrf"}
    assert table["bm25"] == {"weight": 0.25, "created": "old"}
    new = table["hybrid-rrf"]
    assert new["weight"] == 0.05 and new["per_fold"] == [0.0, 0.05] and new["dataset"] == "scifact"
    assert new["created"].endswith("Z")
    with pytest.raises(ValueError, match="unknown first stage"):
        merge_eval_defaults(None, {"hybrid-dbsf": {"weight": 0.1}}, run)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        merge_eval_defaults(None, {"bm25": {"weight": 1.2}}, run)


def test_choose_value_trains_on_the_given_queries_with_the_one_se_rule() -> None:
    qs = "abcdefgh"
    base = dict.fromkeys(qs, 0.5)
    noisy = {q: 0.5 + (0.2 if i % 2 else -0.15) for i, q in enumerate(qs)}  # +0.025 mean, large spread
    clear = {q: 0.55 for q in qs}  # +0.05 on every query
    assert choose_value({0.0: base, 0.3: noisy}, list(qs)) == (0.3, pytest.approx(0.525))
    assert choose_value({0.0: base, 0.3: noisy}, list(qs), prefer=0.0) == (0.0, 0.5)
    assert choose_value({0.0: base, 0.5: clear}, list(qs), prefer=0.0)[0] == 0.5
    # 0.5 is best, 0.3 is within one SE of it (noisy), 0.0 is not (clear loss): the admissible value
    # closest to 0 wins
    assert choose_value({0.0: base, 0.3: noisy, 0.5: clear}, list(qs), prefer=0.0)[0] == 0.3
    # trained on a subset only: "b" alone prefers the noisy value
    assert choose_value({0.0: base, 0.3: noisy}, ["b"], prefer=0.0)[0] == 0.3


def make(setting: float | None = None) -> tuple[SearchPipeline, FakeEmbedder, FakeIndexer]:
    emb, idx = FakeEmbedder(), FakeIndexer()
    pipe = SearchPipeline(emb, idx, default_rerank_weight=setting, info_ttl_s=0.0)  # type: ignore[arg-type]
    return pipe, emb, idx


def ids(resp: Any) -> list[str]:
    return [h.id for h in resp.hits]


async def test_builtin_zero_skips_the_cross_encoder_and_says_so() -> None:
    pipe, emb, _ = make()
    base = await pipe.search(SearchRequest("sci", Q, top_k=6))
    resp = await pipe.search(SearchRequest("sci", Q, top_k=6, rerank=True, explain=True))
    assert BUILTIN["hybrid-rrf"] == 0.0
    assert ids(resp) == ids(base) and emb.rerank_calls == [] and "rerank" not in resp.timings_ms
    ex = resp.hits[0].explain
    assert ex is not None and ex["rerank"]["weight"] == 0.0 and ex["rerank"]["weight_source"] == "default"
    assert ex["rerank"]["score"] is None and "skipped" in ex["rerank"]
    plain = await pipe.search(SearchRequest("sci", Q, top_k=6, explain=True))
    assert plain.hits[0].explain is not None and plain.hits[0].explain["rerank"] is None


async def test_builtin_nonzero_stage_reranks_with_its_weight() -> None:
    pipe, emb, _ = make()
    resp = await pipe.search(SearchRequest("sci", Q, mode="bm25", top_k=4, rerank=True, explain=True))
    assert len(emb.rerank_calls) == 1
    ex = resp.hits[0].explain
    assert ex is not None and ex["rerank"]["weight"] == BUILTIN["bm25"]
    assert ex["rerank"]["weight_source"] == "default" and ex["rerank"]["score"] is not None


async def test_collection_eval_weight_is_served_and_request_still_wins() -> None:
    pipe, emb, idx = make(setting=0.9)
    idx.search_defaults = EVAL
    base = await pipe.search(SearchRequest("sci", Q, top_k=6, rerank_top_n=6))
    resp = await pipe.search(SearchRequest("sci", Q, top_k=6, rerank=True, rerank_top_n=6, explain=True))
    ex = resp.hits[0].explain
    assert ex is not None and ex["rerank"]["weight"] == 0.6
    assert ex["rerank"]["weight_source"] == "eval:search_defaults.json@2026-12-02T11:00:00Z"
    # the order is the blend at the file's weight, computed by hand from the fused head and the CE scores
    _, docs = emb.rerank_calls[-1]
    mixed = fusion.blend_rerank([h.score for h in base.hits], [len(d) / 10.0 for d in docs], 0.6)
    expected = [base.hits[i].id for i in sorted(range(6), key=lambda i: (-mixed[i], i))]
    assert ids(resp) == expected
    assert expected != ids(base)  # the weight moves the order, so the check above can fail
    own = await pipe.search(SearchRequest("sci", Q, top_k=6, rerank=True, rerank_weight=0.0, explain=True))
    assert ids(own) == ids(base) and own.hits[0].explain["rerank"]["weight_source"] == "request"  # type: ignore[index]
    # the setting applies where the eval chose nothing (convex), not where it did
    convex = await pipe.search(SearchRequest("sci", Q, fusion="convex", rerank=True, explain=True))
    rr = convex.hits[0].explain["rerank"]  # type: ignore[index]
    assert (rr["weight"], rr["weight_source"]) == (0.9, "setting")


async def test_defaults_route(tmp_path: Path) -> None:
    pipe, _, idx = make()
    idx.search_defaults = EVAL
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(gateway_api.router)
    app.state.search_pipeline = pipe
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.get("/v1/search/defaults/sci")
        assert r.status_code == 200
        body = r.json()
        assert body["collection"] == "sci" and body["rerank_top_n"] == 20
        assert body["rerank_weight"]["hybrid-rrf"]["weight"] == 0.6
        convex = {"weight": BUILTIN["hybrid-convex"], "weight_source": "default"}
        assert body["rerank_weight"]["hybrid-convex"] == convex
        missing = await c.get("/v1/search/defaults/nope")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "collection"
        bad = await c.get("/v1/search/defaults/bad%20name")
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "collection"
