"""Sharded collections over real HTTP: the local cluster (1 embedder, 3 indexer shards, 2 gateways).

300 SciFact documents go into a 3-shard and a 1-shard collection through the gateways; flat dense must
return the same ids and scores, BM25 and hybrid nDCG@10 must agree within 0.005. Then one shard is killed
with SIGKILL under a running search + ingest load: searches keep answering 200 naming only that shard,
its writes are not acknowledged, and after a restart every acknowledged id is found and every shard's
SQLite, FAISS and BM25 counts agree. Real models (MiniLM int8), real FAISS / tantivy, real processes.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.eval import evaluate
from indexer.sharding import shard_of
from services.cluster import LocalCluster

pytestmark = [pytest.mark.integration]

N_DOCS = 300
# A loaded 2-core box can stall a healthy process for seconds; the shard timeout (0.9 x retrieve) must
# be far above that so that only the killed shard (connection refused, at once) is ever reported.
RETRIEVE_TIMEOUT_S = 60.0
SEARCH_TIMEOUT_S = 150.0
HTTP_TIMEOUT_S = SEARCH_TIMEOUT_S + 30
# auth on, as in production: the gateways reach the shards with the service token
ADMIN_KEY = "adm-" + "s" * 40
SERVICE_TOKEN = "svc-" + "s" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


def free_block(n: int) -> int:
    """A base port with ``n`` free ports after it."""
    for _ in range(200):
        base = random.randint(20_000, 60_000)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block")


def scifact_subset(
    shared: Path,
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, dict[str, int]], list]:
    """Judged documents of the first 30 test queries + corpus-order filler; the queries; qrels; spare docs."""
    sci = shared / "scifact"
    qrels: dict[str, dict[str, int]] = {}
    for line in (sci / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, rel = line.split("\t")
        qrels.setdefault(q, {})[d] = int(rel)
    queries = [json.loads(x) for x in (sci / "queries.jsonl").read_text().splitlines() if x.strip()]
    queries = [q for q in queries if q["_id"] in qrels][:30]
    wanted = {d for q in queries for d in qrels[q["_id"]]}
    corpus = [json.loads(x) for x in (sci / "corpus.jsonl").read_text().splitlines() if x.strip()]
    filler = [d for d in corpus if d["_id"] not in wanted]
    chosen = [d for d in corpus if d["_id"] in wanted] + filler[: N_DOCS - len(wanted)]
    spare = filler[N_DOCS - len(wanted) : N_DOCS - len(wanted) + 200]

    def doc(d: dict[str, Any]) -> dict[str, Any]:
        return {"id": d["_id"], "title": d["title"], "text": d["text"]}

    qs = {q["_id"]: q["text"] for q in queries}
    return [doc(d) for d in chosen], qs, {q: qrels[q] for q in qs}, [doc(d) for d in spare]


def search(gw: str, coll: str, query: str, mode: str, top_k: int = 10) -> dict[str, Any]:
    body = {"collection": coll, "query": query, "mode": mode, "top_k": top_k, "candidates": 100}
    r = httpx.post(f"{gw}/v1/search", json=body, timeout=HTTP_TIMEOUT_S, headers=ADMIN)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, shared_data: Path, redis_url: str
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("shards")
    lc = LocalCluster(
        root,
        shards=3,
        embedders=1,
        gateways=2,
        base_port=free_block(6),
        redis_url=redis_url,
        model="minilm",
        model_cache=model_cache,
        env={
            "DOWSE_EXTRA_MODELS": "[]",  # no cross-encoder: nothing here reranks
            "DOWSE_AUTH": "required",
            "DOWSE_ADMIN_KEY": ADMIN_KEY,
            "DOWSE_SERVICE_TOKEN": SERVICE_TOKEN,
            "DOWSE_RETRIEVE_TIMEOUT_S": str(RETRIEVE_TIMEOUT_S),
            "DOWSE_SEARCH_TIMEOUT_S": str(SEARCH_TIMEOUT_S),
            "DOWSE_EMBED_TIMEOUT_S": "60",  # a loaded box must not turn the comparison BM25-only
        },
    )
    lc.start()
    try:
        docs, queries, qrels, spare = scifact_subset(shared_data)
        gws = [g.url for g in lc.gateways]
        for i, (name, shards) in enumerate((("sci3", 3), ("sci1", 1))):
            r = httpx.post(
                f"{gws[i]}/v1/collections", json={"name": name, "shards": shards}, timeout=120, headers=ADMIN
            )
            assert r.status_code == 201, r.text
            for j in range(0, len(docs), 100):
                part = docs[j : j + 100]
                r = httpx.post(
                    f"{gws[(i + j) % 2]}/v1/collections/{name}/documents",
                    json={"documents": part},
                    timeout=600,
                    headers=ADMIN,
                )
                assert r.status_code == 200, r.text
                assert r.json()["acknowledged"] == [d["id"] for d in part]
        yield {"lc": lc, "gws": gws, "queries": queries, "qrels": qrels, "spare": spare, "docs": docs}
    finally:
        lc.stop()


@pytest.mark.timeout(900)
def test_three_shards_answer_like_one(cluster: dict[str, Any]) -> None:
    gws, queries, qrels = cluster["gws"], cluster["queries"], cluster["qrels"]
    for shard in cluster["lc"].shards:  # the hash placed every document on its own shard only
        st = httpx.get(f"{shard.url}/v1/collections/sci3", timeout=60, headers=SERVICE).json()
        assert 60 < st["stats"]["documents"] < 140, st["stats"]  # ~100 each; a 3-way split of 300
    runs: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    for qi, (qid, text) in enumerate(queries.items()):
        gw = gws[qi % 2]
        a = search(gw, "sci3", text, "dense")
        b = search(gw, "sci1", text, "dense")
        assert not a["partial"] and not a["degraded"] and not b["degraded"]
        # flat dense is exact: same ids, same scores (ties, if any, are ordered by id after a merge)
        got = sorted((-h["score"], h["id"]) for h in a["hits"])
        want = sorted((-h["score"], h["id"]) for h in b["hits"])
        assert got == want, (qid, got, want)
        for mode in ("bm25", "hybrid"):
            for coll, n in (("sci3", 3), ("sci1", 1)):
                body = search(gw, coll, text, mode)
                assert not body["partial"] and not body["degraded"]
                # rank-based run scores: trec_eval orders by score, our lists are already ranked
                runs.setdefault((mode, n), {})[qid] = {
                    h["id"]: float(len(body["hits"]) - r) for r, h in enumerate(body["hits"])
                }
    for mode in ("bm25", "hybrid"):
        n3 = evaluate(qrels, runs[(mode, 3)])["ndcg@10"]
        n1 = evaluate(qrels, runs[(mode, 1)])["ndcg@10"]
        assert abs(n3 - n1) <= 0.005, (mode, n3, n1)
        assert n1 > 0.3  # a real retrieval, not two equally empty answers


@pytest.mark.timeout(900)
def test_killed_shard_partial_answers_no_false_acks_and_recovery(cluster: dict[str, Any]) -> None:
    lc: LocalCluster = cluster["lc"]
    gws, texts = cluster["gws"], list(cluster["queries"].values())
    victim = lc.shards[2]
    spare = cluster["spare"]
    batches = [spare[i : i + 4] for i in range(0, len(spare), 4)]
    stop = threading.Event()
    searches: list[tuple[float, float, int, dict[str, Any]]] = []
    writes: list[tuple[float, float, int, dict[str, Any], list[str]]] = []

    def search_loop() -> None:
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            body = {"collection": "sci3", "query": texts[i % len(texts)], "mode": "hybrid"}
            r = httpx.post(f"{gws[i % 2]}/v1/search", json=body, timeout=HTTP_TIMEOUT_S, headers=ADMIN)
            searches.append((t0, time.monotonic(), r.status_code, r.json()))
            i += 1

    def write_loop() -> None:
        for i, batch in enumerate(batches):
            if stop.is_set():
                return
            t0 = time.monotonic()
            r = httpx.post(
                f"{gws[i % 2]}/v1/collections/sci3/documents",
                json={"documents": batch},
                timeout=600,
                headers=ADMIN,
            )
            writes.append((t0, time.monotonic(), r.status_code, r.json(), [d["id"] for d in batch]))

    def wait_for(cond: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < deadline, "load made no progress"
            time.sleep(0.2)

    threads = [threading.Thread(target=search_loop), threading.Thread(target=write_loop)]
    for t in threads:
        t.start()
    try:
        # kill only once shard 2 has acknowledged a write: those ids must survive the SIGKILL
        wait_for(
            lambda: (
                len(searches) >= 3
                and any(w[2] == 200 and any(shard_of(i, 3) == 2 for i in w[4]) for w in writes)
            ),
            300,
        )
        t_kill = time.monotonic()
        victim.kill()
        t_dead = time.monotonic()
        wait_for(lambda: sum(s[0] > t_dead for s in searches) >= 5, 300)
        wait_for(
            lambda: sum(w[0] > t_dead and any(shard_of(i, 3) == 2 for i in w[4]) for w in writes) >= 2, 300
        )
    finally:
        stop.set()
        for t in threads:
            t.join(HTTP_TIMEOUT_S + 60)
    assert all(s[2] == 200 for s in searches), [s[3] for s in searches if s[2] != 200]
    for t0, t1, _status, body in searches:
        if body["partial"]:
            assert [f["shard"] for f in body["failed_shards"]] == [2], body["failed_shards"]
            assert body["failed_shards"][0]["reason"]
        if t0 > t_dead:
            assert body["partial"] is True and body["hits"], body
            assert all(shard_of(h["id"], 3) != 2 for h in body["hits"])
        if t1 < t_kill:
            assert body["partial"] is False  # a slow-but-alive shard was never reported
    acked: set[str] = set()
    for t0, _t1, status, body, ids in writes:
        mine = [i for i in ids if shard_of(i, 3) != 2]
        if status == 200:
            assert body["acknowledged"] == ids
        else:
            assert status == 503 and body["error"]["field"] == "shards[2]", body
            assert set(body["acknowledged"]) <= set(mine)
            assert not any(shard_of(i, 3) == 2 for i in body["acknowledged"])
        if t0 > t_dead and status != 200:
            assert body["acknowledged"] == mine  # the live shards' parts are written and said so
        if t0 > t_dead:
            assert status == 503 or not any(shard_of(i, 3) == 2 for i in ids)
        acked |= set(body["acknowledged"])
    assert any(shard_of(i, 3) == 2 for i in acked)  # some writes reached shard 2 before the kill

    victim.start()
    victim.wait_ready()
    for gw in gws:
        body = search(gw, "sci3", texts[0], "hybrid")
        assert body["partial"] is False, body["failed_shards"]
    ids = sorted(acked | {d["id"] for d in cluster["docs"]})
    r = httpx.post(
        f"{gws[0]}/v1/collections/sci3/documents/get", json={"ids": ids}, timeout=120, headers=ADMIN
    )
    assert r.status_code == 200 and r.json()["partial"] is False
    assert {d["id"] for d in r.json()["documents"]} == set(ids)
    for shard in lc.shards:
        st = httpx.get(f"{shard.url}/v1/collections/sci3", timeout=60, headers=SERVICE).json()["stats"]
        assert st["documents"] == st["lexical_documents"], (shard.name, st)
        assert st["chunks"] == st["dense_vectors"], (shard.name, st)
