"""Does rerank as served ever hurt? Hybrid vs hybrid + ``rerank: true`` through ``/v1/search`` on SciFact.

Serves the SciFact corpus with ``dowse serve`` (all roles in one process: real ONNX models, FAISS,
tantivy) in a fresh data dir with no ``dowse eval`` result in it, so the gateway serves its built-in
rerank weights (``gateway/search_defaults.py``). Every test query (300, judged) is sent over real HTTP:

- ``hybrid``: ``{"mode": "hybrid"}`` (RRF k=60, top 10);
- ``served``: the same with ``"rerank": true`` and no weight: the served default; the response's explain
  says which weight and where it came from (``weight_source``);
- ``probe`` (unless ``--no-probe``): ``"rerank": true, "rerank_weight": 0.1`` (the old served default),
  top 20 = the whole reranked head, with explain: its fused and cross-encoder scores give the nDCG@10 of
  every weight on a 0..1 grid offline (the pipeline's own ``fusion.blend_rerank``; the offline order at
  0.1 is checked against the served one).

nDCG@10 (pytrec_eval) per slice: query ids sorted as strings, every third from offset 0, 1 and 2 (three
100-query slices), and all 300. Acceptance (issue 9): served >= hybrid - 0.005 on each slice and on all.
Timeouts are raised so that a loaded 2-core box does not degrade answers (this measures quality, not
latency); degraded answers are counted and reported.

Run (full corpus, ~6 min of embedding + ~1 s of cross-encoder per probed query on 2 cores):
  flock -x /work/locks/heavy.lock timeout 2400 .venv/bin/python bench/rerank_served.py
Debug: ``--docs 400 --queries 30 --tag debug`` (judged documents of those queries + filler).
Writes bench/results/rerank_served<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway import fusion  # noqa: E402
from gateway.eval import GRID, choose_value, evaluate  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "scifact"
RESULTS = REPO / "bench" / "results"
TOLERANCE = 0.005  # the acceptance margin
COLL = "scifact"


def load(
    n_queries: int | None, n_docs: int | None
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, Any]]:
    """(corpus as documents, judged test queries by id, qrels); optionally cut to a debug subset."""
    qrels: dict[str, dict[str, int]] = {}
    for line in (DATA / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) > 0:
            qrels.setdefault(q, {})[d] = int(s)
    queries = {}
    for x in (DATA / "queries.jsonl").read_text().splitlines():
        if x.strip():
            q = json.loads(x)
            if q["_id"] in qrels:
                queries[str(q["_id"])] = str(q["text"])
    ids = sorted(queries)[:n_queries] if n_queries else sorted(queries)
    queries = {q: queries[q] for q in ids}
    corpus = [json.loads(x) for x in (DATA / "corpus.jsonl").read_text().splitlines() if x.strip()]
    if n_docs:
        wanted = {d for q in ids for d in qrels[q]}
        filler = [d for d in corpus if d["_id"] not in wanted][: max(0, n_docs - len(wanted))]
        corpus = [d for d in corpus if d["_id"] in wanted] + filler
    docs = [{"id": str(d["_id"]), "title": d.get("title", ""), "text": d.get("text", "")} for d in corpus]
    return docs, queries, {q: qrels[q] for q in ids}


def start_server(data_dir: Path, port: int, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    """``dowse serve`` (all roles) with generous timeouts; returns once /ready answers 200."""
    env = {
        **os.environ,
        "DOWSE_MODEL_CACHE": os.environ.get("DOWSE_MODEL_CACHE", str(REPO / ".cache" / "models")),
        "DOWSE_REDIS_URL": redis_url,
        "DOWSE_EMBED_TIMEOUT_S": "60",
        "DOWSE_RERANK_TIMEOUT_S": "300",
        "DOWSE_SEARCH_TIMEOUT_S": "400",
        "DOWSE_RETRIEVE_TIMEOUT_S": "60",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DOWSE_RERANK_WEIGHT", None)  # the built-in defaults are what is measured
    cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    fh = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"server not ready in 300 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def ingest(client: httpx.Client, docs: list[dict[str, Any]], batch: int = 128) -> float:
    """Create the collection and upsert every document over HTTP, resuming a cut-off earlier run.

    Batches go in corpus order and each is one transaction, so ``n`` stored documents mean the first
    ``n`` are in; a collection with more documents than this run's corpus is rebuilt.
    """
    r = client.get(f"/v1/collections/{COLL}")
    have = r.json()["stats"]["documents"] if r.status_code == 200 else 0
    if r.status_code == 200 and have > len(docs):
        client.delete(f"/v1/collections/{COLL}").raise_for_status()
        have = 0
    if have == len(docs):
        return 0.0
    if have == 0:
        client.post(
            "/v1/collections", json={"name": COLL, "model": "minilm", "exist_ok": True}
        ).raise_for_status()
    t0 = time.perf_counter()
    for i in range(have // batch * batch, len(docs), batch):
        body = {"documents": docs[i : i + batch]}
        client.post(f"/v1/collections/{COLL}/documents", json=body).raise_for_status()
        if (i // batch) % 8 == 0:
            print(f"  ingested {i + batch}/{len(docs)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return time.perf_counter() - t0


def search(client: httpx.Client, query: str, **extra: Any) -> tuple[dict[str, Any], float]:
    """One ``/v1/search``; returns (body, seconds)."""
    t0 = time.perf_counter()
    r = client.post("/v1/search", json={"collection": COLL, "query": query, "top_k": 10, **extra})
    r.raise_for_status()
    return r.json(), time.perf_counter() - t0


def answer(client: httpx.Client, text: str, probe_weight: float, no_probe: bool) -> dict[str, Any]:
    """One query's (body, seconds) for hybrid, served rerank and (unless ``no_probe``) the probe."""
    rec: dict[str, Any] = {
        "hybrid": search(client, text, mode="hybrid"),
        "served": search(client, text, mode="hybrid", rerank=True, explain=True),
    }
    if not no_probe:
        extra = {"rerank_weight": probe_weight, "rerank_top_n": 20, "top_k": 20, "explain": True}
        rec["probe"] = search(client, text, mode="hybrid", rerank=True, **extra)
    for k in ("hybrid", "served"):  # keep the checkpoint small: ids and explain only
        for h in rec[k][0]["hits"]:
            h.pop("text", None)
            h.pop("title", None)
    for h in rec.get("probe", ({"hits": []}, 0))[0]["hits"]:
        h.pop("text", None)
        h.pop("title", None)
    return rec


