"""The cache on a real loopback Redis Cluster (3 masters + 3 replicas) losing a master.

Lookups fail open (a miss within 50 ms) until the master's replica takes over, then hit again; every store
acknowledged with ``store_replicas=1`` (WAIT: a replica confirmed it) survives the failover.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.crc import key_slot

from gateway.cache.service import CacheConfig, CacheService
from tests.integration.cache_helpers import HashEmbedder, RedisClusterProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _slot(key: str) -> int:
    return key_slot(key.encode())  # CRC16 of the hash tag


async def test_master_killed_lookups_fail_open_then_hit_and_acked_stores_survive(tmp_path: Path) -> None:
    cluster = RedisClusterProcess(tmp_path, 18620)
    svc: CacheService | None = None
    try:
        cluster.start()
        cfg = CacheConfig(store_replicas=1, store_replicas_timeout_ms=2000)
        svc = CacheService(cluster.url, HashEmbedder(), cfg, seed=0)  # type: ignore[arg-type]
        await svc.start()
        assert svc.cluster and svc.redis_ok
        # namespaces spread over the masters; each one's keys share one slot
        masters = {cluster.master_of_slot(_slot(svc.keys.ids(f"ns{i}"))) for i in range(12)}
        assert len(masters) == 3
        k = svc.keys
        assert _slot(k.ids("ns0")) == _slot(k.entry("ns0", "x")) == _slot(k.stream("ns0"))
        victim_ns = "ns0"
        victim = cluster.master_of_slot(_slot(svc.keys.ids(victim_ns)))
        acked: dict[str, str] = {}
        for i in range(30):
            st = await svc.store(victim_ns, f"q{i}", f"a{i}")
            assert st.stored and st.entry_id, st  # WAIT 1: a replica holds it
            acked[st.entry_id] = f"a{i}"
        # asking for more replicas than exist is answered honestly: written, not acknowledged
        over = await svc.store("ns1", "p", "r", ttl_s=None)
        assert over.stored
        svc.config.store_replicas = 2
        short = await svc.store("ns1", "p2", "r2")
        assert not short.stored and short.degraded == "replicated to 1 of 2 replicas"
        svc.config.store_replicas = 1
        assert (await svc.lookup(victim_ns, "q3#1", policy="static", threshold=0.9)).hit

        cluster.kill(victim)
        t_kill = time.perf_counter()
        slow: list[float] = []
        misses = 0
        while True:
            t0 = time.perf_counter()
            res = await svc.lookup(victim_ns, "q3#1", policy="static", threshold=0.9)
            took = time.perf_counter() - t0
            if res.hit:
                break
            misses += 1
            # fail open: the 40 ms Redis budget plus scheduling; 50 ms is the promise
            if took > 0.05:
                slow.append(took)
            assert time.perf_counter() - t_kill < 30, "no failover within 30 s"
            await asyncio.sleep(0.02)
        recovered_s = time.perf_counter() - t_kill
        assert misses > 0 and not slow, (misses, slow)
        assert res.response == "a3"
        # the replica took over: every acknowledged store is there, in Redis and in the mirror
        assert cluster.master_of_slot(_slot(svc.keys.ids(victim_ns))) != victim
        vals = await svc.main.hmget(svc.keys.entry(victim_ns, next(iter(acked))), ["response"])
        assert vals[0] is not None
        for eid, resp in acked.items():
            assert (await svc.main.hget(svc.keys.entry(victim_ns, eid), "response")).decode() == resp
            entry = svc.mirror.get(victim_ns, eid)
            assert entry is not None and entry.response == resp
        assert await svc.main.zcard(svc.keys.ids(victim_ns)) == len(acked)
        # the promoted master has no replica yet: a store is written but not acknowledged ...
        st = await svc.store(victim_ns, "after", "failover")
        assert not st.stored and st.degraded == "replicated to 0 of 1 replicas"
        # ... until the killed node comes back (as the new master's replica)
        cluster.restart(victim)
        deadline = time.time() + 20
        while not (st := await svc.store(victim_ns, "after", "restart")).stored:
            assert time.time() < deadline, st
            await asyncio.sleep(0.2)
    finally:
        if svc is not None:
            await svc.close()
        cluster.stop()
    print(f"recovered after {recovered_s:.1f} s, {misses} fail-open misses")
