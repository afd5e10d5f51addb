"""Live search beside a running ingest job: `dowse serve` (real models, real HTTP), SciFact.

Per round and per server build (this tree, and optionally another checkout such as main, interleaved):

1. **ingest alone**: an ingest job (``POST /v1/collections/{c}/jobs``) of the SciFact corpus into a fresh
   collection, nothing else running: docs/s and the server's CPU seconds.
2. **searches idle**: ``--clients`` clients send hybrid searches (SciFact test queries, in a loop, no think
   time) against that collection for ``--idle-s`` seconds: latency p50/p99, server + client CPU per search.
3. **searches during ingest**: the same clients and searches while a second ingest job of the same corpus
   runs from start to end into another collection: latency over time, degraded answers, ingest docs/s.

The searches' CPU during phase 3 is estimated as (searches done) x (server + client CPU per search, from
phase 2), converted to docs/s at phase 1's docs per server CPU second, and subtracted from the ingest-alone
rate: the acceptance compares ingest-with-searches against 85% of that. Writes bench/results/mixed.json,
mixed.md and mixed.png. Run under the heavy lock::

    flock -x /work/locks/heavy.lock .venv/bin/python bench/mixed.py --docs 1000 --baseline /work/main
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
CACHE = REPO / ".cache" / "bench-mixed"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (ms values stay ms), 0 for no data."""
    return round(float(np.percentile(xs, q)), 2) if xs else 0.0


def test_queries() -> list[str]:
    """SciFact test queries (the ids in qrels/test.tsv), in file order."""
    ids = {ln.split("\t")[0] for ln in list((SCIFACT / "qrels" / "test.tsv").open())[1:]}
    out = []
    with (SCIFACT / "queries.jsonl").open() as fh:
        for line in fh:
            q = json.loads(line)
            if q["_id"] in ids:
                out.append(q["text"])
    return out


def corpus_file(docs: int | None) -> tuple[Path, int]:
    """The corpus (or its first ``docs`` lines) as a JSONL file the server may read; and its size."""
    src = SCIFACT / "corpus.jsonl"
    lines = [ln for ln in src.open() if ln.strip()]
    if docs is None or docs >= len(lines):
        return src.resolve(), len(lines)
    CACHE.mkdir(parents=True, exist_ok=True)
    dest = CACHE / f"corpus-{docs}.jsonl"
    dest.write_text("".join(lines[:docs]))
    return dest.resolve(), docs


