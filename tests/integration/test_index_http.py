"""The indexer over real HTTP between processes: `dowse serve --role embedder --role indexer` in a subprocess,
HttpIndexerClient + REST routes, an ingest job, restart persistence and the --demo-corpus start-up."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexer.http_client import HttpIndexerClient

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data_dir: Path, model_cache: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "DOWSE_MODEL_CACHE": str(model_cache),
        "DOWSE_EXTRA_MODELS": "[]",
        "DOWSE_BATCHING": "false",
        "DOWSE_JOB_ROOTS": json.dumps([str(data_dir.parent)]),  # the tests' corpus files live beside data
    }
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "serve",
        "--role",
        "embedder",
        "--role",
        "indexer",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited: {proc.stderr.read().decode()[-3000:] if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("server not ready in 120 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def corpus(tmp_path: Path, shared_data: Path) -> Iterator[Path]:
    path = tmp_path / "corpus.jsonl"
    with open(shared_data / "scifact" / "corpus.jsonl") as src:
        path.write_text("".join(next(src) for _ in range(40)))
    yield path


async def _wait_job(c: httpx.AsyncClient, name: str, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        job = (await c.get(f"/v1/collections/{name}/jobs/{job_id}")).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError("job did not finish")


async def test_http_roundtrip_job_restart(
    tmp_path: Path, model_cache: Path, exported_minilm: Path, corpus: Path
) -> None:
    from embedder.http_client import HttpEmbedderClient

    data = tmp_path / "data"
    proc, url = _serve(data, model_cache)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            r = await c.post("/v1/collections", json={"name": "sci", "model": "minilm"})
            assert r.status_code == 201, r.text
            docs = [json.loads(line) for line in corpus.read_text().splitlines()]
            batch = [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs[:10]]
            r = await c.post("/v1/collections/sci/documents", json={"documents": batch})
            assert r.status_code == 200 and r.json()["upserted"] == 10, r.text
            r = await c.post("/v1/collections/sci/jobs", json={"path": str(corpus)})
            assert r.status_code == 202, r.text
            job = await _wait_job(c, "sci", r.json()["id"])
            assert job["status"] == "completed" and (job["done"], job["skipped"]) == (30, 10), job
        client = HttpIndexerClient(url, timeout_s=30)
        emb = HttpEmbedderClient(url, timeout_s=30)
        info = await client.collection_info("sci")
        assert info["stats"]["documents"] == 40 and info["revision"]
        target = docs[25]
        q = (await emb.embed([target["title"]], model="minilm", prompt_name="query")).vectors[0]
        assert target["_id"] in [h.id for h in await client.search_dense("sci", q, 3)]
        assert (await client.search_lexical("sci", target["title"], 1))[0].id == target["_id"]
        await client.aclose()
        await emb.aclose()
    finally:
        _stop(proc)
    proc, url = _serve(data, model_cache)  # restart: everything still there, counts agree
    try:
        st = httpx.get(f"{url}/v1/collections/sci", timeout=30).json()["stats"]
        assert st["documents"] == st["lexical_documents"] == 40 and st["chunks"] == st["dense_vectors"]
    finally:
        _stop(proc)


async def test_demo_corpus_comes_up_searchable(
    tmp_path: Path, model_cache: Path, exported_minilm: Path, corpus: Path
) -> None:
    proc, url = _serve(tmp_path / "data", model_cache, "--demo-corpus", str(corpus))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            for _ in range(600):
                r = await c.get("/v1/collections/demo/jobs")
                jobs = r.json().get("jobs", []) if r.status_code == 200 else []
                if jobs and jobs[0]["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.2)
            assert jobs and jobs[0]["status"] == "completed", jobs
            r = await c.post(
                "/v1/collections/demo/search/lexical", json={"query": "cerebral white matter", "k": 3}
            )
            assert r.status_code == 200 and r.json()["hits"], r.text
    finally:
        _stop(proc)


def test_cli_index_resumes(tmp_path: Path, model_cache: Path, exported_minilm: Path, corpus: Path) -> None:
    """`dowse index` twice: the second run skips every stored id; a bad record is reported, not fatal."""
    bad = tmp_path / "with_bad.jsonl"
    lines = corpus.read_text().splitlines()[:12]
    bad.write_text("\n".join([*lines, '{"_id": "x", "text": ""}', "not json"]) + "\n")
    env = {**os.environ, "DOWSE_MODEL_CACHE": str(model_cache), "COLUMNS": "200"}
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "index",
        str(bad),
        "-c",
        "sci",
        "--data-dir",
        str(tmp_path / "d"),
    ]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 1, first.stdout + first.stderr  # 2 bad records -> non-zero exit
    assert "12 documents (12 new)" in first.stdout, first.stdout
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert "12 documents (0 new)" in second.stdout, second.stdout
    row = next(line for line in second.stdout.splitlines() if line.count("│") >= 5)
    assert [c.strip() for c in row.split("│")[1:4]] == ["0", "12", "2"], row