def as_run(order: list[str]) -> dict[str, float]:
    """Rank order as strictly decreasing scores (pytrec_eval sorts by score)."""
    return {d: float(len(order) - i) for i, d in enumerate(order)}


def probe_order(hits: list[dict[str, Any]], weight: float) -> list[str]:
    """The head's order at ``weight``, from the probe's fused and cross-encoder scores (ties: fused rank)."""
    head = [
        h for h in hits if h["explain"]["rerank"] is not None and h["explain"]["rerank"]["score"] is not None
    ]
    head.sort(key=lambda h: h["explain"]["fused"]["rank"])
    mixed = fusion.blend_rerank(
        [h["explain"]["fused"]["score"] for h in head],
        [h["explain"]["rerank"]["score"] for h in head],
        weight,
    )
    order = sorted(range(len(head)), key=lambda i: (-mixed[i], i))
    return [head[i]["id"] for i in order]


def slices(qids: list[str]) -> dict[str, list[str]]:
    """The three slices of the issue (ids sorted as strings, every third from offset 0/1/2) and all."""
    ids = sorted(qids)
    return {"slice0": ids[0::3], "slice1": ids[1::3], "slice2": ids[2::3], "all": ids}


def mean_ndcg(per_query: dict[str, float], ids: list[str]) -> float:
    """Mean of per-query nDCG@10 over ``ids``."""
    return statistics.fmean(per_query[q] for q in ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18250)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/2")
    ap.add_argument("--data-dir", type=Path, default=None, help="default .cache/bench-rerank/<docs>")
    ap.add_argument("--docs", type=int, default=None, help="debug: judged docs + filler up to N")
    ap.add_argument("--queries", type=int, default=None, help="debug: first N judged query ids (sorted)")
    ap.add_argument("--probe-weight", type=float, default=0.1, help="explicit weight of the probe pass")
    ap.add_argument("--no-probe", action="store_true", help="skip the grid probe (no cross-encoder pass)")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="no server: report the checkpointed queries of a cut-off run",
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops us: still stop the server

    docs, queries, qrels = load(args.queries, args.docs)
    data_dir = args.data_dir or REPO / ".cache" / "bench-rerank" / str(args.docs or "full")
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in (data_dir / "collections").glob("*/search_defaults.json"):
        stale.unlink()  # this bench measures the built-in weights, never an eval's
    log = data_dir / "serve.log"
    t_all = time.perf_counter()
    proc = None if args.report_only else start_server(data_dir, args.port, args.redis_url, log)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=600)
        ingest_s = 0.0 if proc is None else ingest(client, docs)
        served_table = None if proc is None else client.get(f"/v1/search/defaults/{COLL}").json()
        runs: dict[str, dict[str, dict[str, float]]] = {"hybrid": {}, "served": {}, "probe": {}}
        lat: dict[str, list[float]] = {k: [] for k in runs}
        degraded = dict.fromkeys(runs, 0)
        sources: dict[str, int] = {}
        weights: set[float] = set()
        probes: dict[str, list[dict[str, Any]]] = {}
        mismatch = 0
        # every query's three answers are appended here, so that a run cut off by its time limit resumes
        progress = data_dir / f"progress-{len(docs)}-{args.probe_weight}-{int(args.no_probe)}.jsonl"
        done = {}
        if progress.exists():
            for line in progress.read_text().splitlines():
                rec = json.loads(line)
                done[rec["qid"]] = rec
        out = progress.open("a")
        t0 = time.perf_counter()
        for n, (qid, text) in enumerate(queries.items()):
            if qid in done:
                rec = done[qid]
            elif args.report_only:
                continue
            else:
                rec = {"qid": qid, **answer(client, text, args.probe_weight, args.no_probe)}
                out.write(json.dumps(rec) + "\n")
                out.flush()
            for k in runs:
                if k not in rec:
                    continue
                body, s = rec[k]
                degraded[k] += bool(body["degraded"])
                lat[k].append(s)
                runs[k][qid] = as_run([h["id"] for h in body["hits"][:10]])
            rr = rec["served"][0]["hits"][0]["explain"]["rerank"] if rec["served"][0]["hits"] else None
            if rr is not None:
                sources[rr["weight_source"]] = sources.get(rr["weight_source"], 0) + 1
                weights.add(rr["weight"])
            if "probe" in rec:
                hits = rec["probe"][0]["hits"]
                probes[qid] = hits
                mismatch += probe_order(hits, args.probe_weight)[:10] != [h["id"] for h in hits[:10]]
            if n % 25 == 0:
                print(f"  {n}/{len(queries)} queries ({time.perf_counter() - t0:.0f} s)", flush=True)
        out.close()
        search_s = time.perf_counter() - t0
    finally:
        if proc is not None:
            stop_server(proc)

    per_q = {k: evaluate(qrels, v, per_query=True)["ndcg@10"] for k, v in runs.items() if v}
    grid = {}
    if probes:
        grid = {
            w: evaluate(qrels, {q: as_run(probe_order(h, w)) for q, h in probes.items()}, per_query=True)[
                "ndcg@10"
            ]
            for w in GRID
        }
    answered = set(runs["hybrid"])
    cuts = {k: [q for q in v if q in answered] for k, v in slices(list(queries)).items()}
    table: dict[str, dict[str, Any]] = {}
    for name, ids in cuts.items():
        row: dict[str, Any] = {"queries": len(ids)}
        for k, pq in per_q.items():
            row[k] = round(mean_ndcg(pq, ids), 4)
        row["served_minus_hybrid"] = round(
            mean_ndcg(per_q["served"], ids) - mean_ndcg(per_q["hybrid"], ids), 4
        )
        row["pass"] = row["served_minus_hybrid"] >= -TOLERANCE
        if grid:
            row["grid"] = {str(w): round(mean_ndcg(pq, ids), 4) for w, pq in grid.items()}
            row["one_se_choice"] = choose_value(grid, ids, prefer=0.0)[0]
        table[name] = row
    result = {
        "meta": {
            "dataset": str(DATA),
            "documents": len(docs),
            "queries": len(answered),
            "complete": len(answered) == len(queries),
            "served_defaults": served_table,
            "served_weight_sources": sources,
            "served_weights": sorted(weights),
            "probe_weight": None if args.no_probe else args.probe_weight,
            "probe_offline_order_mismatches": mismatch,
            "resumed_queries": len(done),
            "degraded": degraded,
            "ingest_s": round(ingest_s, 1),
            "search_s": round(search_s, 1),
            "total_s": round(time.perf_counter() - t_all, 1),
            "median_latency_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in lat.items() if v},
            "tolerance": TOLERANCE,
            "command": " ".join(sys.argv),
        },
        "slices": table,
        "pass": all(r["pass"] for r in table.values()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"rerank_served{args.tag}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    if len(answered) == len(queries):
        progress.unlink()  # complete: a later run measures afresh
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    """The per-slice table (and the probe's weight grid) as markdown."""
    meta = result["meta"]
    probe = meta["probe_weight"] is not None
    head = "| slice | queries | hybrid | hybrid + rerank (served) | served - hybrid | pass |"
    if probe:
        head += f" rerank w={meta['probe_weight']} | one-SE weight on this slice |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in result["slices"].items():
        cells = [
            name,
            r["queries"],
            f"{r['hybrid']:.4f}",
            f"{r['served']:.4f}",
            f"{r['served_minus_hybrid']:+.4f}",
        ]
        cells.append("yes" if r["pass"] else "NO")
        if probe:
            cells += [f"{r['probe']:.4f}", r["one_se_choice"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    out = "\n".join(lines) + "\n"
    if not meta.get("complete", True):
        out = (
            f"**Partial: {meta['queries']} of the 300 test queries** (the run was cut off by its time limit; "
            "running the bench again resumes it from its checkpoint). Slices hold their answered queries.\n\n"
        ) + out
    if probe:
        ws = list(result["slices"]["all"]["grid"])
        out += "\nnDCG@10 by rerank weight (offline blend of the probe's served scores):\n\n"
        out += "| slice | " + " | ".join(ws) + " |\n|" + "---|" * (len(ws) + 1) + "\n"
        for name, r in result["slices"].items():
            out += f"| {name} | " + " | ".join(f"{r['grid'][w]:.4f}" for w in ws) + " |\n"
    out += (
        f"\nserved weights {meta['served_weights']} from {meta['served_weight_sources']}; "
        f"{meta['documents']} documents, {meta['queries']} queries; degraded {meta['degraded']}; "
        f"probe order mismatches {meta['probe_offline_order_mismatches']}; "
        f"median latency ms {meta['median_latency_ms']}\n"
    )
    return out


if __name__ == "__main__":
    main()
