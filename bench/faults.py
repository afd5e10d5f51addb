"""Fault drill (issue 10, "Faults under load"): the 3-role deployment under a mixed load, each dependency
killed with SIGKILL in turn, left down, restarted; checks the issue's fault-acceptance list.

Deployment: a private ``redis-server`` and ``dowse serve --role embedder|indexer|gateway`` as separate
processes (as in tests/integration/test_multiprocess.py), SciFact documents in collection ``demo``.
Load: ``--clients`` async clients (default 8: the 2-core host also runs the three servers) sending a mix
of hybrid search (70 %), cache lookup (10 %), cache store (5 %), single-document upsert to the indexer
(10 %) and embeddings (5 %). Phases: warm-up, then for embedder, indexer and Redis: SIGKILL, ``--down-s``
seconds down, restart, wait for its ``/ready``, then until the system answers fully again.

Checks (each a boolean in the JSON, with the measured numbers beside it):

- no 500 at any point (and no transport error against the gateway);
- embedder down: hybrid searches answer 200 and say they are degraded;
- indexer down: searches answer 503/424 with a JSON error naming the indexer;
- Redis down: cache lookups miss within 50 ms (server-side histogram) and stores answer 503;
- after each restart: full answers within 10 s of the dependency's ``/ready``;
- every upsert acknowledged during the drill is found afterwards.

Run (heavy: under the lock): ``flock -x /work/locks/heavy.lock timeout 1200 .venv/bin/python bench/faults.py``
Writes bench/results/faults.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact"
RESULTS = REPO / "bench" / "results"
DOWSE = [sys.executable, "-m", "services.cli", "serve"]
MIX = (("search", 70), ("lookup", 10), ("store", 5), ("upsert", 10), ("embed", 5))


@dataclass
class Proc:
    """One child process (a Dowse role or redis-server) that the drill kills and restarts."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    ready_url: str | None
    p: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fh = self.log.open("ab")  # owned by the child for its lifetime
        self.p = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    async def wait_ready(self, timeout_s: float = 240.0) -> float:
        """Poll ``/ready`` (or a Redis PING) until it answers; returns the monotonic time it did."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.p is not None and self.p.poll() is None, self.log.read_text()[-2000:]
            if await self._ready():
                return time.monotonic()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout_s} s")

    async def _ready(self) -> bool:
        if self.ready_url is None:  # redis: a raw PING
            try:
                port = int(self.cmd[self.cmd.index("--port") + 1])
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
                writer.write(b"PING\r\n")
                ok = (await asyncio.wait_for(reader.read(16), 0.5)).startswith(b"+PONG")
                writer.close()
                return ok
            except (OSError, TimeoutError):
                return False
        try:
            async with httpx.AsyncClient(timeout=1.0) as c:
                return (await c.get(self.ready_url)).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Sample:
    """One request of the load."""

    t: float
    kind: str
    status: int  # 0 = transport error
    latency_s: float
    degraded: bool = False
    error_field: str | None = None
    hit: bool | None = None


@dataclass
class Drill:
    """Shared state of the load generator."""

    urls: dict[str, str]
    queries: list[str]
    samples: list[Sample] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    stop: bool = False
    seq: int = 0


async def one(d: Drill, c: httpx.AsyncClient, kind: str, rng: random.Random) -> None:
    q = rng.choice(d.queries)
    t0 = time.monotonic()
    body: dict[str, Any] = {}
    try:
        if kind == "search":
            r = await c.post(
                f"{d.urls['gateway']}/v1/search", json={"collection": "demo", "query": q, "top_k": 5}
            )
        elif kind == "lookup":
            r = await c.post(f"{d.urls['gateway']}/v1/cache/lookup", json={"namespace": "drill", "prompt": q})
        elif kind == "store":
            r = await c.post(
                f"{d.urls['gateway']}/v1/cache/store",
                json={"namespace": "drill", "prompt": q, "response": q[::-1]},
            )
        elif kind == "upsert":
            d.seq += 1
            doc_id = f"drill-{d.seq}"
            doc = {"id": doc_id, "title": "drill", "text": f"{q} drill document {d.seq}"}
            r = await c.post(f"{d.urls['indexer']}/v1/collections/demo/documents", json={"documents": [doc]})
            if r.status_code == 200:
                d.acked.append(doc_id)
        else:
            r = await c.post(f"{d.urls['embedder']}/v1/embeddings", json={"input": [q], "model": "minilm"})
    except httpx.HTTPError:
        d.samples.append(Sample(t0, kind, 0, time.monotonic() - t0))
        return
    dt = time.monotonic() - t0
    try:
        body = r.json()
    except ValueError:
        body = {}
    err = body.get("error") if isinstance(body, dict) else None
    d.samples.append(
        Sample(
            t0,
            kind,
            r.status_code,
            dt,
            degraded=bool(body.get("degraded")) if isinstance(body, dict) else False,
            error_field=err.get("field") if isinstance(err, dict) else None,
            hit=body.get("hit") if kind == "lookup" and isinstance(body, dict) else None,
        )
    )


async def client_loop(d: Drill, seed: int) -> None:
    rng = random.Random(seed)
    kinds = [k for k, w in MIX for _ in range(w)]
    async with httpx.AsyncClient(timeout=30.0) as c:
        while not d.stop:
            await one(d, c, rng.choice(kinds), rng)


async def lookup_bucket(gw: str, le: str = "0.05") -> tuple[float, float]:
    """(count in the <= ``le`` bucket, total count) of the gateway's cache lookup histogram."""
    async with httpx.AsyncClient(timeout=5.0) as c:
        text = (await c.get(f"{gw}/metrics")).text
    bucket = total = 0.0
    for line in text.splitlines():
        if line.startswith(f'dowse_cache_lookup_seconds_bucket{{le="{le}"}}'):
            bucket = float(line.split()[-1])
        elif line.startswith("dowse_cache_lookup_seconds_count"):
            total = float(line.split()[-1])
    return bucket, total


