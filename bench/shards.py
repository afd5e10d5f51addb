"""SciFact through 3 indexer shards vs 1 shard, over real HTTP (the local cluster of services/cluster.py).

One embedder, 3 indexer processes, and two gateways: one with collection-wide BM25 statistics (the
default) and one without (each shard's own idf), to show what the statistics round buys. The whole corpus
goes into ``sci3`` (3 shards) and ``sci1`` (1 shard) through the gateway; then every test query runs in
dense, BM25 and hybrid mode against both, interleaved per query (1-shard, 3-shard, 3-shard local-idf).

Reported: nDCG@10 (pytrec_eval) per mode and layout; for dense, the queries whose top-10 ids and scores
are identical (ties ordered by id); for BM25, the queries whose top-10 ids are identical; the largest
score difference; median latency per mode and layout; ingest docs/s per layout. Writes
bench/results/shards.{json,md}.

Run (heavy: embeds the corpus twice, ~12 min on 2 cores):
  flock -x /work/locks/heavy.lock timeout 1800 .venv/bin/python bench/shards.py --redis-url redis://127.0.0.1:6379/5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "scifact"
RESULTS = REPO / "bench" / "results"
MODES = ("dense", "bm25", "hybrid")


def load(limit: int | None) -> tuple[list[dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """Corpus (optionally the first ``limit`` docs), test queries with judgements, qrels."""
    from gateway.eval import load_beir

    ds = load_beir(DATA)
    corpus = []
    with open(DATA / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                corpus.append({"id": str(d["_id"]), "title": d.get("title") or "", "text": d["text"]})
    return (corpus[:limit] if limit else corpus), ds.queries, ds.qrels


def ingest(gw: str, name: str, shards: int, corpus: list[dict[str, str]], batch: int) -> float:
    """Create ``name`` and upsert the corpus through the gateway; returns docs/s."""
    r = httpx.post(f"{gw}/v1/collections", json={"name": name, "shards": shards}, timeout=120)
    r.raise_for_status()
    t0 = time.perf_counter()
    for i in range(0, len(corpus), batch):
        part = corpus[i : i + batch]
        r = httpx.post(f"{gw}/v1/collections/{name}/documents", json={"documents": part}, timeout=1200)
        r.raise_for_status()
        assert r.json()["acknowledged"] == [d["id"] for d in part]
    return len(corpus) / (time.perf_counter() - t0)


def search(gw: str, name: str, query: str, mode: str) -> tuple[list[tuple[str, float]], float]:
    """(id, score) of the top 10 and the wall time of the request."""
    body = {"collection": name, "query": query, "mode": mode, "top_k": 10, "candidates": 100}
    t0 = time.perf_counter()
    r = httpx.post(f"{gw}/v1/search", json=body, timeout=300)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    out = r.json()
    if out["partial"] or out["degraded"]:
        raise RuntimeError(f"unexpected partial/degraded answer: {out['failed_shards']} {out['degraded']}")
    return [(h["id"], float(h["score"])) for h in out["hits"]], dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="first N corpus docs only (quick tries)")
    ap.add_argument("--queries", type=int, default=None, help="first N test queries only")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--base-port", type=int, default=18520)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    ap.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    ap.add_argument("--out", type=Path, default=RESULTS / "shards.json")
    args = ap.parse_args()

    from gateway.eval import evaluate
    from services.cluster import LocalCluster, Proc
    from services.machine import describe

    corpus, queries, qrels = load(args.limit)
    if args.queries:
        queries = dict(list(queries.items())[: args.queries])
    root = Path(tempfile.mkdtemp(prefix="dowse-shards-"))
    lc = LocalCluster(
        root,
        shards=args.shards,
        embedders=1,
        gateways=1,
        base_port=args.base_port,
        redis_url=args.redis_url,
        model="minilm",
        model_cache=args.model_cache,
        env={
            "DOWSE_EXTRA_MODELS": "[]",
            "DOWSE_AUTH": "off",  # loopback bench: routing cost, not key checks
            "DOWSE_RETRIEVE_TIMEOUT_S": "60",
            "DOWSE_SEARCH_TIMEOUT_S": "150",
            "DOWSE_EMBED_TIMEOUT_S": "60",
        },
    )
    g0 = lc.gateways[0]
    local_idf = Proc(
        "gateway",
        "gateway-local-idf",
        args.base_port + len(lc.procs),
        list(g0.args),
        {**lc.env, "DOWSE_BM25_GLOBAL_STATS": "false"},
        root / "gateway-local-idf.log",
    )
    lc.gateways.append(local_idf)
    lc.start()
    try:
        gw, gw_local = g0.url, local_idf.url
        rate1 = ingest(gw, "sci1", 1, corpus, args.batch)
        rate3 = ingest(gw, "sci3", args.shards, corpus, args.batch)
        layouts = {
            "1 shard": (gw, "sci1"),
            f"{args.shards} shards": (gw, "sci3"),
            f"{args.shards} shards, local idf": (gw_local, "sci3"),
        }
        runs: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
        tops: dict[tuple[str, str], dict[str, list[tuple[str, float]]]] = {}
        lat: dict[tuple[str, str], list[float]] = {}
        for qid, text in queries.items():
            for mode in MODES:
                for lay, (url, coll) in layouts.items():
                    if mode == "dense" and "local idf" in lay:
                        continue  # idf plays no part in dense search
                    hits, dt = search(url, coll, text, mode)
                    tops.setdefault((mode, lay), {})[qid] = hits
                    # rank-based run scores: trec_eval orders by score; the lists are already ranked
                    runs.setdefault((mode, lay), {})[qid] = {
                        d: float(10 - r) for r, (d, _s) in enumerate(hits)
                    }
                    lat.setdefault((mode, lay), []).append(dt)
    finally:
        lc.stop()

    one = "1 shard"
    ndcg = {key: evaluate(qrels, run)["ndcg@10"] for key, run in runs.items()}
    rows = []
    for mode, lay in runs:
        ref, cur = tops[(mode, one)], tops[(mode, lay)]
        if mode == "dense":  # exact: same ids and scores (ties ordered by id)
            same = sum(
                sorted((-s, d) for d, s in cur[q]) == sorted((-s, d) for d, s in ref[q]) for q in queries
            )
        else:
            same = sum([d for d, _ in cur[q]] == [d for d, _ in ref[q]] for q in queries)
        diffs = [abs(s - dict(ref[q])[d]) for q in queries for d, s in cur[q] if d in dict(ref[q])]
        rows.append(
            {
                "mode": mode,
                "layout": lay,
                "ndcg@10": round(ndcg[(mode, lay)], 4),
                "ndcg@10 diff vs 1 shard": round(ndcg[(mode, lay)] - ndcg[(mode, one)], 4),
                "identical top-10": same,
                "queries": len(queries),
                "max |score diff| (shared hits)": max(diffs) if diffs else 0.0,
                "latency median ms": round(1000 * statistics.median(lat[(mode, lay)]), 1),
            }
        )
    result = {
        "bench": "shards",
        "machine": describe(),
        "corpus_docs": len(corpus),
        "queries": len(queries),
        "shards": args.shards,
        "ingest_docs_per_s": {"1 shard": round(rate1, 1), f"{args.shards} shards": round(rate3, 1)},
        "note": "one embedder for both layouts on the same 2 cores: ingest rates compare routing cost, not "
        "scale-out; latencies are one query at a time, interleaved per query",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    md = [
        "| mode | layout | nDCG@10 | diff vs 1 shard | identical top-10 | max score diff | median ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['mode']} | {r['layout']} | {r['ndcg@10']:.4f} | {r['ndcg@10 diff vs 1 shard']:+.4f} | "
            f"{r['identical top-10']}/{r['queries']} | {r['max |score diff| (shared hits)']:.3g} | "
            f"{r['latency median ms']} |"
        )
    md.append("")
    md.append(f"Ingest docs/s through the gateway: {result['ingest_docs_per_s']} ({result['note']}).")
    md.append(f"Machine: {result['machine']}; {len(corpus)} docs, {len(queries)} queries.")
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
