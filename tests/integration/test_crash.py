"""Crash safety (acceptance 1): a subprocess upserts in a loop and is SIGKILLed at random moments; after
each restart every acknowledged document is retrievable by id, BM25 and dense search, nothing is
half-written, and SQLite, FAISS and BM25 counts agree. Real minilm embedder (ONNX, fp32), real FAISS,
real tantivy, real SQLite."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
KILLS = 6
VOCAB = [
    *("protein", "cell", "gene", "virus", "cancer", "brain", "heart", "drug", "trial", "mouse", "blood"),
    *("liver", "lung", "bone", "muscle", "immune", "insulin", "kinase", "receptor", "therapy", "vaccine"),
]

CHILD = r"""
import asyncio, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from tests.integration.test_crash import make_doc
from embedder.service import EmbeddingService
from embedder.inprocess import InProcessEmbedderClient
from indexer.service import IndexerService

async def main(data_dir, model_cache, start):
    es = EmbeddingService(Path(model_cache), [], default_model="minilm", precision="fp32", batching=False)
    await es.start()
    # snapshot every ~5 batches so that kills also land inside snapshot writes
    svc = IndexerService(Path(data_dir), InProcessEmbedderClient(es), snapshot_every=40)
    await svc.open()
    await svc.create_collection("crash", model="minilm", exist_ok=True)
    print("READY", flush=True)
    i = start
    while True:
        batch = [make_doc(j) for j in range(i, i + 8)]
        await svc.upsert("crash", batch)
        print("ACK " + json.dumps([d["id"] for d in batch]), flush=True)
        i += 8

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def make_doc(j: int) -> dict[str, Any]:
    """Deterministic document ``doc<j>`` with a unique BM25 token ``uniq<j>x``."""
    rng = random.Random(j)
    words = " ".join(rng.choice(VOCAB) for _ in range(25))
    return {"id": f"doc{j}", "title": f"Report {j}", "text": f"uniq{j}x {words}.", "metadata": {"j": j}}


def _run_child(data_dir: Path, model_cache: Path, start: int, kill_after: float) -> tuple[list[str], str]:
    """Start the writer, SIGKILL it ``kill_after`` s after READY; return the acknowledged ids."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(model_cache), str(start), str(REPO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    acked: list[str] = []
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"child did not start: {line!r} {err[-2000:]}")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    reader.join(timeout=30)
    stderr = proc.stderr.read() if proc.stderr else ""
    for out in lines:
        # only a complete line is an acknowledgement (a line torn by the kill is not)
        if out.startswith("ACK ") and out.endswith("\n"):
            acked += json.loads(out[4:])
    return acked, stderr


async def _verify(data_dir: Path, embedder: Any, acked: list[str], dense_sample: int) -> dict[str, Any]:
    from indexer.service import IndexerService

    svc = IndexerService(data_dir, embedder)
    await svc.open()
    try:
        st = (await svc.collection_info("crash"))["stats"]
        assert st["documents"] == st["lexical_documents"], st
        assert st["chunks"] == st["dense_vectors"], st
        coll = svc._collections["crash"]
        # nothing half-written: every stored document is complete and has all its chunks
        with coll.store.reader() as conn:
            rows = conn.execute(
                "SELECT d.id, d.title, d.text, d.metadata, d.n_chunks, count(c.cid) FROM docs d "
                "LEFT JOIN chunks c ON c.dno = d.dno GROUP BY d.dno"
            ).fetchall()
        assert len(rows) == st["documents"]
        for doc_id, title, text, meta, n_chunks, have in rows:
            want = make_doc(int(doc_id[3:]))
            assert (title, text, json.loads(meta)) == (want["title"], want["text"], want["metadata"]), doc_id
            assert n_chunks == have >= 1, doc_id
        stored = {r[0] for r in rows}
        missing = set(acked) - stored
        assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
        # by id
        # (in pages: a fast machine acknowledges more ids than one request may name)
        step = svc.max_batch_docs
        got = [
            d
            for i in range(0, len(acked), step)
            for d in await svc.get_documents("crash", acked[i : i + step])
        ]
        assert [d["id"] for d in got] == acked
        # by BM25: the unique token finds the document first
        for doc_id in acked:
            hits = await svc.search_lexical("crash", f"uniq{doc_id[3:]}x", 1)
            assert hits and hits[0].id == doc_id, doc_id
        # by dense: each stored chunk vector finds its document (FAISS holds it) ...
        cids = [int(c) for c in coll.dense._ids]
        ids_by_cid = {c: r["id"] for c, r in coll.store.chunk_rows(cids).items()}
        got_cids, vecs = coll.store.embeddings(cids)
        assert sorted(ids_by_cid.values()) == sorted(stored)
        for cid, vec in zip(got_cids, vecs, strict=True):
            hit = (await svc.search_dense("crash", vec, 1))[0]
            assert hit.id == ids_by_cid[int(cid)] and hit.score > 0.999
        # ... and re-embedding a sample of acked documents' text finds them too (the stored vectors are right)
        sample = random.Random(len(acked)).sample(acked, min(dense_sample, len(acked)))
        docs = [make_doc(int(i[3:])) for i in sample]
        res = await embedder.embed(
            [f"{d['title']}\n{d['text']}" for d in docs], model="minilm", prompt_name="passage"
        )
        for d, vec in zip(docs, res.vectors, strict=True):
            hit = (await svc.search_dense("crash", np.asarray(vec), 1))[0]
            assert hit.id == d["id"] and hit.score > 0.99, (d["id"], hit)
        return st
    finally:
        await svc.close()


@pytest.mark.integration
@pytest.mark.timeout(420)
async def test_sigkill_loop_loses_nothing_acknowledged(
    tmp_path: Path, model_cache: Path, exported_minilm: Path
) -> None:
    from embedder.inprocess import InProcessEmbedderClient
    from embedder.service import EmbeddingService

    es = EmbeddingService(model_cache, [], default_model="minilm", precision="fp32", batching=False)
    await es.start()
    embedder = InProcessEmbedderClient(es)
    rng = random.Random(int(time.time()))
    acked: list[str] = []
    log: list[dict[str, Any]] = []
    for round_no in range(KILLS):
        kill_after = rng.uniform(0.2, 3.0)
        new, stderr = _run_child(tmp_path, model_cache, 10_000 * round_no, kill_after)
        acked += new
        st = await _verify(tmp_path, embedder, acked, dense_sample=10)
        log.append({"round": round_no, "kill_after_s": round(kill_after, 2), "acked": len(new), **st})
        assert "Traceback" not in stderr, stderr[-3000:]
    print(json.dumps(log, indent=1))
    assert len(acked) >= 8 * KILLS // 2, "the writer should acknowledge batches between kills"
    assert len(log) == KILLS
    await es.stop()
