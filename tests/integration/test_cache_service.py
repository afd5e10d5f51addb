"""CacheService against a real Redis (db 15) and a real loopback Redis Cluster (3 masters + 3 replicas):
storage, sync between replicas, isolation, feedback. Every scenario runs on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cache.feedback import FeedbackAlreadyGiven, UnknownLookup
from gateway.cache.redis_client import is_cluster, make_client
from gateway.cache.service import CacheConfig, CacheService
from tests.integration.cache_helpers import HashEmbedder, RedisClusterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster on ports 18610-18615 for this module's scenarios."""
    cluster = RedisClusterProcess(Path(tmp_path_factory.mktemp("cluster")), 18610)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


def _raw(url: str) -> Any:
    return make_client(url, is_cluster(url), 5.0)


@pytest.fixture(params=["redis", "cluster"])
async def clean_redis(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[str]:
    url = redis_url if request.param == "redis" else request.getfixturevalue("cluster_url")
    r = _raw(url)
    await r.flushdb()
    yield url
    await r.flushdb()
    await r.aclose()


async def _service(url: str, **cfg: object) -> CacheService:
    svc = CacheService(url, HashEmbedder(), CacheConfig(op_timeout_s=1.0, **cfg), seed=0)  # type: ignore[arg-type]
    await svc.start()
    return svc


async def _eventually(check, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_store_lookup_and_isolation(clean_redis: str) -> None:
    svc = await _service(clean_redis)
    try:
        assert (await svc.lookup("ns1", "paris")).decision == "miss"
        st = await svc.store("ns1", "paris", "capital of France", scope={"model": "m1"})
        assert st.stored and st.entry_id
        hit = await svc.lookup("ns1", "paris#1", scope={"model": "m1"}, policy="static", threshold=0.9)
        assert hit.hit and hit.response == "capital of France" and hit.entry_id == st.entry_id
        # other scope, no scope, other namespace: never see the entry
        for ns, scope in (("ns1", {"model": "m2"}), ("ns1", None), ("ns2", {"model": "m1"})):
            res = await svc.lookup(ns, "paris", scope=scope, policy="static", threshold=0.0)
            assert not res.hit and res.entry_id is None
        stats = await svc.stats("ns1")
        assert stats["entries"] == 1 and stats["lookups"] == 4 and stats["exploit"] == 1
    finally:
        await svc.close()


async def test_adaptive_explores_new_entries_then_learns(clean_redis: str) -> None:
    # the vCache rule (randomised), without storing correct explores: one entry learns from its own feedback
    svc = await _service(
        clean_redis, min_obs=3, use_prior=False, adaptive_rule="vcache", store_on_correct_explore=False
    )
    try:
        await svc.store("ns", "q", "A")
        first = await svc.lookup("ns", "q#1", max_error=0.05)
        assert first.decision == "explore" and first.exploit_probability == 0.0
        fb = await svc.feedback(first.lookup_id, "A")
        assert fb.correct is True and fb.stored_entry_id is None and fb.observations == 1
        with pytest.raises(FeedbackAlreadyGiven):
            await svc.feedback(first.lookup_id, "A")
        with pytest.raises(UnknownLookup):
            await svc.feedback("0" * 32, "A")
        decisions, probs = [], []
        for i in range(2, 40):
            res = await svc.lookup("ns", f"q#{i}", max_error=0.05)
            decisions.append(res.decision)
            probs.append(res.exploit_probability or 0.0)
            if res.decision != "exploit":
                await svc.feedback(res.lookup_id, "A")
        # agreeing observations near s=0.99 raise the exploit probability above delta, step by step
        # (only agreeing labels leave the threshold loosely pinned: it stays well below 1)
        assert probs[0] == 0.0 and probs[-1] > 0.1 and probs[-1] > probs[5] > 0.05
        assert "exploit" in decisions
        entry = svc.mirror.get("ns", next(iter(svc.mirror.entries))[1])
        assert entry is not None
        fit, n_obs = svc.mirror.group_fit("ns", entry.group_id)
        assert fit is not None and n_obs >= 3
        # a wrong answer is recorded and stored as its own entry
        res = await svc.lookup("ns", "q#99", policy="static", threshold=0.5)
        fb = await svc.feedback(res.lookup_id, "B")
        assert fb.correct is False and fb.stored_entry_id is not None
        assert (await svc.stats("ns"))["entries"] == 2
    finally:
        await svc.close()


async def test_two_replicas_see_each_others_writes(clean_redis: str) -> None:
    a, b = await _service(clean_redis), await _service(clean_redis)
    try:
        st = await a.store("shared", "tokyo", "Japan")

        async def b_hits() -> bool:
            return (await b.lookup("shared", "tokyo#1", policy="static", threshold=0.9)).hit

        await _eventually(b_hits)
        # feedback given through b updates the fit that a uses
        res = await b.lookup("shared", "tokyo#2", max_error=0.05)
        await b.feedback(res.lookup_id, "Japan")

        async def a_has_obs() -> bool:
            e = a.mirror.get("shared", st.entry_id or "")
            return e is not None and a.mirror.group_fit("shared", e.group_id)[1] == 1

        await _eventually(a_has_obs)
        assert await b.delete_entry("shared", st.entry_id or "")

        async def a_forgot() -> bool:
            return a.mirror.get("shared", st.entry_id or "") is None

        await _eventually(a_forgot)
        await a.store("shared", "lima", "Peru")
        assert await b.delete_namespace("shared") >= 1

        async def a_empty() -> bool:
            return a.mirror.count("shared") == 0

        await _eventually(a_empty)
        # nothing of the namespace is left but (on a cluster) its trimmed stream holding the nsdel
        left = [k async for k in a.main.scan_iter(match=f"{a.keys.ns('shared')}:*")]
        assert left == ([a.keys.stream("shared").encode()] if a.cluster else [])
    finally:
        await a.close()
        await b.close()


async def test_restart_rebuilds_mirror_from_redis(clean_redis: str) -> None:
    svc = await _service(clean_redis)
    ids = [(await svc.store("keep", f"prompt-{i}", f"r{i}")).entry_id for i in range(20)]
    await svc.close()
    again = await _service(clean_redis)
    try:
        assert again.mirror.count("keep") == 20
        res = await again.lookup("keep", "prompt-7#x", policy="static", threshold=0.9)
        assert res.hit and res.entry_id == ids[7] and res.response == "r7"
    finally:
        await again.close()


async def test_cap_evicts_oldest_and_ttl_expires(clean_redis: str) -> None:
    svc = await _service(clean_redis, max_entries=3)
    try:
        ids = [(await svc.store("cap", f"p{i}", f"r{i}")).entry_id for i in range(5)]
        stats = await svc.stats("cap")
        assert stats["entries"] == 3 and stats["evictions"] == 2
        assert svc.mirror.get("cap", ids[0] or "") is None and svc.mirror.get("cap", ids[4] or "") is not None
        await svc.store("ttl", "short", "lived", ttl_s=1)
        assert (await svc.lookup("ttl", "short", policy="static", threshold=0.9)).hit
        await asyncio.sleep(1.2)
        assert not (await svc.lookup("ttl", "short", policy="static", threshold=0.9)).hit
    finally:
        await svc.close()


async def test_feedback_by_entry_id_and_prompt(clean_redis: str) -> None:
    svc = await _service(clean_redis)
    try:
        st = await svc.store("fe", "rome", "Italy")
        fb = await svc.feedback_entry("fe", st.entry_id or "", "rome#3", "italy.")
        assert fb.correct is True and fb.observations == 1
    finally:
        await svc.close()


async def test_budget_rule_groups_learn_and_stay_within_budget(clean_redis: str) -> None:
    svc = await _service(clean_redis, min_obs=3, use_prior=False)  # defaults: budget rule, response groups
    try:
        first = (await svc.store("ns", "q", "A")).entry_id or ""
        decisions = []
        for i in range(1, 60):
            res = await svc.lookup("ns", f"q#{i}", max_error=0.2)
            decisions.append(res.decision)
            assert res.exploit_probability == (1.0 if res.decision == "exploit" else 0.0)
            if res.decision != "exploit":
                fb = await svc.feedback(res.lookup_id, "A")
                assert fb.correct is True and fb.stored_entry_id is not None  # correct explores are stored
        assert decisions[0] == "explore" and "exploit" in decisions
        rb = svc.budgets.get("ns", 0.2)
        assert rb.lookups == 59 and rb.spent <= 0.2 * rb.lookups
        # every entry answering "A" shares one group: its observations and its fit
        grp = svc.mirror.get("ns", first).group_id  # type: ignore[union-attr]
        assert {e.group_id for e in svc.mirror.entries.values()} == {grp}
        fit, n_obs = svc.mirror.group_fit("ns", grp)
        assert fit is not None and n_obs == decisions.count("explore")
        # a wrong answer starts another group; a restarted replica reads the group fits back
        res = await svc.lookup("ns", "q#99", policy="static", threshold=0.5)
        fb = await svc.feedback(res.lookup_id, "B")
        assert fb.correct is False and svc.mirror.get("ns", fb.stored_entry_id or "").group_id != grp  # type: ignore[union-attr]
        again = await _service(clean_redis)
        try:
            assert again.mirror.group_fit("ns", grp)[1] == n_obs + 1  # the wrong one counts too
        finally:
            await again.close()
    finally:
        await svc.close()


async def test_scores_carry_the_contrast_and_a_changed_weight_starts_afresh(clean_redis: str) -> None:
    svc = await _service(clean_redis, min_obs=3, use_prior=False, contrast_weight=0.5)
    try:
        await svc.store("ns", "q", "A")
        await svc.store("ns", "other", "B")  # another answer: every lookup of q#i has a competitor
        decisions = []
        for i in range(1, 40):
            res = await svc.lookup("ns", f"q#{i}", max_error=0.2)
            decisions.append(res.decision)
            rec = await svc.main.hgetall(svc.keys.lookup(res.lookup_id))
            competitor = svc.mirror.competitor("ns", "", await svc.embed(f"q#{i}"), res_group(svc, res))
            # the policy's score is the similarity minus 0.5 x the competitor's (as recorded for feedback)
            assert float(rec[b"x"]) == pytest.approx(
                float(rec[b"s"]) - 0.5 * max(competitor or 0, 0), abs=2e-6
            )
            if res.decision != "exploit":
                await svc.feedback(res.lookup_id, "A")
        assert "exploit" in decisions
        grp = res_group(svc, res)
        fit, n_obs = svc.mirror.group_fit("ns", grp)
        assert fit is not None and fit.contrast == 0.5 and n_obs == decisions.count("explore")
    finally:
        await svc.close()
    # a replica configured with another weight neither uses those fits nor mixes in their observations
    other = await _service(clean_redis, min_obs=3, use_prior=False, contrast_weight=0.0)
    try:
        entry = other.mirror.get("ns", next(e.id for e in other.mirror.entries.values() if e.group_id == grp))
        assert entry is not None and other.fit_for(entry) is None
        res = await other.lookup("ns", "q#77", max_error=0.2)
        assert res.decision == "explore"
        assert (await other.feedback(res.lookup_id, "A")).observations == 1
    finally:
        await other.close()


def res_group(svc: CacheService, res: object) -> str:
    """Answer group of the entry a lookup result names."""
    entry = svc.mirror.get("ns", res.entry_id)  # type: ignore[attr-defined]
    assert entry is not None
    return entry.group_id


async def test_lineage_groups_ttl_and_cleanup(clean_redis: str) -> None:
    svc = await _service(clean_redis, group_by="lineage", use_prior=False)
    r = _raw(clean_redis)
    try:
        root = (await svc.store("lg", "q", "A", ttl_s=30)).entry_id or ""
        res = await svc.lookup("lg", "q#1")
        fb = await svc.feedback(res.lookup_id, "A")
        child = fb.stored_entry_id or ""
        assert svc.mirror.get("lg", child).group_id == root  # type: ignore[union-attr]
        # the group's keys live as long as their longest-lived member (30 s here; the child has no TTL)
        gkey, okey = svc.keys.group("lg", root), svc.keys.group_obs("lg", root)
        assert await r.ttl(gkey) == -1 and await r.ttl(okey) == -1 and await r.llen(okey) == 1
        res = await svc.lookup("lg", "q#2", policy="static", threshold=0.5)
        fb = await svc.feedback(res.lookup_id, "B")
        other = fb.stored_entry_id or ""
        assert svc.mirror.get("lg", other).group_id == other  # type: ignore[union-attr]
        ttl_only = (await svc.store("lg", "z", "Z", ttl_s=30)).entry_id or ""
        assert 0 < await r.ttl(svc.keys.group("lg", ttl_only)) <= 30
        # deleting the last member removes the group
        assert await svc.delete_entry("lg", root) and await r.exists(gkey)
        assert await svc.delete_entry("lg", child) and not await r.exists(gkey) and not await r.exists(okey)
    finally:
        await r.aclose()
        await svc.close()


async def test_auth_key_store_and_quota_share_the_cache_redis(clean_redis: str) -> None:
    """The gateway's key store and quota buckets use the same DOWSE_REDIS_URL, a cluster included."""
    from types import SimpleNamespace

    from services.app import _auth_redis
    from services.keys import KeyStore
    from services.quota import Limiter

    r = _auth_redis(SimpleNamespace(redis_url=clean_redis))
    try:
        store = KeyStore(r)
        key, rec = await store.create("ci", ["search:*"])
        assert (await store.get(rec.id)) is not None and await store.enabled()
        limiter = Limiter(r, op_timeout_s=1.0)
        waits = [await limiter.take(rec.id, "requests", rate=1.0, burst=2.0) for _ in range(3)]
        assert waits[:2] == [0.0, 0.0] and waits[2] > 0
        assert limiter._down_until == 0.0  # answered by the Redis script, not the local fallback
    finally:
        await r.aclose()
