"""Ray batch index jobs (`dowse index --engine ray`): docs/s with 1 and 2 embedding actors on a 2-node
local Ray cluster (ray.cluster_utils.Cluster), next to the local in-process job on the same documents.

Each run starts from an empty collection; runs are interleaved across rounds. With ``--kill`` one actor of
every multi-actor run is SIGKILLed after a quarter of the documents; every run must still end with exactly
the expected documents, no duplicate, and SQLite / FAISS / BM25 counts that agree (else the bench fails).
On this 2-core machine the numbers say what the pipeline costs, not how it scales: report, don't promise.

    flock -x /work/locks/heavy.lock timeout 1200 .venv/bin/python bench/ray_index.py --docs 500 --kill
    .venv/bin/python bench/ray_index.py             # the full SciFact corpus (5,183 documents)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
MODELS = Path(os.environ.get("DOWSE_MODEL_CACHE", REPO / ".cache" / "models"))
RESULTS = REPO / "bench" / "results"
ACTOR_TITLE = b"MapWorker(MapBatches(EmbedActor))"


def actor_pids() -> list[int]:
    """PIDs of the embedding actors (Ray titles its worker processes after the actor)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if ACTOR_TITLE in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


async def open_service(data_dir: Path, precision: str) -> tuple[Any, Any]:
    """An IndexerService with an in-process embedder (the driver only needs it for collection metadata)."""
    from embedder.inprocess import InProcessEmbedderClient
    from embedder.service import EmbeddingService
    from indexer.service import IndexerService

    emb = EmbeddingService(MODELS, [], precision=precision, batching=False, auto_export=False)
    await emb.start()
    svc = IndexerService(data_dir, InProcessEmbedderClient(emb))
    await svc.open()
    await svc.create_collection("scifact", model="minilm")
    return svc, emb


def check(coll: Any, ids: list[str]) -> dict[str, Any]:
    """Exact count, no duplicate, and the three stores agree."""
    counts = coll.store.counts()
    with coll.store.reader() as conn:
        distinct = conn.execute("SELECT count(DISTINCT id) FROM docs").fetchone()[0]
    stored = {d["id"] for d in coll.store.get_docs(ids)}
    ok = (
        counts["documents"] == len(ids) == distinct == len(stored)
        and coll.dense.ntotal == counts["chunks"]
        and coll.lexical.count() == counts["documents"]
    )
    return {"ok": ok, **counts, "faiss": int(coll.dense.ntotal), "bm25": int(coll.lexical.count())}


async def run_local(corpus: Path, ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The default engine: the in-process job (`dowse index` without --engine)."""
    with tempfile.TemporaryDirectory() as tmp:
        svc, emb = await open_service(Path(tmp), args.precision)
        try:
            t0 = time.perf_counter()
            await svc.run_ingest("scifact", corpus, batch_size=args.batch_size)
            wall = time.perf_counter() - t0
            return {"wall_s": wall, "docs_per_s": len(ids) / wall, **check(svc._get("scifact"), ids)}
        finally:
            await svc.close()
            await emb.stop()


async def run_ray(corpus: Path, ids: list[str], workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One Ray job on a fresh 2-node cluster; optionally kills an actor after a quarter of the docs."""
    import ray
    from ray.cluster_utils import Cluster

    from indexer.ray_job import RayOptions, run_ray_ingest

    node = {"num_cpus": 2, "object_store_memory": 200 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    killed: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        svc, emb = await open_service(Path(tmp), args.precision)
        try:
            cluster.add_node(**node)
            ray.init(address=cluster.address, log_to_driver=False)
            coll = svc._get("scifact")

            def on_progress(p: Any) -> None:
                if args.kill and workers > 1 and not killed and p.done >= len(ids) // 4:
                    pids = actor_pids()
                    if pids:
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append(p.done)

            opts = RayOptions(workers=workers, precision=args.precision, model_cache=MODELS)
            t0 = time.perf_counter()
            prog = await asyncio.to_thread(
                run_ray_ingest, coll, corpus, None, options=opts, batch_size=args.batch_size,
                on_progress=on_progress,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            out = {"wall_s": wall, "docs_per_s": len(ids) / wall, "written": prog.done, **check(coll, ids)}
            out["killed_actor_at_doc"] = killed[0] if killed else None
            return out
        finally:
            ray.shutdown()
            cluster.shutdown()
            await svc.close()
            await emb.stop()


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["docs_per_s"] for r in runs]
    return {"docs_per_s_median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": runs}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    lines = DATA.read_text().splitlines()
    lines = lines[: args.docs] if args.docs else lines
    ids = [json.loads(line)["_id"] for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("\n".join(lines) + "\n")
        systems = ["local"] + [f"ray-{w}" for w in args.workers]
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for rnd in range(args.rounds):
            for s in systems if rnd % 2 == 0 else systems[::-1]:  # interleaved, alternating order
                res = await (
                    run_local(corpus, ids, args) if s == "local" else run_ray(corpus, ids, int(s[4:]), args)
                )
                print(f"round {rnd} {s}: {res['docs_per_s']:.2f} docs/s ok={res['ok']}", flush=True)
                if not res["ok"]:
                    raise SystemExit(f"{s}: counts do not match: {res}")
                results[s].append(res)
    out = {s: summary(r) for s, r in results.items()}
    base = out["local"]["docs_per_s_median"]
    for s in out:
        out[s]["vs_local"] = out[s]["docs_per_s_median"] / base
    return {
        "documents": len(ids),
        "precision": args.precision,
        "batch_size": args.batch_size,
        "cluster": "ray.cluster_utils.Cluster, 2 nodes x 2 logical CPUs, on one 2-core machine",
        "killed_one_actor": bool(args.kill),
        "systems": out,
    }


def render_md(res: dict[str, Any]) -> str:
    lines = [
        f"# Ray batch index jobs ({res['documents']} SciFact documents, {res['precision']}, "
        f"batches of {res['batch_size']})",
        "",
        f"{res['cluster']}. One actor of each multi-actor run killed mid-job: {res['killed_one_actor']}. "
        "Every run ended with exactly the expected documents, no duplicate, SQLite = FAISS = BM25 counts.",
        "",
        "| engine | docs/s median (min-max) | vs local |",
        "|---|---|---|",
    ]
    for name, s in res["systems"].items():
        lines.append(
            f"| {name} | {s['docs_per_s_median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) | {s['vs_local']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=0, help="first N documents (0 = all 5,183)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="int8")
    p.add_argument("--kill", action="store_true", help="SIGKILL one actor of each multi-actor run")
    p.add_argument("--name", default="ray_index")
    args = p.parse_args()
    res = asyncio.run(main_async(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    (RESULTS / f"{args.name}.md").write_text(render_md(res))
    print(render_md(res))


if __name__ == "__main__":
    main()