async def full_answers(d: Drill, dep: str) -> bool:
    """True when the part of the system that ``dep`` serves answers fully (probe requests, not the load)."""
    gw = d.urls["gateway"]
    try:
        async with httpx.AsyncClient(timeout=5.0) as c:
            if dep == "redis":
                r = await c.post(
                    f"{gw}/v1/cache/lookup", json={"namespace": "drill-probe", "prompt": "probe"}
                )
                return r.status_code == 200 and not r.json().get("degraded")
            r = await c.post(
                f"{gw}/v1/search", json={"collection": "demo", "query": d.queries[0], "top_k": 3}
            )
            return r.status_code == 200 and not r.json().get("degraded") and bool(r.json().get("hits"))
    except (httpx.HTTPError, ValueError):
        return False


def window(samples: list[Sample], kind: str, t0: float, t1: float) -> list[Sample]:
    return [s for s in samples if s.kind == kind and t0 <= s.t < t1]


def summarise(d: Drill, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The acceptance checks over the recorded samples and phases."""
    by_status: dict[str, int] = {}
    for s in d.samples:
        by_status[str(s.status)] = by_status.get(str(s.status), 0) + 1
    checks: dict[str, Any] = {"no_500": by_status.get("500", 0) == 0}
    transport: dict[str, int] = {}
    for smp in d.samples:
        if smp.status == 0:  # direct calls to a killed role (upserts, embeddings) fail to connect: expected
            transport[smp.kind] = transport.get(smp.kind, 0) + 1
    gw_transport = [x for x in d.samples if x.status == 0 and x.kind in ("search", "lookup", "store")]
    checks["no_gateway_transport_errors"] = not gw_transport
    for ph in phases:
        dep, t0, t1 = ph["dependency"], ph["killed_at"], ph["restarted_at"]
        grace = 1.0  # requests already in flight when the process died
        ph["down_window"] = {kind: _stats(window(d.samples, kind, t0 + grace, t1)) for kind, _ in MIX}
        if dep == "embedder":
            srch = window(d.samples, "search", t0 + grace, t1)
            ok = [x for x in srch if x.status == 200 and x.degraded]
            ph["searches_during"] = len(srch)
            ph["searches_200_degraded"] = len(ok)
            checks["embedder_down_search_bm25_degraded"] = bool(srch) and len(ok) == len(srch)
        elif dep == "indexer":
            srch = window(d.samples, "search", t0 + grace, t1)
            ok = [x for x in srch if x.status in (503, 424) and x.error_field == "indexer"]
            ph["searches_during"] = len(srch)
            ph["searches_503_424_naming_indexer"] = len(ok)
            checks["indexer_down_search_503_424"] = bool(srch) and len(ok) == len(srch)
        elif dep == "redis":
            lk = window(d.samples, "lookup", t0 + grace, t1)
            st = window(d.samples, "store", t0 + grace, t1)
            ph["lookups_during"] = len(lk)
            ph["lookups_miss"] = sum(1 for x in lk if x.status == 200 and x.hit is False)
            ph["lookup_client_p50_ms"] = (
                round(1000 * statistics.median([x.latency_s for x in lk]), 1) if lk else None
            )
            ph["stores_during"] = len(st)
            ph["stores_503"] = sum(1 for x in st if x.status == 503)
            checks["redis_down_lookups_miss"] = bool(lk) and ph["lookups_miss"] == len(lk)
            checks["redis_down_lookups_within_50ms_server"] = (
                ph["server_lookups_le_50ms"] == ph["server_lookups"]
            )
            checks["redis_down_stores_503"] = bool(st) and ph["stores_503"] == len(st)
        checks[f"{dep}_recovered_within_10s_of_ready"] = (
            ph["recovery_s"] is not None and ph["recovery_s"] <= 10.0
        )
    return {"status_counts": by_status, "transport_errors_by_kind": transport, "checks": checks}


def _stats(samples: list[Sample]) -> dict[str, Any]:
    """Count, statuses and latency percentiles of a window's requests of one kind."""
    if not samples:
        return {"n": 0}
    lat = sorted(s.latency_s for s in samples)
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return {
        "n": len(samples),
        "status": statuses,
        "p50_ms": round(1000 * lat[len(lat) // 2], 1),
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
    }


async def drill(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="dowse-faults-"))
    ports = {"redis": args.base_port, "embedder": args.base_port + 1, "indexer": args.base_port + 2}
    ports["gateway"] = args.base_port + 3
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items() if k != "redis"}
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DOWSE_MODEL_CACHE": args.model_cache,
        "DOWSE_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "DOWSE_EXTRA_MODELS": "[]",
        "DOWSE_AUTO_EXPORT": "false",
        "DOWSE_EMBED_TIMEOUT_S": "2.0",
    }
    redis_cmd = ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--dir", str(root)]
    redis_cmd += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
    procs = {
        "redis": Proc("redis", redis_cmd, env, root / "redis.log", None),
        "embedder": Proc(
            "embedder",
            [*DOWSE, "--role", "embedder", "--port", str(ports["embedder"]), "--data-dir", str(root / "emb")],
            env,
            root / "embedder.log",
            f"{urls['embedder']}/ready",
        ),
        "indexer": Proc(
            "indexer",
            [*DOWSE, "--role", "indexer", "--port", str(ports["indexer"]), "--data-dir", str(root / "idx")]
            + ["--embedder-url", urls["embedder"]],
            env,
            root / "indexer.log",
            f"{urls['indexer']}/ready",
        ),
        "gateway": Proc(
            "gateway",
            [*DOWSE, "--role", "gateway", "--port", str(ports["gateway"]), "--data-dir", str(root / "gw")]
            + ["--embedder-url", urls["embedder"], "--indexer-url", urls["indexer"]],
            env,
            root / "gateway.log",
            f"{urls['gateway']}/ready",
        ),
    }
    corpus = [json.loads(x) for x in (DATA / "corpus.jsonl").read_text().splitlines()[: args.docs]]
    queries = [
        json.loads(x)["text"] for x in (DATA / "queries.jsonl").read_text().splitlines()[:200] if x.strip()
    ]
    d = Drill(urls, queries)
    phases: list[dict[str, Any]] = []
    try:
        for p in procs.values():
            p.start()
        for p in procs.values():
            await p.wait_ready()
        async with httpx.AsyncClient(timeout=300) as c:
            r = await c.post(f"{urls['indexer']}/v1/collections", json={"name": "demo", "model": "minilm"})
            assert r.status_code == 201, r.text
            docs = [{"id": x["_id"], "title": x["title"], "text": x["text"]} for x in corpus]
            for i in range(0, len(docs), 100):
                r = await c.post(
                    f"{urls['indexer']}/v1/collections/demo/documents", json={"documents": docs[i : i + 100]}
                )
                assert r.status_code == 200, r.text
        t_start = time.monotonic()
        loops = [asyncio.create_task(client_loop(d, seed)) for seed in range(args.clients)]
        await asyncio.sleep(args.warm_s)
        for dep in ("embedder", "indexer", "redis"):
            bucket0, total0 = await lookup_bucket(urls["gateway"])
            killed = time.monotonic()
            procs[dep].kill()
            await asyncio.sleep(args.down_s)
            bucket1, total1 = await lookup_bucket(urls["gateway"])
            restarted = time.monotonic()
            procs[dep].start()
            ready = await procs[dep].wait_ready()
            full = None
            while time.monotonic() - ready < 60:
                if await full_answers(d, dep):
                    full = time.monotonic()
                    break
                await asyncio.sleep(0.1)
            phases.append(
                {
                    "dependency": dep,
                    "killed_at": killed,
                    "restarted_at": restarted,
                    "ready_after_restart_s": round(ready - restarted, 2),
                    "recovery_s": round(full - ready, 2) if full is not None else None,
                    "server_lookups": total1 - total0,
                    "server_lookups_le_50ms": bucket1 - bucket0,
                }
            )
            await asyncio.sleep(args.settle_s)
        d.stop = True
        await asyncio.gather(*loops)
        duration = time.monotonic() - t_start
        async with httpx.AsyncClient(timeout=60) as c:
            found: set[str] = set()
            for i in range(0, len(d.acked), 500):
                r = await c.post(
                    f"{urls['indexer']}/v1/collections/demo/documents/get", json={"ids": d.acked[i : i + 500]}
                )
                found |= {doc["id"] for doc in r.json()["documents"]}
    finally:
        d.stop = True
        for p in reversed(list(procs.values())):
            p.stop()
    out = summarise(d, phases)
    out["checks"]["acknowledged_upserts_found"] = bool(d.acked) and len(found) == len(d.acked)
    for ph in phases:  # relative times for the report
        ph["killed_at"] = round(ph["killed_at"] - t_start, 2)
        ph["restarted_at"] = round(ph["restarted_at"] - t_start, 2)
    out.update(
        phases=phases,
        requests=len(d.samples),
        duration_s=round(duration, 1),
        acknowledged_upserts=len(d.acked),
        found_upserts=len(found),
        config=vars(args),
        passed=all(bool(v) for v in out["checks"].values()),
    )
    return out