class Server:
    """One `dowse serve` process (all roles) of a checkout, with a fresh data dir."""

    def __init__(self, repo: Path, port: int, cache: Path, redis_url: str) -> None:
        data = CACHE / f"data-{port}"
        shutil.rmtree(data, ignore_errors=True)
        env = dict(
            os.environ,
            PYTHONPATH=str(repo),
            DOWSE_MODEL_CACHE=str(cache),
            DOWSE_EXTRA_MODELS="[]",
            DOWSE_DATA_DIR=str(data),
            DOWSE_REDIS_URL=redis_url,
            DOWSE_LOG_LEVEL="WARNING",
            DOWSE_AUTO_EXPORT="false",
        )
        python = repo / ".venv" / "bin" / "python"
        cmd = [str(python if python.exists() else sys.executable), "-m", "services.cli", "serve"]
        cmd += ["--port", str(port)]
        self.log = (CACHE / f"server-{port}.log").open("w")
        self.proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}"
        self.data = data

    def wait_ready(self) -> None:
        """Poll /ready (models load in the background)."""
        for _ in range(1800):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.base}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def cpu(self) -> float:
        """The server's CPU seconds so far."""
        return cpu_s(self.proc.pid)

    def stop(self) -> None:
        """Terminate and remove the data dir."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)


async def ingest(client: httpx.AsyncClient, name: str, path: Path, t0: float) -> dict[str, Any]:
    """Create ``name`` and run one ingest job to its end; progress sampled every 0.25 s."""
    r = await client.post("/v1/collections", json={"name": name, "model": "minilm"})
    r.raise_for_status()
    start = time.perf_counter()
    r = await client.post(f"/v1/collections/{name}/jobs", json={"path": str(path)})
    r.raise_for_status()
    job_id = r.json()["id"]
    progress: list[tuple[float, int]] = []
    while True:
        await asyncio.sleep(0.25)
        job = (await client.get(f"/v1/collections/{name}/jobs/{job_id}")).json()
        progress.append((round(time.perf_counter() - t0, 3), int(job.get("done") or 0)))
        if job["status"] not in ("queued", "running"):
            break
    wall = time.perf_counter() - start
    if job["status"] != "completed":
        raise RuntimeError(f"ingest job ended {job['status']}: {job.get('errors')}")
    return {"docs": job["done"], "wall_s": wall, "docs_per_s": job["done"] / wall, "progress": progress}


async def searches(
    client: httpx.AsyncClient,
    collection: str,
    queries: list[str],
    clients: int,
    stop: asyncio.Event,
    t0: float,
) -> list[dict[str, Any]]:
    """``clients`` loops of hybrid searches until ``stop``; one record per search."""
    out: list[dict[str, Any]] = []

    async def worker(k: int) -> None:
        i = k
        while not stop.is_set():
            q = queries[i % len(queries)]
            i += clients
            t = time.perf_counter()
            r = await client.post(
                "/v1/search", json={"collection": collection, "query": q, "mode": "hybrid", "top_k": 10}
            )
            ms = (time.perf_counter() - t) * 1000.0
            body = r.json() if r.status_code == 200 else {}
            out.append(
                {
                    "t": round(t - t0, 4),
                    "ms": round(ms, 3),
                    "status": r.status_code,
                    "degraded": body.get("degraded") or False,
                    "embed_ms": (body.get("timings_ms") or {}).get("embed"),
                }
            )

    await asyncio.gather(*(worker(k) for k in range(clients)))
    return out


def summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency percentiles, errors and degraded answers of a list of search records."""
    ms = [r["ms"] for r in recs if r["status"] == 200]
    emb = [r["embed_ms"] for r in recs if r["embed_ms"] is not None]
    return {
        "searches": len(recs),
        "errors": sum(r["status"] != 200 for r in recs),
        "degraded": sum(bool(r["degraded"]) for r in recs),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": pct(ms, 100),
        "embed_p50_ms": pct(emb, 50),
        "embed_p99_ms": pct(emb, 99),
    }


def degraded_metric(text: str) -> dict[str, float]:
    """dowse_search_degraded_total samples by label set (absent on builds without the counter)."""
    out = {}
    for ln in text.splitlines():
        if ln.startswith("dowse_search_degraded_total{"):
            labels, value = ln.rsplit(" ", 1)
            out[labels[len("dowse_search_degraded_total") :]] = float(value)
    return out


