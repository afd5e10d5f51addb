"""Per-key token buckets in Redis (one Lua script, Redis clock), with a per-process fallback.

A bucket holds up to ``burst`` tokens (default: one second's worth, ``rate``) and refills at ``rate``
tokens/s. A request of cost ``c`` passes when the bucket holds ``min(c, burst)`` tokens and then takes
``c`` (the bucket may go negative: a big batch is paid back by waiting, instead of never fitting). The
script reads the time from Redis, so replicas with skewed clocks share one bucket correctly.

If Redis fails, this process uses a local bucket of the same rate for ``down_s`` before trying Redis
again: each replica then enforces the limit on its own (N replicas: up to N x the rate), which is
neither failing closed (every request refused) nor unlimited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

log = logging.getLogger(__name__)

BUCKET_PREFIX = "dowse:quota"

# KEYS[1] bucket; ARGV rate, burst, cost. Returns {allowed 0/1, wait_ms}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
local need = math.min(cost, burst)
local allowed = 0
local wait = 0
if tokens >= need then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((need - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst + cost) * 1000 / rate) + 1000)
return {allowed, wait}
"""


class LocalBucket:
    """The same bucket, in this process only (the fallback while Redis is down)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.ts = burst, time.monotonic()

    def take(self, cost: float) -> float:
        """0 if allowed (tokens taken), else seconds to wait."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.ts) * self.rate)
        self.ts = now
        need = min(cost, self.burst)
        if self.tokens >= need:
            self.tokens -= cost
            return 0.0
        return (need - self.tokens) / self.rate


class Limiter:
    """``take(key_id, kind, rate, burst, cost)`` -> 0 or the seconds to wait (for Retry-After)."""

    def __init__(self, redis: Any | None, *, op_timeout_s: float = 0.1, down_s: float = 1.0) -> None:
        self.redis = redis
        self.op_timeout_s, self.down_s = op_timeout_s, down_s
        self._script: Any = redis.register_script(_SCRIPT) if redis is not None else None
        self._down_until = 0.0
        self._local: dict[tuple[str, str], LocalBucket] = {}

    async def take(
        self, key_id: str, kind: str, rate: float, burst: float | None, cost: float = 1.0
    ) -> float:
        """Take ``cost`` tokens from the key's ``kind`` bucket (``requests`` or ``texts``)."""
        burst = burst if burst is not None else max(rate, 1.0)
        if self._script is not None and time.monotonic() >= self._down_until:
            try:
                allowed, wait_ms = await asyncio.wait_for(
                    self._script(keys=[f"{BUCKET_PREFIX}:{key_id}:{kind}"], args=[rate, burst, cost]),
                    self.op_timeout_s,
                )
                return 0.0 if int(allowed) else max(int(wait_ms), 1) / 1000.0
            except Exception as exc:
                log.warning(
                    "quota: Redis unavailable (%s); local buckets for %.0f s", type(exc).__name__, self.down_s
                )
                self._down_until = time.monotonic() + self.down_s
        bucket = self._local.get((key_id, kind))
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._local[(key_id, kind)] = LocalBucket(rate, burst)
        return bucket.take(cost)


def retry_after(wait_s: float) -> str:
    """Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
