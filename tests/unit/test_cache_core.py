"""Mirror, judges and validation of the semantic cache (no Redis, no network)."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.client import EmbedResult
from embedder.errors import Conflict, InvalidInput, TooLarge
from gateway.cache.judge import EmbeddingJudge, ExactMatchJudge, normalise
from gateway.cache.mirror import Mirror, MirrorEntry, VectorGroup
from gateway.cache.service import CacheConfig
from gateway.cache.store import decode_obs, encode_obs, scope_hash
from gateway.cache.validate import CacheLimits, check_policy, check_text


def _unit(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _entry(eid: str, ns: str = "a", scope: str = "", exp: float = 0.0) -> MirrorEntry:
    return MirrorEntry(eid, ns, scope, f"resp-{eid}", exp)


def test_mirror_nearest_respects_namespace_scope_and_expiry() -> None:
    rng = np.random.default_rng(0)
    v = _unit(rng, 4)
    m = Mirror()
    m.put(_entry("e0"), v[0])
    m.put(_entry("e1", ns="b"), v[1])
    m.put(_entry("e2", scope="s1"), v[2])
    m.put(_entry("e3", exp=100.0), v[3])
    nb = m.nearest("a", "", v[0], now=50.0)
    assert nb is not None and nb.entry.id == "e0" and nb.similarity == pytest.approx(1.0, abs=1e-5)
    # another namespace's / scope's vector is never returned, even when it is identical to the query
    assert m.nearest("a", "", v[1], now=50.0).entry.id in ("e0", "e3")  # type: ignore[union-attr]
    assert m.nearest("b", "", v[0], now=50.0).entry.id == "e1"  # type: ignore[union-attr]
    assert m.nearest("a", "s1", v[0], now=50.0).entry.id == "e2"  # type: ignore[union-attr]
    assert m.nearest("a", "s2", v[0]) is None
    # e3 is the exact match, but expired at t=200
    assert m.nearest("a", "", v[3], now=50.0).entry.id == "e3"  # type: ignore[union-attr]
    assert m.nearest("a", "", v[3], now=200.0).entry.id == "e0"  # type: ignore[union-attr]
    assert m.count("a") == 3 and m.count() == 4
    assert m.remove("a", "e0") and not m.remove("a", "e0")
    assert m.drop_namespace("a") == 2 and m.count() == 1


def test_group_rejects_other_dimensions() -> None:
    g = VectorGroup(8)
    with pytest.raises(Conflict) as exc:
        g.add("x", np.ones(4, dtype=np.float32))
    assert exc.value.limit == 8


def test_hnsw_group_agrees_with_exact_search_and_skips_tombstones() -> None:
    rng = np.random.default_rng(1)
    data = _unit(rng, 600)
    exact, approx = VectorGroup(32, exact_max=10_000), VectorGroup(32, exact_max=100, ef_search=128)
    for i, v in enumerate(data):
        exact.add(f"e{i}", v)
        approx.add(f"e{i}", v)
    assert approx.hnsw is not None and exact.hnsw is None
    queries = _unit(rng, 50)
    agree = sum(exact.search(q, 1)[0][0] == approx.search(q, 1)[0][0] for q in queries)
    assert agree >= 45  # HNSW with efSearch 128 on 600 points: recall@1 well above 90%
    for i in range(0, 600, 2):
        approx.remove(f"e{i}")
    hits = approx.search(data[0], 5)
    assert hits and all(int(eid[1:]) % 2 == 1 for eid, _ in hits)


def test_compaction_keeps_live_vectors() -> None:
    rng = np.random.default_rng(2)
    data = _unit(rng, 3000)
    g = VectorGroup(32, exact_max=100_000)
    for i, v in enumerate(data):
        g.add(f"e{i}", v)
    for i in range(2000):
        g.remove(f"e{i}")
    assert len(g.row_ids) < 3000  # compacted once tombstones passed half the rows
    assert g.live == 1000
    assert g.search(data[2500], 1)[0][0] == "e2500"


def test_scope_hash_is_canonical() -> None:
    assert scope_hash(None) == scope_hash({}) == ""
    assert scope_hash({"model": "x", "t": 0.2}) == scope_hash({"t": 0.2, "model": "x"})
    assert scope_hash({"model": "x"}) != scope_hash({"model": "y"})
    assert scope_hash("system prompt") != scope_hash("other")


def test_observation_encoding_roundtrip() -> None:
    s, y = decode_obs([encode_obs(0.8123456, True).encode(), encode_obs(0.5, False)])
    assert s.tolist() == pytest.approx([0.812346, 0.5]) and y.tolist() == [1.0, 0.0]


async def test_exact_judge_normalises() -> None:
    j = ExactMatchJudge()
    assert normalise("  Hello,   WORLD! ") == "hello,   world".replace("   ", " ")
    assert await j("card_arrival", " Card_Arrival ")
    assert not await j("card_arrival", "card_linking")


class _Embedder:
    async def embed(self, texts: list[str], **_: object) -> EmbedResult:
        vecs = {"yes": [1.0, 0.0], "yeah": [0.96, 0.28], "no": [0.0, 1.0]}
        return EmbedResult(np.array([vecs[t] for t in texts], dtype=np.float32))


async def test_embedding_judge_threshold() -> None:
    j = EmbeddingJudge(_Embedder(), threshold=0.9)  # type: ignore[arg-type]
    assert await j("yes", "yeah")  # cosine 0.96
    assert not await j("yes", "no")
    with pytest.raises(ValueError):
        EmbeddingJudge(_Embedder(), threshold=1.5)  # type: ignore[arg-type]


def test_validation_names_field_and_limit() -> None:
    with pytest.raises(InvalidInput) as e1:
        check_text("ns", "   ", "prompt", 10)
    assert e1.value.field == "prompt"
    with pytest.raises(TooLarge) as e2:
        check_text("ns", "x" * 11, "response", 10)
    assert (e2.value.field, e2.value.limit) == ("response", 10)
    with pytest.raises(InvalidInput) as e3:
        check_text("bad ns!", "x", "prompt", 10)
    assert e3.value.field == "namespace"
    cfg = CacheConfig()
    assert check_policy("adaptive", None, None, cfg) == (cfg.default_max_error, cfg.default_threshold)
    for me in (0.0, 1.0, -1.0):
        with pytest.raises(InvalidInput) as e4:
            check_policy("adaptive", me, None, cfg)
        assert e4.value.field == "max_error"
    for th in (-0.01, 1.01):
        with pytest.raises(InvalidInput) as e5:
            check_policy("static", None, th, cfg)
        assert e5.value.field == "threshold"
    with pytest.raises(InvalidInput):
        check_policy("magic", None, None, cfg)
    lim = CacheLimits(max_metadata_bytes=20)
    with pytest.raises(TooLarge) as e6:
        lim.check_metadata({"k": "x" * 50})
    assert e6.value.field == "metadata"
    with pytest.raises(InvalidInput) as e7:
        lim.check_ttl(0)
    assert e7.value.field == "ttl_s"
