"""Token buckets: the Redis script (shared by every limiter on the same Redis) and the local fallback."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from services.quota import Limiter, LocalBucket, retry_after
from tests.conftest import REDIS_URL

pytestmark = [pytest.mark.timeout(60)]


async def test_redis_bucket_is_shared_between_limiters() -> None:
    """Two limiters (two replicas) on one Redis: 10 tokens in total, not 10 each."""
    r1, r2 = aioredis.Redis.from_url(REDIS_URL), aioredis.Redis.from_url(REDIS_URL)
    await r1.delete("dowse:quota:k1:requests")
    a, b = Limiter(r1), Limiter(r2)
    waits = [await (a if i % 2 else b).take("k1", "requests", 10.0, None) for i in range(14)]
    passed = sum(1 for w in waits if w == 0)
    # 10 tokens of burst + the refill while 14 calls run (well under 100 ms: at most one more token)
    assert 10 <= passed <= 11, waits
    refused = [w for w in waits if w > 0]
    assert refused and all(0 < w <= 0.1 + 1e-9 for w in refused)  # one token at 10/s: <= 100 ms
    assert retry_after(refused[0]) == "1"
    time.sleep(0.35)
    assert await a.take("k1", "requests", 10.0, None) == 0  # refilled
    await r1.aclose()
    await r2.aclose()


async def test_big_cost_fits_once_then_waits() -> None:
    """A batch larger than the burst passes on a full bucket and is paid back by waiting."""
    r = aioredis.Redis.from_url(REDIS_URL)
    await r.delete("dowse:quota:k2:texts")
    lim = Limiter(r)
    assert await lim.take("k2", "texts", 100.0, None, cost=250) == 0
    wait = await lim.take("k2", "texts", 100.0, None, cost=1)
    assert 1.4 <= wait <= 1.6  # 150 tokens of debt + 1 at 100/s
    await r.aclose()


async def test_redis_down_falls_back_to_a_local_bucket() -> None:
    """Redis unreachable: the same limit holds in this process (neither unlimited nor closed)."""
    down = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.05)
    lim = Limiter(down)
    t0 = time.monotonic()
    waits = [await lim.take("k3", "requests", 5.0, None) for _ in range(8)]
    assert sum(1 for w in waits if w == 0) == 5
    assert time.monotonic() - t0 < 1.0  # one failed connect, then local for down_s
    await down.aclose()


def test_local_bucket_refills_at_rate() -> None:
    b = LocalBucket(20.0, 2.0)
    assert b.take(1) == 0 and b.take(1) == 0 and b.take(1) > 0
    time.sleep(0.11)
    assert b.take(1) == 0
