"""`dowse eval` end to end on a tiny BEIR slice of SciFact: real models, real indexer, real reranker; then
`dowse serve` on the evaluated data dir serves the rerank weight the eval chose (real HTTP)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
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


CONFIGS = ["bm25", "hybrid-rrf", "hybrid-convex", "hybrid-rrf+rerank", "hybrid-rrf+ce"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, model_cache: Path) -> Path:
    """Run `dowse eval` once on the slice; returns its root (dataset ``ds``, data dir ``d``, ``out``)."""
    tmp_path = tmp_path_factory.mktemp("eval")
    ds = tmp_path / "ds"
    make_slice(shared_data, ds)
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
    for c in CONFIGS:
        cmd += ["--config", c]
    env = {**os.environ, "DOWSE_MODEL_CACHE": str(model_cache)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path


@pytest.mark.timeout(600)
def test_dowse_eval_writes_table_json_png(evaluated: Path) -> None:
    tmp_path, configs = evaluated, CONFIGS
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
    # the weight to serve (chosen on all queries) lands in the evaluated collection's data dir
    coll = tmp_path / "d" / "collections" / "scifact-minilm"
    defaults = json.loads((coll / "search_defaults.json").read_text())
    entry = defaults["rerank_weight"]["hybrid-rrf"]
    cv = res["hybrid-rrf+rerank"]["cv"]
    assert entry["weight"] == cv["serve"] and entry["per_fold"] == cv["per_fold"]
    assert entry["config"] == "hybrid-rrf+rerank" and entry["queries"] == 6 and entry["rerank_top_n"] == 2
    assert set(defaults["rerank_weight"]) == {"hybrid-rrf"}  # only the stage that was evaluated with rerank


def _free_port() -> int:
    """A free port in this suite's range (18200-18299 on the shared box), else any free port."""
    for port in [*range(18200, 18300), 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise AssertionError("no free port")


@pytest.mark.timeout(600)
def test_served_weight_comes_from_the_eval_over_http(
    evaluated: Path, model_cache: Path, redis_url: str
) -> None:
    """`dowse serve` on the evaluated data dir: eval weight + source in explain and the defaults route."""
    data = evaluated / "d"
    path = data / "collections" / "scifact-minilm" / "search_defaults.json"
    chosen = json.loads(path.read_text())["rerank_weight"]["hybrid-rrf"]
    port = _free_port()
    env = {
        **os.environ,
        "DOWSE_MODEL_CACHE": str(model_cache),
        "DOWSE_REDIS_URL": redis_url,
        "DOWSE_RERANK_TIMEOUT_S": "120",  # a loaded 2-core box; this is not a speed test
        "DOWSE_SEARCH_TIMEOUT_S": "150",
        "DOWSE_EMBED_TIMEOUT_S": "30",
    }
    cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--data-dir", str(data)]
    log = (evaluated / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (evaluated / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (evaluated / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        query = json.loads((evaluated / "ds" / "queries.jsonl").read_text().splitlines()[0])["text"]

        def search(**extra: Any) -> dict[str, Any]:
            body = {"collection": "scifact-minilm", "query": query, "top_k": 5, "explain": True, **extra}
            r = httpx.post(f"{url}/v1/search", json=body, timeout=200)
            assert r.status_code == 200, r.text
            out: dict[str, Any] = r.json()
            assert out["degraded"] is False, out["degraded"]
            return out

        plain = search()
        served = search(rerank=True)
        rr = served["hits"][0]["explain"]["rerank"]
        assert rr["weight"] == chosen["weight"]
        assert rr["weight_source"] == f"eval:search_defaults.json@{chosen['created']}"
        if chosen["weight"] == 0.0:  # the one-SE rule on 6 queries usually keeps the fused order
            assert [h["id"] for h in served["hits"]] == [h["id"] for h in plain["hits"]]
        mine = search(rerank=True, rerank_weight=1.0)["hits"][0]["explain"]["rerank"]
        assert (mine["weight"], mine["weight_source"]) == (1.0, "request") and mine["score"] is not None
        table = httpx.get(f"{url}/v1/search/defaults/scifact-minilm", timeout=30).json()["rerank_weight"]
        assert table["hybrid-rrf"] == {"weight": chosen["weight"], "weight_source": rr["weight_source"]}
        assert table["bm25"]["weight_source"] == "default"  # bm25+rerank was not evaluated
        # a re-run of the eval (here: the file rewritten) is served without a restart, after the info TTL
        doc = json.loads(path.read_text())
        doc["rerank_weight"]["hybrid-rrf"].update(weight=0.5, created="2030-01-01T00:00:00Z")
        path.write_text(json.dumps(doc))
        time.sleep(6)  # the gateway caches collection info for 5 s
        rr = search(rerank=True)["hits"][0]["explain"]["rerank"]
        assert (rr["weight"], rr["weight_source"]) == (0.5, "eval:search_defaults.json@2030-01-01T00:00:00Z")
        assert rr["score"] is not None  # a nonzero weight calls the cross-encoder
        # a collection nobody evaluated is served the built-in weights
        r = httpx.post(f"{url}/v1/collections", json={"name": "fresh", "model": "minilm"}, timeout=60)
        assert r.status_code == 201, r.text
        fresh = httpx.get(f"{url}/v1/search/defaults/fresh", timeout=30).json()["rerank_weight"]
        assert {v["weight_source"] for v in fresh.values()} == {"default"}
        assert fresh["hybrid-rrf"]["weight"] == 0.0 and fresh["hybrid-convex"]["weight"] == 0.3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
