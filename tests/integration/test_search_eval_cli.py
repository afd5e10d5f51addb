"""`dowse eval` end to end on a tiny BEIR slice of SciFact: real models, real indexer, real reranker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def make_slice(shared: Path, out: Path, n_queries: int = 6, filler: int = 30) -> None:
    sci = shared / "scifact"
    rows = [x.split("\t") for x in (sci / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    judged = {q for q, _, _ in rows}
    qs = [json.loads(x) for x in (sci / "queries.jsonl").read_text().splitlines() if x.strip()]
    qs = [q for q in qs if q["_id"] in judged][:n_queries]
    keep = {q["_id"] for q in qs}
    rel = {d for q, d, _ in rows if q in keep}
    corpus = [json.loads(x) for x in (sci / "corpus.jsonl").read_text().splitlines() if x.strip()]
    docs = [d for d in corpus if d["_id"] in rel] + [d for d in corpus if d["_id"] not in rel][:filler]
    (out / "qrels").mkdir(parents=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    body = "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows if q in keep)
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + body)


@pytest.mark.timeout(600)
def test_dowse_eval_writes_table_json_png(tmp_path: Path, shared_data: Path, model_cache: Path) -> None:
    ds = tmp_path / "ds"
    make_slice(shared_data, ds)
    configs = ["bm25", "hybrid-rrf", "hybrid-convex", "hybrid-rrf+rerank", "hybrid-rrf+ce"]
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "eval",
        "--dataset",
        str(ds),
        "--data-dir",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "out"),
        "--name",
        "e",
        "--folds",
        "2",
        "--rerank-top-n",
        "2",
        "--latency-queries",
        "1",
    ]
    for c in configs:
        cmd += ["--config", c]
    env = {**os.environ, "DOWSE_MODEL_CACHE": str(model_cache)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((tmp_path / "out" / "e.json").read_text())
    res = out["results"]
    assert list(res) == configs
    for name, row in res.items():
        for m in ("ndcg@10", "recall@100", "mrr@10"):
            assert 0.0 <= row[m] <= 1.0, (name, m)
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["qps"] > 0
        assert row["degraded"] == 0, name
    # the tiny corpus holds every judged document: a working retriever finds most of them in its top 100
    assert res["bm25"]["recall@100"] > 0.8 and res["hybrid-rrf"]["recall@100"] > 0.8
    assert len(res["hybrid-convex"]["cv"]["per_fold"]) == 2
    assert len(res["hybrid-rrf+rerank"]["cv"]["per_fold"]) == 2
    # second-stage reranking only reorders the top 2: recall@100 is unchanged
    assert res["hybrid-rrf+ce"]["recall@100"] == pytest.approx(res["hybrid-rrf"]["recall@100"])
    assert out["meta"]["ce_scores_computed"] > 0
    assert (tmp_path / "out" / "e.png").read_bytes()[:4] == b"\x89PNG"
    assert "| hybrid-rrf+ce |" in (tmp_path / "out" / "e.md").read_text()
