"""IndexerService plumbing with a deterministic fake embedder (no quality or speed claims here)."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.errors import Conflict, DependencyFailed, InvalidInput, NotFound, TooLarge
from indexer.fake_embedder import FakeEmbedder
from indexer.filters import matches
from indexer.service import IndexerService

pytestmark = pytest.mark.timeout(120)


def make_docs(n: int, start: int = 0, prefix: str = "d") -> list[dict[str, Any]]:
    """Docs with a unique token each (``tok<i>``), a shared vocabulary, and filterable metadata."""
    vocab = ["protein", "cell", "gene", "virus", "cancer", "brain", "heart", "drug", "trial", "mouse"]
    docs = []
    for i in range(start, start + n):
        words = [vocab[(i * 7 + j * 3) % len(vocab)] for j in range(6)]
        docs.append(
            {
                "id": f"{prefix}{i}",
                "title": f"Study {i}",
                "text": f"tok{i} " + " ".join(words),
                "metadata": {"year": 2000 + i % 20, "tag": ["a", "b", "c"][i % 3], "i": i},
            }
        )
    return docs


async def make_service(root: Path, fake: FakeEmbedder | None = None, **kw: Any) -> IndexerService:
    svc = IndexerService(root, fake or FakeEmbedder(), **kw)
    await svc.open()
    return svc


def crash(svc: IndexerService) -> None:
    """Drop a service without its shutdown snapshot (what SIGKILL leaves, minus torn files)."""
    for coll in svc._collections.values():
        coll.lexical.close()
        coll.store.close()
    svc._collections.clear()
    gc.collect()


async def assert_consistent(svc: IndexerService, name: str) -> dict[str, Any]:
    st = (await svc.collection_info(name))["stats"]
    assert st["documents"] == st["lexical_documents"], st
    assert st["chunks"] == st["dense_vectors"], st
    return st


async def test_upsert_search_get_delete(tmp_path: Path) -> None:
    fake = FakeEmbedder()
    svc = await make_service(tmp_path, fake)
    await svc.create_collection("c", model="fake")
    res = await svc.upsert("c", make_docs(60))
    assert res["upserted"] == 60 and res["seq"] == 1
    hits = await svc.search_lexical("c", "tok17", 5)
    assert hits[0].id == "d17" and hits[0].metadata["i"] == 17
    vec = fake.encode(["Study 17\ntok17 " + make_docs(1, 17)[0]["text"][6:]])[0]
    dense = await svc.search_dense("c", vec, 5)
    assert dense[0].id == "d17" and dense[0].score == pytest.approx(1.0, abs=1e-5)
    assert len({h.id for h in dense}) == 5
    docs = await svc.get_documents("c", ["d3", "nope", "d1"])
    assert [d["id"] for d in docs] == ["d3", "d1"]
    assert (await svc.delete("c", ["d17", "nope"]))["deleted"] == 1
    assert all(h.id != "d17" for h in await svc.search_lexical("c", "tok17", 5))
    assert all(h.id != "d17" for h in await svc.search_dense("c", vec, 60))
    st = await assert_consistent(svc, "c")
    assert st["documents"] == 59
    # upsert replaces: new text is searchable, old text is gone
    await svc.upsert("c", [{"id": "d3", "text": "completely different zebra"}])
    assert (await svc.search_lexical("c", "zebra", 3))[0].id == "d3"
    assert all(h.id != "d3" for h in await svc.search_lexical("c", "tok3", 5))
    await svc.close()


async def test_chunks_per_chunk_and_per_document(tmp_path: Path) -> None:
    svc = await make_service(tmp_path)
    await svc.create_collection("c", model="fake", chunk_tokens=32, chunk_overlap=4)
    long_text = " ".join(f"w{i}" for i in range(200))
    await svc.upsert("c", [{"id": "long", "title": "T", "text": long_text}, *make_docs(5)])
    info = await svc.collection_info("c")
    assert info["stats"]["chunks"] > 6
    fake = svc.embedder
    assert isinstance(fake, FakeEmbedder)
    q = fake.encode(["w150 w151 w152 w153"])[0]
    per_doc = await svc.search_dense("c", q, 3)
    assert [h.id for h in per_doc].count("long") == 1
    assert per_doc[0].id == "long" and per_doc[0].text == long_text and per_doc[0].chunk > 0
    per_chunk = await svc.search_dense("c", q, 3, per_chunk=True)
    # w150..w153 lie in two overlapping windows: both come first, as separate chunk hits
    assert [h.id for h in per_chunk[:2]] == ["long"] * 2 and per_chunk[0].chunk != per_chunk[1].chunk
    assert "w151" in per_chunk[0].text and per_chunk[0].text != long_text
    await svc.close()


async def test_texts_limits_which_hits_carry_their_document(tmp_path: Path) -> None:
    svc = await make_service(tmp_path)
    await svc.create_collection("c", model="fake", chunk_tokens=32, chunk_overlap=4)
    long_text = " ".join(f"w{i}" for i in range(200))
    await svc.upsert("c", [{"id": "long", "title": "T", "text": long_text}, *make_docs(30)])
    fake = svc.embedder
    assert isinstance(fake, FakeEmbedder)
    q = fake.encode(["w150 w151 w152 w153"])[0]
    for _ in range(2):  # the second round answers id-only hits from the key caches
        full = await svc.search_dense("c", q, 10)
        some = await svc.search_dense("c", q, 10, texts=3)
        none = await svc.search_dense("c", q, 10, texts=0)
        assert [(h.id, h.score, h.chunk) for h in some] == [(h.id, h.score, h.chunk) for h in full]
        assert [(h.id, h.chunk) for h in none] == [(h.id, h.chunk) for h in full]
        assert [(h.title, h.text, h.metadata) for h in some[:3]] == [
            (h.title, h.text, h.metadata) for h in full[:3]
        ]
        assert all(h.text == h.title == "" and h.metadata == {} for h in some[3:] + none)
        chunks = await svc.search_dense("c", q, 4, per_chunk=True, texts=1)
        assert chunks[0].id == "long" and "w151" in chunks[0].text and chunks[0].text != long_text
        assert all(h.text == "" for h in chunks[1:])
        lex_full = await svc.search_lexical("c", "protein cell", 10)
        lex = await svc.search_lexical("c", "protein cell", 10, texts=2)
        assert [(h.id, h.score) for h in lex] == [(h.id, h.score) for h in lex_full]
        assert [h.text for h in lex[:2]] == [h.text for h in lex_full[:2]] and lex[0].text
        assert all(h.text == "" and h.metadata == {} for h in lex[2:])
    # a deleted document never comes back from the key caches
    await svc.delete("c", ["long"])
    assert all(h.id != "long" for h in await svc.search_dense("c", q, 10, texts=0))
    with pytest.raises(InvalidInput):
        await svc.search_dense("c", q, 10, texts=-1)
    await svc.close()


@pytest.mark.parametrize(
    "index",
    [
        {"type": "flat"},
        {"type": "hnsw", "M": 8, "ef_search": 16},
        {"type": "flat", "code": "sq8"},
        {"type": "hnsw", "code": "binary"},
        {"type": "ivf-pq", "nlist": 4, "pq_m": 8},
    ],
    ids=["flat", "hnsw", "sq8", "binary-hnsw", "ivfpq"],
)
async def test_filtered_dense_returns_k_when_k_match(tmp_path: Path, index: dict[str, Any]) -> None:
    svc = await make_service(tmp_path)
    await svc.create_collection("c", model="fake", index=index)
    docs = make_docs(1200)
    for i in range(0, len(docs), 400):
        await svc.upsert("c", docs[i : i + 400])
    fake = svc.embedder
    assert isinstance(fake, FakeEmbedder)
    q = fake.encode(["protein cell gene"])[0]
    flt = {"i": {"gte": 100, "lt": 112}, "tag": {"in": ["a", "b"]}}  # 8 of 1200 documents match
    expected = [d["id"] for d in docs if matches(d["metadata"], flt)]
    hits = await svc.search_dense("c", q, 5, flt)
    assert len(hits) == 5 and all(matches(h.metadata, flt) for h in hits)
    hits = await svc.search_dense("c", q, 20, flt)
    assert sorted(h.id for h in hits) == sorted(expected)
    broad = {"year": {"gte": 2001}}  # ~95% match: goes through the index with a selector
    hits = await svc.search_dense("c", q, 50, broad)
    assert len(hits) == 50 and all(matches(h.metadata, broad) for h in hits)
    lex = await svc.search_lexical("c", "protein", 20, flt)
    assert lex and all(h.id in expected for h in lex)
    await assert_consistent(svc, "c")
    await svc.close()


async def test_compressed_codes_with_rescoring_match_exact(tmp_path: Path) -> None:
    """SQ8 / binary candidates rescored with float vectors: same top-5 as exact on most queries."""
    fake = FakeEmbedder(dim=256)
    svc = await make_service(tmp_path, fake)
    docs = make_docs(1500)
    for name, index in (("exact", {"type": "flat"}), ("sq8", {"code": "sq8"}), ("bin", {"code": "binary"})):
        await svc.create_collection(name, model="fake", index=index)
        await svc.upsert(name, docs[:1000])
        await svc.upsert(name, docs[1000:])
    assert (await svc.collection_info("sq8"))["stats"]["dense_index"] == "flat+sq8"
    queries = fake.encode([f"tok{i} cancer drug" for i in range(30)])
    for name in ("sq8", "bin"):
        overlap = []
        for q in queries:
            ref = {h.id: h.score for h in await svc.search_dense("exact", q, 5)}
            got = await svc.search_dense(name, q, 5)
            overlap.append(len(set(ref) & {h.id for h in got}) / 5)
            for h in got:  # rescored: the score is the exact cosine, not the code's approximation
                if h.id in ref:
                    assert h.score == pytest.approx(ref[h.id], abs=1e-5)
        # fake vectors (bag-of-words sums) have hundreds of near-ties that 1-bit codes cannot order, so
        # binary is only held to 0.5 here; real-model recall of both codes is measured in bench/index.py
        assert np.mean(overlap) >= (0.9 if name == "sq8" else 0.5), (name, np.mean(overlap))
    await svc.close()


async def test_auto_switches_to_hnsw_and_tombstones_deletes(tmp_path: Path) -> None:
    svc = await make_service(tmp_path, hnsw_threshold=300)
    await svc.create_collection("c", model="fake")
    await svc.upsert("c", make_docs(250))
    assert (await svc.collection_info("c"))["stats"]["dense_index"] == "flat"
    await svc.upsert("c", make_docs(100, 250))
    assert (await svc.collection_info("c"))["stats"]["dense_index"] == "hnsw"
    fake = svc.embedder
    assert isinstance(fake, FakeEmbedder)
    q = fake.encode(["protein"])[0]
    gone = [f"d{i}" for i in range(0, 350, 2)]
    await svc.delete("c", gone[:50])
    hits = await svc.search_dense("c", q, 100)
    assert len(hits) == 100 and not set(h.id for h in hits) & set(gone[:50])
    await svc.delete("c", gone[50:])  # > 20% tombstones: rebuilt (still HNSW? 175 left -> flat)
    st = await assert_consistent(svc, "c")
    assert st["documents"] == 175 and st["dense_index"] == "flat"
    await svc.close()


async def test_replay_after_crash_without_snapshot(tmp_path: Path) -> None:
    svc = await make_service(tmp_path, snapshot_every=150)
    await svc.create_collection("c", model="fake")
    await svc.upsert("c", make_docs(100))
    await svc.upsert("c", make_docs(100, 100))  # 200 chunks >= 150: snapshot at seq 2
    await svc.upsert("c", make_docs(30, 200))
    await svc.delete("c", ["d5", "d150", "d210"])
    await svc.upsert("c", [{"id": "d6", "text": "replaced after the snapshot"}])
    crash(svc)
    svc2 = await make_service(tmp_path)
    st = await assert_consistent(svc2, "c")
    assert st["documents"] == 227 and st["snapshot_seq"] == 2 and st["seq"] == 5
    assert (await svc2.search_lexical("c", "replaced snapshot", 1))[0].id == "d6"
    for gone in ("d5", "d150", "d210"):
        assert not await svc2.get_documents("c", [gone])
        assert all(h.id != gone for h in await svc2.search_lexical("c", f"tok{gone[1:]}", 3))
    fake = svc2.embedder
    assert isinstance(fake, FakeEmbedder)
    hits = await svc2.search_dense("c", fake.encode(["Study 220\n" + make_docs(1, 220)[0]["text"]])[0], 1)
    assert hits[0].id == "d220"
    await svc2.close()
    svc3 = await make_service(tmp_path)  # clean shutdown snapshot: nothing to replay
    st3 = await assert_consistent(svc3, "c")
    assert st3["snapshot_seq"] == st3["seq"] == 5
    await svc3.close()


async def test_corrupt_snapshot_falls_back_to_rebuild(tmp_path: Path) -> None:
    svc = await make_service(tmp_path)
    await svc.create_collection("c", model="fake")
    await svc.upsert("c", make_docs(40))
    await svc.close()
    snap = next((tmp_path / "collections" / "c").glob("dense-*"))
    (snap / "index.faiss").write_bytes(b"garbage")
    svc2 = await make_service(tmp_path)
    st = await assert_consistent(svc2, "c")
    assert st["chunks"] == 40
    await svc2.close()


async def _unchanged(svc: IndexerService, before: dict[str, Any]) -> None:
    after = (await svc.collection_info("c"))["stats"]
    assert after == before


@pytest.mark.parametrize(
    ("docs", "error", "field"),
    [
        ([{"id": "x", "text": "a"}, {"id": "x", "text": "b"}], InvalidInput, "documents[1].id"),
        ([{"id": "x", "text": "ok"}, {"id": "y", "text": "   "}], InvalidInput, "documents[1].text"),
        ([{"id": "", "text": "a"}], InvalidInput, "documents[0].id"),
        ([{"id": "x", "text": "a" * 2001}], TooLarge, "documents[0].text"),
        ([{"id": "x", "text": "a", "metadata": {"s": {1, 2}}}], InvalidInput, "documents[0].metadata"),
        ([{"id": "x", "text": "a", "metadata": {"v": float("nan")}}], InvalidInput, "documents[0].metadata"),
        ([{"id": "x", "text": "a", "metadata": "not an object"}], InvalidInput, "documents[0].metadata"),
        ([{"id": f"i{i}", "text": "a"} for i in range(11)], TooLarge, "documents"),
        ([], InvalidInput, "documents"),
    ],
    ids=[
        "dup-id",
        "empty-text",
        "empty-id",
        "oversize",
        "set-meta",
        "nan-meta",
        "str-meta",
        "too-many",
        "none",
    ],
)
async def test_bad_batches_leave_collection_unchanged(
    tmp_path: Path, docs: list[dict[str, Any]], error: type[Exception], field: str
) -> None:
    fake = FakeEmbedder()
    svc = await make_service(tmp_path, fake, max_doc_chars=2000, max_batch_docs=10)
    await svc.create_collection("c", model="fake")
    await svc.upsert("c", make_docs(5))
    before = (await svc.collection_info("c"))["stats"]
    calls = fake.calls
    with pytest.raises(error) as err:
        await svc.upsert("c", docs)
    assert getattr(err.value, "field", None) == field
    assert fake.calls == calls, "validation happens before any embedding"
    await _unchanged(svc, before)
    await svc.close()


async def test_other_errors(tmp_path: Path) -> None:
    fake = FakeEmbedder()
    svc = await make_service(tmp_path, fake)
    await svc.create_collection("c", model="fake")
    await svc.upsert("c", make_docs(5))
    before = (await svc.collection_info("c"))["stats"]
    with pytest.raises(NotFound):
        await svc.upsert("nope", make_docs(1))
    with pytest.raises(InvalidInput) as err:
        await svc.search_dense("c", np.ones(7), 3)
    assert err.value.field == "vector" and err.value.limit == 32
    with pytest.raises(InvalidInput) as err:
        await svc.search_lexical("c", "x", 3, {"year": {"between": [1, 2]}})
    assert err.value.field == "filters.year.between"
    with pytest.raises(Conflict) as err:
        await svc.upsert("c", make_docs(1, 50), model="minilm")
    assert err.value.field == "model"
    with pytest.raises(Conflict):
        await svc.upsert("c", make_docs(1, 50), dims=16)
    with pytest.raises(Conflict):
        await svc.create_collection("c", model="fake")
    assert (await svc.create_collection("c", model="fake", exist_ok=True))["name"] == "c"
    with pytest.raises(Conflict):
        await svc.create_collection("c", model="fake", dims=16, exist_ok=True)
    with pytest.raises(InvalidInput) as err:
        await svc.create_collection("bad/name", model="fake")
    assert err.value.field == "name"
    with pytest.raises(InvalidInput) as err:
        await svc.create_collection("d", model="fake", index={"type": "lsh"})
    assert err.value.field == "index.type"
    # the embedder now serves another model / revision: refused, never mixed
    svc._revision_checked.clear()
    fake.revision = "r2"
    with pytest.raises(Conflict) as err:
        await svc.upsert("c", make_docs(1, 50))
    assert "revision" in err.value.message
    fake.revision = "r1"
    fake.fail = True
    with pytest.raises(DependencyFailed):
        await svc.upsert("c", make_docs(1, 50))
    await _unchanged(svc, before)
    await svc.close()


async def test_searches_during_upserts_see_both_indexes(tmp_path: Path) -> None:
    """Readers never error and always see SQLite, FAISS and BM25 agree; acked docs are searchable."""
    svc = await make_service(tmp_path)
    await svc.create_collection("c", model="fake")
    coll = svc._collections["c"]
    fake = svc.embedder
    assert isinstance(fake, FakeEmbedder)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        q = fake.encode(["protein gene"])[0]
        while not stop.is_set():
            try:
                st = coll.stats()
                assert st["documents"] == st["lexical_documents"] and st["chunks"] == st["dense_vectors"], st
                coll.search_dense(q, 10, None)
                coll.search_lexical("protein tok3", 10, {"tag": "a"})
                reads[0] += 1
            except BaseException as exc:  # noqa: BLE001 - collected and re-raised in the test thread
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for b in range(12):
            batch = make_docs(50, 50 * b)
            await svc.upsert("c", batch)
            for d in batch[::10]:
                assert (await svc.search_lexical("c", f"tok{d['id'][1:]}", 1))[0].id == d["id"]
                vec = fake.encode([f"{d['title']}\n{d['text']}"])[0]
                assert (await svc.search_dense("c", vec, 1))[0].id == d["id"]
            await asyncio.sleep(0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert reads[0] > 0
    await svc.close()


async def test_ingest_jobs_resume_and_report_bad_records(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    lines = [
        json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"], "year": 1}) for d in make_docs(30)
    ]
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps({"_id": "empty", "text": ""}))
    corpus.write_text("\n".join(lines) + "\n")
    svc = await make_service(tmp_path / "data", job_roots=[tmp_path])
    await svc.create_collection("c", model="fake")
    await svc.upsert("c", make_docs(10))  # a previous partial run
    job = await svc.start_job("c", corpus)
    for _ in range(200):
        state = await svc.job("c", job["id"])
        if state["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert state["status"] == "completed", state
    assert (state["done"], state["skipped"], state["failed"]) == (20, 10, 2)
    assert any("invalid JSON" in e for e in state["errors"]) and any("text" in e for e in state["errors"])
    docs = await svc.get_documents("c", ["d25"])
    assert docs[0]["metadata"] == {"year": 1}
    with pytest.raises(NotFound):
        await svc.job("c", "nope")
    with pytest.raises(InvalidInput):
        await svc.start_job("c", tmp_path / "missing.jsonl")
    await svc.close()


async def test_ingest_job_waits_out_an_embedder_that_is_still_loading(tmp_path: Path) -> None:
    from embedder.errors import NotReady

    class LoadingEmbedder(FakeEmbedder):
        """Answers NotReady for its first three embed calls (a service still loading its models)."""

        async def embed(self, texts: list[str], **kw: Any) -> Any:
            self.calls += 1
            if self.calls <= 3:
                raise NotReady("embedder models are still loading", field="model")
            return await super().embed(texts, **kw)

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d["id"], "text": d["text"]}) + "\n" for d in make_docs(12)))
    svc = await make_service(tmp_path / "data", LoadingEmbedder(), job_roots=[tmp_path])
    await svc.create_collection("c", model="fake")
    job = await svc.start_job("c", corpus)
    for _ in range(400):
        state = await svc.job("c", job["id"])
        if state["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert state["status"] == "completed" and state["done"] == 12, state
    # a lasting outage still fails the ingest once the retry budget is spent
    svc.embedder.calls = 0  # type: ignore[attr-defined]
    with pytest.raises(NotReady):
        await svc.run_ingest("c", _rewrite(corpus, tmp_path / "more.jsonl", "m"), retry_s=0.0)
    await svc.close()


async def test_retry_backs_off_exponentially_with_a_cap() -> None:
    from embedder.errors import InvalidInput, Overloaded
    from indexer.jobs import retry_transient

    waits: list[float] = []
    calls = 0

    async def fake_sleep(s: float) -> None:
        waits.append(s)

    async def busy_then_ok() -> str:
        nonlocal calls
        calls += 1
        if calls <= 7:
            raise Overloaded("embedder batch queue is full", field="input", limit=1024)
        return "ok"

    assert await retry_transient(busy_then_ok, "test", sleep=fake_sleep) == "ok"
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0] and calls == 8
    waits.clear()
    calls = 0
    with pytest.raises(Overloaded):  # the budget is spent: the error goes through
        await retry_transient(busy_then_ok, "test", retry_s=3.0, sleep=fake_sleep)
    assert waits == [0.5, 1.0, 2.0] and calls == 4

    async def bad() -> None:
        raise InvalidInput("not transient", field="x")

    waits.clear()
    with pytest.raises(InvalidInput):
        await retry_transient(bad, "test", sleep=fake_sleep)
    assert waits == []


async def test_ingest_backs_off_when_the_embedder_is_overloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedder.errors import Overloaded
    from indexer import jobs

    class BusyEmbedder(FakeEmbedder):
        """Answers 429-overloaded to every other embed call (a full batch queue)."""

        attempts: int
        refused: int

        async def embed(self, texts: list[str], **kw: Any) -> Any:
            self.attempts += 1
            if self.attempts % 2:
                self.refused += 1
                self.priorities.append(kw.get("priority"))
                raise Overloaded("embedder batch queue is full", field="input", limit=1024)
            return await super().embed(texts, **kw)

    monkeypatch.setattr(jobs, "BACKOFF_BASE_S", 0.01)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d["id"], "text": d["text"]}) + "\n" for d in make_docs(20)))
    emb = BusyEmbedder()
    emb.attempts = emb.refused = 0
    svc = await make_service(tmp_path / "data", emb)
    await svc.create_collection("c", model="fake")
    emb.priorities = []
    prog = await svc.run_ingest("c", corpus, batch_size=8)
    assert prog.done == 20 and prog.failed == 0  # nothing lost, nothing failed
    assert emb.refused >= 3  # every batch was refused at least once
    assert set(emb.priorities) == {"batch"}  # ingest embeds in the batch class
    await svc.close()


def _rewrite(src: Path, dest: Path, prefix: str) -> Path:
    dest.write_text(src.read_text().replace('"_id": "d', f'"_id": "{prefix}'))
    return dest


async def test_csv_and_parquet_ingest(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(12)
    csv_path = tmp_path / "docs.csv"
    csv_path.write_text(
        "id,title,text,lang\n" + "".join(f'{d["id"]},{d["title"]},"{d["text"]}",en\n' for d in docs)
    )
    pq_path = tmp_path / "docs.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"_id": f"p{i}", "text": f"parquet row {i}"} for i in range(7)]), pq_path
    )
    svc = await make_service(tmp_path / "data")
    await svc.create_collection("c", model="fake")
    prog = await svc.run_ingest("c", csv_path)
    assert prog.done == 12 and prog.total == 12
    prog = await svc.run_ingest("c", pq_path)
    assert prog.done == 7 and prog.total == 7
    assert (await svc.get_documents("c", ["d4"]))[0]["metadata"] == {"lang": "en"}
    assert (await svc.search_lexical("c", "parquet row", 10))[0].id.startswith("p")
    await svc.close()


async def test_hnsw_selector_starvation_falls_back_to_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Force the FAISS-selector path on HNSW with a very selective filter: results must still be complete."""
    import indexer.collection

    monkeypatch.setattr(indexer.collection, "EXACT_SUBSET_MAX", 2)
    svc = await make_service(tmp_path)
    await svc.create_collection("c", model="fake", index={"type": "hnsw", "M": 8, "ef_search": 8})
    docs = make_docs(800)
    await svc.upsert("c", docs)
    fake = svc.embedder
    assert isinstance(fake, FakeEmbedder)
    flt = {"i": {"in": [3, 400, 799, 512, 77, 123]}}
    hits = await svc.search_dense("c", fake.encode(["heart drug"])[0], 6, flt)
    assert sorted(h.id for h in hits) == sorted(f"d{i}" for i in (3, 400, 799, 512, 77, 123))
    assert hits == sorted(hits, key=lambda h: -h.score)
    await svc.close()


async def test_search_defaults_file_round_trip(tmp_path: Path) -> None:
    svc = await make_service(tmp_path)
    await svc.create_collection("c", model="fake")
    assert (await svc.collection_info("c"))["search_defaults"] is None
    doc = {"version": 1, "rerank_weight": {"hybrid-rrf": {"weight": 0.05, "created": "t"}}}
    path = await svc.put_search_defaults("c", doc)
    assert path == tmp_path / "collections" / "c" / "search_defaults.json"
    assert (await svc.collection_info("c"))["search_defaults"] == doc
    await svc.close()
    svc = await make_service(tmp_path)  # survives a restart: it is a file in the collection's dir
    assert (await svc.collection_info("c"))["search_defaults"] == doc
    path.write_text("{not json")
    assert (await svc.collection_info("c"))["search_defaults"] is None  # unreadable: ignored, logged
    with pytest.raises(NotFound):
        await svc.put_search_defaults("nope", doc)
    await svc.close()
