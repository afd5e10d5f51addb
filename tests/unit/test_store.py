"""SQLite document store: one transaction per batch, seq numbers, tombstones for replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.store import DocStore, PreparedDoc


def _doc(doc_id: str, n_chunks: int = 1, dims: int = 4) -> PreparedDoc:
    emb = np.full((n_chunks, dims), float(len(doc_id)), np.float32)
    return PreparedDoc(doc_id, "t", f"text {doc_id}", '{"k": 1}', [(i, 0, 4) for i in range(n_chunks)], emb)


def test_write_replace_delete_and_replay(tmp_path: Path) -> None:
    store = DocStore(tmp_path / "s.sqlite", 4)
    ch1 = store.write([_doc("a", 2), _doc("b")])
    assert ch1.seq == 1 and len(ch1.cids) == 3 and ch1.vectors is not None and ch1.vectors.shape == (3, 4)
    ch2 = store.write([_doc("a", 1)], delete_ids=["b", "missing"])
    assert ch2.seq == 2
    assert sorted(ch2.removed_cids) == sorted(ch1.cids)  # a's two old chunks and b's chunk
    assert store.counts() == {"documents": 1, "chunks": 1}
    replay = store.changes_since(1)
    assert replay.seq == 2 and replay.cids == ch2.cids and len(replay.docs) == 1
    assert set(replay.removed_cids) == set(ch1.cids)
    assert store.changes_since(2).cids == [] and store.changes_since(2).removed_cids == []
    store.prune_tombstones(2)
    assert store.changes_since(0).removed_cids == []
    assert [d["id"] for d in store.get_docs(["zz", "a"])] == ["a"]
    store.close()
    again = DocStore(tmp_path / "s.sqlite", 4)
    assert again.seq() == 2 and again.counts() == {"documents": 1, "chunks": 1}
    again.close()


def test_failed_batch_changes_nothing(tmp_path: Path) -> None:
    store = DocStore(tmp_path / "s.sqlite", 4)
    store.write([_doc("a")])
    bad = _doc("c", 2)
    bad.embeddings = bad.embeddings[:1]  # one vector for two chunks: fails inside the transaction
    with pytest.raises(ValueError):
        store.write([_doc("b"), bad], delete_ids=["a"])
    assert store.seq() == 1
    assert store.counts() == {"documents": 1, "chunks": 1}
    assert [d["id"] for d in store.get_docs(["a", "b", "c"])] == ["a"]
    store.close()


def test_filtered_and_embeddings(tmp_path: Path) -> None:
    store = DocStore(tmp_path / "s.sqlite", 4)
    ch = store.write([_doc("a", 2), _doc("bb")])
    cids, dnos = store.filtered("json_extract(d.metadata, '$.k') = ?", [1])
    assert sorted(cids.tolist()) == sorted(ch.cids) and len(dnos) == 2
    got, vecs = store.embeddings(ch.cids[-1:])
    assert got.tolist() == ch.cids[-1:] and np.allclose(vecs, 2.0)
    store.close()