async def one_round(
    server: Server, path: Path, queries: list[str], clients: int, idle_s: float, tag: str
) -> dict[str, Any]:
    """Phases 1-3 on one running server; returns their measurements."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        c0 = server.cpu()
        alone = await ingest(client, f"alone{tag}", path, t0)
        alone["server_cpu_s"] = server.cpu() - c0
        alone["docs_per_server_cpu_s"] = alone["docs"] / max(alone["server_cpu_s"], 1e-9)

        warm = asyncio.Event()
        warm_task = asyncio.ensure_future(searches(client, f"alone{tag}", queries, clients, warm, t0))
        await asyncio.sleep(3.0)
        warm.set()
        await warm_task

        stop = asyncio.Event()
        c0, p0, t_idle = server.cpu(), time.process_time(), time.perf_counter()
        task = asyncio.ensure_future(searches(client, f"alone{tag}", queries, clients, stop, t_idle))
        await asyncio.sleep(idle_s)
        stop.set()
        idle_recs = await task
        idle = summary(idle_recs)
        idle["wall_s"] = time.perf_counter() - t_idle
        idle["server_cpu_per_search_ms"] = 1000.0 * (server.cpu() - c0) / max(len(idle_recs), 1)
        idle["client_cpu_per_search_ms"] = 1000.0 * (time.process_time() - p0) / max(len(idle_recs), 1)
        idle["searches_per_s"] = len(idle_recs) / idle["wall_s"]

        before = degraded_metric((await client.get("/metrics")).text)
        stop = asyncio.Event()
        t_mix = time.perf_counter()
        c0 = server.cpu()
        task = asyncio.ensure_future(searches(client, f"alone{tag}", queries, clients, stop, t_mix))
        live = await ingest(client, f"live{tag}", path, t_mix)
        stop.set()
        mixed_recs = await task
        live["server_cpu_s"] = server.cpu() - c0
        after = degraded_metric((await client.get("/metrics")).text)
        during = summary(mixed_recs)
        during["wall_s"] = live["wall_s"]
        during["searches_per_s"] = len(mixed_recs) / live["wall_s"]
        during["degraded_metric"] = {
            k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k)
        }

    # the searches' CPU during the mixed phase, in ingest docs/s (at the ingest-alone CPU efficiency)
    per_search_s = (idle["server_cpu_per_search_ms"] + idle["client_cpu_per_search_ms"]) / 1000.0
    search_cpu_s = len(mixed_recs) * per_search_s
    search_docs_per_s = search_cpu_s / live["wall_s"] * alone["docs_per_server_cpu_s"]
    adjusted = max(alone["docs_per_s"] - search_docs_per_s, 0.0)
    return {
        "ingest_alone": alone,
        "searches_idle": idle,
        "searches_during_ingest": during,
        "ingest_with_searches": live,
        "search_cpu_s_during_ingest": round(search_cpu_s, 2),
        "ingest_alone_minus_search_cpu_docs_per_s": round(adjusted, 2),
        "ingest_ratio_vs_adjusted": round(live["docs_per_s"] / adjusted, 3) if adjusted else None,
        "p99_ratio_during_vs_idle": round(during["p99_ms"] / idle["p99_ms"], 2) if idle["p99_ms"] else None,
        "series": {"idle": idle_recs, "mixed": mixed_recs, "progress": live["progress"]},
    }


def spread(xs: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2)}


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and spread over rounds of the headline numbers."""
    pick = {
        "ingest_alone_docs_per_s": lambda r: r["ingest_alone"]["docs_per_s"],
        "ingest_with_searches_docs_per_s": lambda r: r["ingest_with_searches"]["docs_per_s"],
        "ingest_alone_minus_search_cpu_docs_per_s": lambda r: r["ingest_alone_minus_search_cpu_docs_per_s"],
        "idle_p50_ms": lambda r: r["searches_idle"]["p50_ms"],
        "idle_p99_ms": lambda r: r["searches_idle"]["p99_ms"],
        "during_p50_ms": lambda r: r["searches_during_ingest"]["p50_ms"],
        "during_p99_ms": lambda r: r["searches_during_ingest"]["p99_ms"],
        "during_embed_p99_ms": lambda r: r["searches_during_ingest"]["embed_p99_ms"],
        "idle_embed_p99_ms": lambda r: r["searches_idle"]["embed_p99_ms"],
        "degraded_during": lambda r: r["searches_during_ingest"]["degraded"],
        "searches_during": lambda r: r["searches_during_ingest"]["searches"],
        "server_cpu_per_search_ms": lambda r: r["searches_idle"]["server_cpu_per_search_ms"],
        "client_cpu_per_search_ms": lambda r: r["searches_idle"]["client_cpu_per_search_ms"],
    }
    return {k: spread([float(f(r)) for r in rounds]) for k, f in pick.items()}


FIELDS = ["t_s", "ms", "degraded", "embed_ms"]


def compact(series: dict[str, Any]) -> dict[str, Any]:
    """Search records as rows of FIELDS (a tenth of the JSON size of dicts)."""

    def rows(recs: list[dict[str, Any]]) -> list[list[Any]]:
        return [
            [
                round(r["t"], 3),
                round(r["ms"], 1),
                int(bool(r["degraded"])),
                None if r["embed_ms"] is None else round(r["embed_ms"], 1),
            ]
            for r in recs
        ]

    return {
        "fields": FIELDS,
        "idle": rows(series["idle"]),
        "mixed": rows(series["mixed"]),
        "progress": series["progress"],
    }


