"""Eval plumbing: BEIR loading, folds, cross-validated choice, latency stats, CE score cache, report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.eval import (
    CachedReranker,
    blended_run,
    choose_by_cv,
    evaluate,
    folds,
    latency_stats,
    load_beir,
)
from gateway.eval_report import write_report
from gateway.eval_runner import validate_configs
from indexer.client import Hit
from tests.unit.test_pipeline_fakes import FakeEmbedder

pytestmark = pytest.mark.timeout(300)


def test_load_beir_keeps_judged_queries(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t1\n3\td9\t0\n")
    (tmp_path / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": i, "text": f"q{i}"}) for i in ("1", "2", "3")) + "\n"
    )
    data = load_beir(tmp_path)
    assert data.queries == {"1": "q1"}  # query 2 unjudged, query 3 only has a 0 judgement
    assert data.qrels == {"1": {"d1": 1, "d2": 1}}


def test_folds_partition_deterministically() -> None:
    ids = [str(i) for i in range(23)]
    f1, f2 = folds(ids, 5), folds(list(reversed(ids)), 5)
    assert f1 == f2
    assert sorted(q for f in f1 for q in f) == sorted(ids)
    assert {len(f) for f in f1} <= {4, 5}


def test_choose_by_cv_never_looks_at_the_held_out_fold() -> None:
    fold_ids = [["a", "b"], ["c", "d"]]
    # value 0.0 is best on fold 0 only, value 1.0 on fold 1 only
    per_query = {0.0: {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}, 1.0: {"a": 0.0, "b": 0.0, "c": 0.9, "d": 0.9}}
    chosen = choose_by_cv(per_query, fold_ids)
    assert [v for v, _ in chosen] == [1.0, 0.0]  # each fold gets the value that wins on the OTHER fold
    assert [s for _, s in chosen] == pytest.approx([0.9, 1.0])


def test_choose_by_cv_one_se_rule_keeps_the_preferred_value_unless_the_gain_is_clear() -> None:
    fold_ids = [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    qs = "abcdefgh"
    base = dict.fromkeys(qs, 0.5)
    # weight 0.3: +0.2 on half the queries, -0.15 on the other half: a noisy +0.025 mean gain
    noisy = {q: 0.5 + (0.2 if i % 2 else -0.15) for i, q in enumerate(qs)}
    # weight 0.6: +0.1 on every query: a clear gain (zero variance of the paired difference)
    clear = {q: 0.6 for q in qs}
    assert [v for v, _ in choose_by_cv({0.0: base, 0.3: noisy}, fold_ids)] == [0.3, 0.3]
    assert [v for v, _ in choose_by_cv({0.0: base, 0.3: noisy}, fold_ids, prefer=0.0)] == [0.0, 0.0]
    chosen = choose_by_cv({0.0: base, 0.6: clear}, fold_ids, prefer=0.0)
    assert [v for v, _ in chosen] == [0.6, 0.6]
    assert [s for _, s in chosen] == pytest.approx([0.6, 0.6])


def test_latency_stats() -> None:
    st = latency_stats([0.001 * i for i in range(1, 101)], wall_s=5.0)
    assert st["p50_ms"] == pytest.approx(50.0)
    assert st["p95_ms"] == pytest.approx(95.0)
    assert st["p99_ms"] == pytest.approx(99.0)
    assert st["qps"] == pytest.approx(20.0)


def test_blended_run_extremes() -> None:
    hits = {"q": [Hit("a", 3.0), Hit("b", 2.0), Hit("c", 1.0), Hit("z", 0.5)]}
    ce = {"q": [0.0, 1.0, 5.0]}
    keep = blended_run(hits, ce, 0.0, top_n=3)["q"]
    assert sorted(keep, key=lambda d: -keep[d]) == ["a", "b", "c", "z"]
    plain = blended_run(hits, ce, 1.0, top_n=3)["q"]
    assert sorted(plain, key=lambda d: -plain[d]) == ["c", "b", "a", "z"]


def test_evaluate_with_pytrec_eval() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d5": 1}}
    run = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d3": 2.0, "d5": 1.0}}
    mean = evaluate(qrels, run)
    per = evaluate(qrels, run, per_query=True)
    assert per["ndcg@10"]["q1"] == pytest.approx(1.0)
    assert per["ndcg@10"]["q2"] == pytest.approx(1 / 1.5849625, rel=1e-6)  # relevant at rank 2: 1/log2(3)
    assert per["mrr@10"]["q2"] == pytest.approx(0.5)
    assert mean["recall@100"] == pytest.approx(1.0)
    # a query whose run is empty counts as 0, not as missing
    assert evaluate(qrels, {"q1": {}, "q2": {"d5": 1.0}})["ndcg@10"] == pytest.approx(0.5)


async def test_cached_reranker_computes_each_pair_once(tmp_path: Path) -> None:
    fake = FakeEmbedder()
    cr = CachedReranker(fake, tmp_path / "ce.sqlite")  # type: ignore[arg-type]
    first = await cr.rerank("q", ["aa", "bbbb"])
    again = await cr.rerank("q", ["bbbb", "aa", "cccccc"])
    assert again[:2] == [first[1], first[0]]
    assert cr.computed == 3 and cr.hits == 2
    assert fake.rerank_calls[-1] == ("q", ["cccccc"])
    await cr.aclose()
    reopened = CachedReranker(fake, tmp_path / "ce.sqlite")  # type: ignore[arg-type]
    assert await reopened.rerank("q", ["aa"]) == [first[0]]
    assert reopened.computed == 0
    reopened.live = True
    await reopened.rerank("q", ["aa"])
    assert fake.rerank_calls[-1] == ("q", ["aa"])  # live mode bypasses the cache
    await reopened.aclose()


def test_report_files_and_config_names(tmp_path: Path) -> None:
    results = {
        "bm25": {
            "config": "bm25",
            "ndcg@10": 0.68,
            "recall@100": 0.9,
            "mrr@10": 0.6,
            "p50_ms": 2.0,
            "p95_ms": 3.0,
            "p99_ms": 4.0,
            "qps": 400.0,
        },
        "hybrid-rrf+rerank": {
            "config": "hybrid-rrf+rerank",
            "ndcg@10": 0.72,
            "recall@100": 0.95,
            "mrr@10": 0.7,
            "p50_ms": 1700.0,
            "p95_ms": 2000.0,
            "p99_ms": 2100.0,
            "qps": 0.6,
            "cv": {"param": "rerank_weight", "per_fold": [0.1, 0.15]},
            "latency_queries": 20,
        },
    }
    paths = write_report(results, {"queries": 300}, tmp_path, "eval_test")
    assert all(p.stat().st_size > 0 for p in paths)
    md = paths[1].read_text()
    assert "| hybrid-rrf+rerank | 0.7200 |" in md and "rerank_weight per fold [0.1, 0.15]" in md
    assert json.loads(paths[0].read_text())["results"]["bm25"]["ndcg@10"] == 0.68
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
    assert validate_configs(["bm25", "hybrid-rrf+ce"]) == ["bm25", "hybrid-rrf+ce"]
    with pytest.raises(ValueError):
        validate_configs(["bm42"])
    with pytest.raises(ValueError):
        validate_configs(["hybrid-rrf+magic"])
