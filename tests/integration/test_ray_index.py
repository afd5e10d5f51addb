"""``--engine ray`` on a real 2-node Ray cluster (ray.cluster_utils.Cluster): a SciFact subset through the
Ray Data pipeline with the real ONNX model, one embedding actor SIGKILLed mid-job. The collection ends with
exactly one copy of every valid document, its SQLite / FAISS / BM25 counts agree, the vectors equal the
local write path's, the job is listed like a local one, and a re-run skips everything."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from embedder.inprocess import InProcessEmbedderClient
from embedder.service import EmbeddingService
from indexer.ingest import Progress
from indexer.ray_job import RayOptions, run_ray_ingest
from indexer.service import IndexerService

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]
REPO = Path(__file__).resolve().parents[2]
PORT = 18650  # this suite's port range: 18600-18699
N_DOCS = 60  # SciFact abstracts, ~1.5 chunks each: big enough for several batches, small for 2 cores
BATCH = 8
ACTOR_TITLE = b"MapWorker(MapBatches(EmbedActor))"


def _actor_pids() -> list[int]:
    """PIDs of the embedding actors (Ray names its worker processes after the actor)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if ACTOR_TITLE in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _corpus(shared_data: Path, out: Path) -> list[str]:
    lines = (shared_data / "scifact" / "corpus.jsonl").read_text().splitlines()[:N_DOCS]
    bad = ['{"_id": "broken", "text": ', '{"_id": "no-text", "title": "t"}']
    out.write_text("\n".join(lines[:20] + bad + lines[20:]) + "\n")
    return [json.loads(line)["_id"] for line in lines]


async def test_ray_job_two_nodes_killed_actor_exact_count(
    tmp_path: Path, shared_data: Path, model_cache: Path, exported_minilm: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    ids = _corpus(shared_data, corpus)
    emb = EmbeddingService(model_cache, [], precision="fp32", batching=False, auto_export=False)
    await emb.start()
    svc = IndexerService(tmp_path / "data", InProcessEmbedderClient(emb))
    await svc.open()
    node_args = {"num_cpus": 2, "object_store_memory": 100 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    try:
        cluster.add_node(**node_args)
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        await svc.create_collection("c", model="minilm")
        coll = svc._get("c")
        killed: list[tuple[int, int]] = []

        def on_progress(p: Progress) -> None:
            if p.done and not killed:  # after the first committed batch: kill one embedding actor
                pids = _actor_pids()
                assert pids, "no embedding actor process found"
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], p.done))

        opts = RayOptions(workers=2, precision="fp32", model_cache=model_cache)
        prog = await asyncio.to_thread(
            run_ray_ingest, coll, corpus, None, options=opts, batch_size=BATCH, on_progress=on_progress
        )
        assert killed and killed[0][1] < N_DOCS, killed  # the kill happened mid-job
        assert prog.done == N_DOCS and prog.failed == 2 and prog.total == N_DOCS + 2
        assert any("no-text" in e for e in prog.errors) and any("JSON" in e for e in prog.errors)
        counts = coll.store.counts()
        assert counts["documents"] == N_DOCS
        assert {d["id"] for d in coll.store.get_docs(ids)} == set(ids)
        assert coll.dense.ntotal == counts["chunks"] and coll.lexical.count() == N_DOCS
        jobs = await svc.list_jobs("c")
        assert jobs[0]["status"] == "completed" and jobs[0]["done"] == N_DOCS and jobs[0]["failed"] == 2

        # the vectors are the local write path's (fp32: only padding differs between batchings)
        sample = ids[:6]
        await svc.create_collection("local", model="minilm")
        await svc.upsert(
            "local", [{k: v for k, v in d.items() if k != "chunks"} for d in coll.store.get_docs(sample)]
        )
        for name in ("c", "local"):
            with svc._get(name).store.reader() as conn:
                rows = conn.execute(
                    "SELECT d.id, c.chunk_no, c.emb FROM chunks c JOIN docs d ON d.dno = c.dno"
                    f" WHERE d.id IN ({','.join('?' * len(sample))}) ORDER BY d.id, c.chunk_no",
                    sample,
                ).fetchall()
            vecs = np.stack([np.frombuffer(r[2], np.float32) for r in rows])
            if name == "c":
                ray_keys, ray_vecs = [r[:2] for r in rows], vecs
        assert [r[:2] for r in rows] == ray_keys
        np.testing.assert_allclose(ray_vecs, vecs, atol=1e-4)

        # a re-run embeds nothing and writes nothing: every id is already stored
        again = await asyncio.to_thread(run_ray_ingest, coll, corpus, None, options=opts, batch_size=BATCH)
        assert again.done == 0 and again.skipped == N_DOCS and coll.store.counts()["documents"] == N_DOCS
    finally:
        ray.shutdown()
        cluster.shutdown()
        await svc.close()
        await emb.stop()


def test_cli_ray_engine_writes_through_the_http_api(
    tmp_path: Path, shared_data: Path, model_cache: Path, exported_minilm: Path
) -> None:
    """`dowse index --engine ray --indexer-url`: Ray writers upsert through a real indexer server; a re-run
    writes nothing (every id is stored), so the count stays exact."""
    corpus = tmp_path / "corpus.jsonl"
    ids = _corpus(shared_data, corpus)[:30]
    corpus.write_text("\n".join(corpus.read_text().splitlines()[:32]) + "\n")  # 30 docs + 2 bad records
    env = {**os.environ, "DOWSE_MODEL_CACHE": str(model_cache), "DOWSE_EXTRA_MODELS": "[]",
           "DOWSE_BATCHING": "false", "DOWSE_AUTO_EXPORT": "false"}  # fmt: skip
    url = f"http://127.0.0.1:{PORT}"
    server = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--role", "embedder", "--role", "indexer",
         "--port", str(PORT), "--data-dir", str(tmp_path / "server")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "indexer server did not come up"
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        cmd = [sys.executable, "-m", "services.cli", "index", str(corpus), "-c", "remote", "--engine", "ray",
               "--indexer-url", url, "--workers", "2", "--batch-size", "8"]  # fmt: skip
        for run in range(2):
            res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert res.returncode == 1, res.stderr[-2000:]  # two bad records: reported, exit 1
            want = "30 written, 0 skipped" if run == 0 else "0 written, 30 skipped"
            assert f"{want} (stored), 2 failed" in " ".join(res.stdout.split()), res.stdout[-2000:]
            info = httpx.get(f"{url}/v1/collections/remote", timeout=10).json()
            assert info["stats"]["documents"] == 30
        got = httpx.post(f"{url}/v1/collections/remote/documents/get", json={"ids": ids}, timeout=10).json()
        assert sorted(d["id"] for d in got["documents"]) == sorted(ids)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