def write(out: dict[str, Any], name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Fault drill (bench/faults.py)",
        "",
        f"{out['requests']} requests in {out['duration_s']} s; status counts {out['status_counts']}",
        "",
        "| check | result |",
        "|---|---|",
    ]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in out["checks"].items()]
    lines += [
        "",
        f"Transport errors (direct calls to a killed role): {out['transport_errors_by_kind']}; upserts "
        f"acknowledged {out['acknowledged_upserts']}, found afterwards {out['found_upserts']}.",
    ]
    lines += [
        "",
        "| dependency | ready after restart s | full answers after ready s | details |",
        "|---|---|---|---|",
    ]
    for ph in out["phases"]:
        skip = ("dependency", "ready_after_restart_s", "recovery_s", "down_window")
        extra = {k: v for k, v in ph.items() if k not in skip}
        lines.append(f"| {ph['dependency']} | {ph['ready_after_restart_s']} | {ph['recovery_s']} | {extra} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--warm-s", type=float, default=10.0)
    ap.add_argument("--down-s", type=float, default=20.0)
    ap.add_argument("--settle-s", type=float, default=5.0)
    ap.add_argument("--base-port", type=int, default=18440)
    ap.add_argument("--model-cache", default=str(REPO / ".cache" / "models"))
    ap.add_argument("--out", default="faults", help="results file name under bench/results/")
    args = ap.parse_args()
    out = asyncio.run(drill(args))
    write(out, args.out)
    print(
        json.dumps(
            {"checks": out["checks"], "phases": out["phases"], "status_counts": out["status_counts"]},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