def plot(results: dict[str, Any], path: Path) -> None:
    """Search latency over time during the ingest (last round), with the ingest's progress."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    builds = [b for b in ("dowse", "baseline") if b in results]
    fig, axes = plt.subplots(len(builds), 1, figsize=(10, 4 * len(builds)), squeeze=False)
    for ax, build in zip(axes[:, 0], builds, strict=True):
        series = results[build]["series"]
        mixed = series["mixed"]  # rows of FIELDS
        ok = [r for r in mixed if not r[2]]
        bad = [r for r in mixed if r[2]]
        ax.scatter([r[0] for r in ok], [r[1] for r in ok], s=3, alpha=0.5, label="search latency")
        if bad:
            xs, ys = [r[0] for r in bad], [r[1] for r in bad]
            ax.scatter(xs, ys, s=12, c="red", marker="x", label="degraded")
        idle99 = results[build]["summary"]["idle_p99_ms"]["median"]
        ax.axhline(idle99, color="green", ls="--", lw=1, label=f"idle p99 {idle99:.0f} ms")
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the ingest job started")
        ax.set_ylabel("hybrid search latency (ms)")
        ax.set_title(f"{results[build]['label']}: {results[build]['clients']} search clients during ingest")
        ax2 = ax.twinx()
        prog = series["progress"]
        ax2.plot([p[0] for p in prog], [p[1] for p in prog], color="black", lw=1.5, label="docs ingested")
        ax2.set_ylabel("documents ingested")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(s: dict[str, float]) -> str:
    """median [min-max], or just the value for one round."""
    if s["min"] == s["max"]:
        return f"{s['median']:g}"
    return f"{s['median']:g} [{s['min']:g}-{s['max']:g}]"


def markdown(results: dict[str, Any], cmd: str, png: str) -> str:
    """The README table: one column per build."""
    builds = [b for b in ("dowse", "baseline") if b in results]
    rows = [
        ("search p50 idle (ms)", "idle_p50_ms"),
        ("search p99 idle (ms)", "idle_p99_ms"),
        ("search p50 during ingest (ms)", "during_p50_ms"),
        ("search p99 during ingest (ms)", "during_p99_ms"),
        ("query-embed p99 idle / during ingest (ms)", None),
        ("searches during ingest / degraded", None),
        ("ingest alone (docs/s)", "ingest_alone_docs_per_s"),
        ("ingest with searches (docs/s)", "ingest_with_searches_docs_per_s"),
        ("ingest alone minus the searches' CPU (docs/s)", "ingest_alone_minus_search_cpu_docs_per_s"),
        ("CPU per search, server + client (ms)", None),
    ]
    head = "| metric | " + " | ".join(results[b]["label"] for b in builds) + " |"
    out = [head, "|---|" + "---|" * len(builds)]
    for title, key in rows:
        cells = []
        for b in builds:
            s = results[b]["summary"]
            if key is not None:
                cells.append(fmt(s[key]))
            elif title.startswith("query-embed"):
                cells.append(f"{fmt(s['idle_embed_p99_ms'])} / {fmt(s['during_embed_p99_ms'])}")
            elif title.startswith("searches during"):
                cells.append(f"{fmt(s['searches_during'])} / {fmt(s['degraded_during'])}")
            else:
                cells.append(f"{fmt(s['server_cpu_per_search_ms'])} + {fmt(s['client_cpu_per_search_ms'])}")
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    d = results["dowse"]["summary"]
    idle99, during99 = d["idle_p99_ms"]["median"], d["during_p99_ms"]["median"]
    bound = results["micro_batch_bound_ms"]
    allowed = max(3 * idle99, idle99 + bound)
    adj = d["ingest_alone_minus_search_cpu_docs_per_s"]["median"]
    live = d["ingest_with_searches_docs_per_s"]["median"]
    out += [
        "",
        f"Acceptance ({results['dowse']['label']}, medians): search p99 during ingest {during99:g} ms vs "
        f"allowed max(3 x idle p99, idle p99 + {bound:g} ms micro-batch) = {allowed:g} ms "
        f"({'met' if during99 <= allowed else 'NOT met'}); degraded searches during ingest "
        f"{d['degraded_during']['max']:g} ({'met' if d['degraded_during']['max'] == 0 else 'NOT met'}); "
        f"ingest with searches {live:g} docs/s vs 85% of {adj:g} = {0.85 * adj:.2f} "
        f"({'met' if live >= 0.85 * adj else 'NOT met'}).",
    ]
    if "baseline" in results:
        a = d["ingest_alone_docs_per_s"]["median"]
        b = results["baseline"]["summary"]["ingest_alone_docs_per_s"]["median"]
        out[-1] += f" Ingest alone vs {results['baseline']['label']}: {a:g} vs {b:g} docs/s ({a / b:.2f}x)."
    out += [
        "",
        f"Command: `{cmd}`; {results['docs']} SciFact documents per ingest, {results['clients']} clients of "
        f"hybrid searches (top 10, no rerank) over the {results['queries']} test queries, idle phase "
        f"{results['idle_s']:g} s, {results['rounds']} round(s) interleaved between builds; machine: "
        f"{os.cpu_count()} CPUs shared with other work, {platform.platform()}. The searches' CPU during the "
        "ingest is estimated from the idle phase (server /proc CPU time + client process time per search) "
        "and converted to docs/s at the ingest-alone docs per server CPU second. Plot: "
        f"`bench/results/{png}`.",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    """Run the rounds and write JSON, markdown and the plot."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=None, help="first N corpus documents (default all 5,183)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--port", type=int, default=18150)
    ap.add_argument("--cache", type=Path, default=Path("/work/main/data/models"), help="exported models")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/1")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to compare (e.g. main)")
    ap.add_argument("--out", default="mixed", help="result file stem under bench/results/")
    args = ap.parse_args()

    from embedder.batching import MICRO_BATCH_TOKENS

    CACHE.mkdir(parents=True, exist_ok=True)
    path, ndocs = corpus_file(args.docs)
    queries = test_queries()
    builds = [("dowse", REPO, "this branch")]
    if args.baseline is not None:
        builds.append(("baseline", args.baseline.resolve(), f"baseline ({args.baseline.name})"))
    rounds: dict[str, list[dict[str, Any]]] = {b: [] for b, _, _ in builds}
    for r in range(args.rounds):
        for build, repo, label in builds if r % 2 == 0 else builds[::-1]:
            print(f"round {r + 1}: {label}", flush=True)
            server = Server(repo, args.port, args.cache, args.redis_url)
            try:
                server.wait_ready()
                res = asyncio.run(one_round(server, path, queries, args.clients, args.idle_s, f"r{r}"))
            finally:
                server.stop()
            rounds[build].append(res)
            s = {k: v for k, v in res.items() if k != "series"}
            print(json.dumps({k: v for k, v in s.items() if not isinstance(v, dict)}), flush=True)
            print(json.dumps(res["searches_idle"]), json.dumps(res["searches_during_ingest"]), flush=True)
    results: dict[str, Any] = {
        "docs": ndocs,
        "clients": args.clients,
        "queries": len(queries),
        "idle_s": args.idle_s,
        "rounds": args.rounds,
        "micro_batch_tokens": MICRO_BATCH_TOKENS,
        "micro_batch_bound_ms": 50.0,
    }
    for build, repo, label in builds:
        rs = rounds[build]
        last = rs[-1]
        for r in rs:
            r["ingest_alone"].pop("progress", None)
            r["ingest_with_searches"].pop("progress", None)
        results[build] = {
            "label": label,
            "repo": str(repo),
            "clients": args.clients,
            "summary": aggregate(rs),
            "rounds": [{k: v for k, v in r.items() if k != "series"} for r in rs],
            "series": compact(last["series"]),
        }
    cmd = "python bench/mixed.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results) + "\n")
    table = markdown(results, cmd, f"{args.out}.png")
    (RESULTS / f"{args.out}.md").write_text("# Live search during ingest\n\n" + table)
    plot(results, RESULTS / f"{args.out}.png")
    print((RESULTS / f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
