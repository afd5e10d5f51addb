"""Client overhead bench: ``dowse_client`` vs raw httpx on the same searches, same server, same pool.

Two measurements, both with interleaved rounds (median + spread over rounds):

1. **End to end**: a real ``dowse serve`` (subprocess, loopback) with 200 SciFact abstracts; each round sends
   every query once through ``httpx.Client.post(...).json()`` and once through ``DowseClient.search`` (the
   order alternates per query, so drift hits both equally). The overhead is the round's median of the
   per-query paired differences (client - raw).
2. **Client code only**: the same calls against ``httpx.MockTransport`` answering a recorded real response
   (10 hits with abstracts): no server noise, just request building, retries bookkeeping and typed parsing.

Target: under 1 ms per search. Writes bench/results/client.{json,md}.
Run (heavy: it embeds 200 documents):
    flock -x /work/locks/heavy.lock timeout 1200 .venv/bin/python bench/client.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "client")]
DATA = REPO.parent / "shared" / "data" / "scifact"
RESULTS = REPO / "bench" / "results"
COLL = "bench-client"


def load(n_docs: int, n_queries: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The first SciFact abstracts and test queries."""
    lines = (DATA / "corpus.jsonl").read_text().splitlines()[:n_docs]
    docs = [json.loads(x) for x in lines]
    docs = [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs]
    queries = [json.loads(x)["text"] for x in (DATA / "queries.jsonl").read_text().splitlines() if x.strip()]
    return docs, queries[:n_queries]


def serve(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    """``dowse serve`` on loopback (its own process; killed by the caller)."""
    env = dict(os.environ, DOWSE_DATA_DIR=data_dir, DOWSE_PORT=str(port),
               DOWSE_MODEL_CACHE=os.environ.get("DOWSE_MODEL_CACHE", str(REPO / ".cache" / "models")),
               DOWSE_REDIS_URL=os.environ.get("DOWSE_REDIS_URL", "redis://127.0.0.1:6379/8"))  # fmt: skip
    cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("dowse serve did not become ready")


def rounds_paired(raw: Any, typed: Any, queries: list[str], rounds: int) -> dict[str, Any]:
    """Per round: median over queries of (typed - raw) latency, plus both medians; order alternates."""
    per_round = []
    for r in range(rounds):
        diffs, t_raw, t_typed = [], [], []
        for i, q in enumerate(queries):
            pair = [("raw", raw), ("typed", typed)]
            if (i + r) % 2:
                pair.reverse()
            got: dict[str, float] = {}
            for name, fn in pair:
                t0 = time.perf_counter()
                fn(q)
                got[name] = time.perf_counter() - t0
            diffs.append(got["typed"] - got["raw"])
            t_raw.append(got["raw"])
            t_typed.append(got["typed"])
        per_round.append(
            {
                "overhead_ms": 1e3 * statistics.median(diffs),
                "raw_ms": 1e3 * statistics.median(t_raw),
                "client_ms": 1e3 * statistics.median(t_typed),
            }  # fmt: skip
        )
    return summarise(per_round)


def summarise(per_round: list[dict[str, float]]) -> dict[str, Any]:
    """Median and [min, max] over rounds of each per-round number."""
    out: dict[str, Any] = {"rounds": per_round}
    for key in per_round[0]:
        vals = [r[key] for r in per_round]
        out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def end_to_end(url: str, queries: list[str], rounds: int, body_opts: dict[str, Any]) -> dict[str, Any]:
    """Raw httpx vs DowseClient against the live server (one connection pool each, same settings)."""
    from dowse_client import DowseClient

    raw_http = httpx.Client(base_url=url, timeout=30)
    client = DowseClient(url, timeout=30)

    def raw(q: str) -> Any:
        return raw_http.post("/v1/search", json={"collection": COLL, "query": q, **body_opts}).json()

    def typed(q: str) -> Any:
        return client.search(COLL, q, **body_opts)

    for q in queries[:10]:  # warm both pools and the server's caches
        raw(q), typed(q)
    try:
        return rounds_paired(raw, typed, queries, rounds)
    finally:
        raw_http.close()
        client.close()


def client_only(url: str, queries: list[str], rounds: int, body_opts: dict[str, Any]) -> dict[str, Any]:
    """The same comparison over a MockTransport replaying a recorded real answer: client code alone."""
    from dowse_client import DowseClient

    recorded = httpx.post(
        f"{url}/v1/search", json={"collection": COLL, "query": queries[0], **body_opts}
    ).content

    def handler(_req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=recorded, headers={"content-type": "application/json"})

    raw_http = httpx.Client(base_url=url, transport=httpx.MockTransport(handler))
    client = DowseClient(url, http_client=httpx.Client(transport=httpx.MockTransport(handler)))

    def raw(q: str) -> Any:
        return raw_http.post("/v1/search", json={"collection": COLL, "query": q, **body_opts}).json()

    def typed(q: str) -> Any:
        return client.search(COLL, q, **body_opts)

    res = rounds_paired(raw, typed, queries * 5, rounds)
    res["response_bytes"] = len(recorded)
    return res


def main() -> None:
    """Run both measurements and write bench/results/client.{json,md}."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--port", type=int, default=18890)
    args = ap.parse_args()
    from dowse_client import DowseClient
    from services.machine import describe

    docs, queries = load(args.docs, args.queries)
    opts = {"top_k": 10, "mode": "bm25"}  # the cheapest server path: the client's share is the largest
    with tempfile.TemporaryDirectory() as tmp:
        proc = serve(args.port, tmp)
        url = f"http://127.0.0.1:{args.port}"
        try:
            with DowseClient(url, timeout=600) as c:
                c.create_collection(COLL)
                for i in range(0, len(docs), 50):
                    c.upsert(COLL, docs[i : i + 50])
            e2e = end_to_end(url, queries, args.rounds, opts)
            only = client_only(url, queries, args.rounds, opts)
        finally:
            proc.terminate()
            proc.wait(30)
    res = {
        "bench": "client",
        "machine": describe(),
        "command": "flock -x /work/locks/heavy.lock timeout 1200 .venv/bin/python bench/client.py "
        f"--rounds {args.rounds} --queries {args.queries} --docs {args.docs}",
        "search": {"collection_docs": len(docs), **opts},
        "end_to_end": e2e,
        "client_code_only": only,
        "target_ms": 1.0,
        "meets_target": e2e["overhead_ms"]["median"] < 1.0 and only["overhead_ms"]["median"] < 1.0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "client.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "client.md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict[str, Any]) -> str:
    """The README table."""
    rows = []
    for name, key in (("end to end (dowse serve, loopback)", "end_to_end"),
                      ("client code only (MockTransport)", "client_code_only")):  # fmt: skip
        d = res[key]
        ov = d["overhead_ms"]
        rows.append(
            f"| {name} | {d['raw_ms']['median']:.3f} | {d['client_ms']['median']:.3f} | "
            f"{ov['median']:.3f} [{ov['min']:.3f}, {ov['max']:.3f}] |"
        )
    return (
        f"Machine: {res['machine']}. BM25 top-10 over "
        f"{res['search']['collection_docs']} SciFact abstracts; "
        f"{len(res['end_to_end']['rounds'])} interleaved rounds.\n\n"
        "| path | raw httpx ms (median) | dowse_client ms (median) "
        "| overhead ms, median [min, max] of rounds |\n"
        "|---|---|---|---|\n" + "\n".join(rows) + f"\n\nTarget < {res['target_ms']} ms: "
        f"{'met' if res['meets_target'] else 'NOT met'}.\n"
    )


if __name__ == "__main__":
    main()
