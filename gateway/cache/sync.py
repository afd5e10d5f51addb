"""Keeps the in-process mirror equal to Redis: rebuild on start / reconnect, then follow the change stream.

Every write goes to Redis together with an event on one stream (``put``, ``del``, ``fit``, ``prior``,
``nsdel``) in the same MULTI block; every replica applies its own writes at once and the others' from the
stream. Replaying an event is idempotent, so a rebuild can start tailing from an id taken before its scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.cache.mirror import Mirror, MirrorEntry
from gateway.cache.policy import ThresholdFit
from gateway.cache.store import (
    ENTRY_MIRROR_FIELDS,
    Keys,
    decode_fit,
    encode_fit,
    entry_from_fields,
    event_to_dict,
)

log = logging.getLogger(__name__)
_ERRORS = (RedisError, OSError, asyncio.TimeoutError, ConnectionError)
_BLOCK_MS = 1000
# group hash exists while it has members: only then record the fit (HSET would recreate it without a TTL)
_SET_FIT_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], 'fit', ARGV[1], 'nobs', ARGV[2])
  return 1
end
return 0
"""
# KEYS: group hash, group observations; ARGV: members increment, member TTL in ms (0 = none).
# The group lives as long as its longest-lived member; a member without TTL makes it permanent.
GROUP_TTL = """
if tonumber(ARGV[1]) ~= 0 then redis.call('hincrby', KEYS[1], 'members', tonumber(ARGV[1])) end
local ttl = tonumber(ARGV[2])
if ttl <= 0 then
  redis.call('hset', KEYS[1], 'forever', '1')
  redis.call('persist', KEYS[1])
  redis.call('persist', KEYS[2])
elseif redis.call('exists', KEYS[1]) == 1 and redis.call('hget', KEYS[1], 'forever') ~= '1' then
  for _, k in ipairs(KEYS) do
    local cur = redis.call('pttl', k)
    if cur ~= -2 and cur < ttl then redis.call('pexpire', k, ttl) end
  end
end
return 1
"""
# KEYS: entry hash; ARGV: namespace key prefix. Deletes the entry and, with its last member, its group.
_DROP_ENTRY = """
local g = redis.call('hget', KEYS[1], 'grp')
local n = redis.call('unlink', KEYS[1])
if g and g ~= '' then
  local gk = ARGV[1] .. ':g:' .. g
  if redis.call('exists', gk) == 1 and redis.call('hincrby', gk, 'members', -1) <= 0 then
    redis.call('unlink', gk, ARGV[1] .. ':go:' .. g, ARGV[1] .. ':gs:' .. g)
  end
end
return n
"""


class MirrorSync:
    """Owner of the mirror and of the background tasks that keep it in sync."""

    def __init__(self, redis_url: str, keys: Keys, exact_max: int, ef_search: int, interval_s: float = 0.25):
        self.keys = keys
        self.exact_max = exact_max
        self.ef_search = ef_search
        self.interval_s = interval_s
        self.mirror = Mirror(exact_max=exact_max, ef_search=ef_search)
        self.client: Any = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=_BLOCK_MS / 1000 + 5,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.ok = False
        self.rebuilds = 0
        self.last_id = "0-0"
        self._tail: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._suspect = False
        self.on_reconnect: Callable[[], None] | None = None
        self.on_nsdel: Callable[[str], None] | None = None  # another replica deleted a namespace

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Try one rebuild now; keep retrying in the background while Redis is down."""
        try:
            await self._rebuild()
        except _ERRORS as exc:
            log.warning("cache: Redis unavailable at start (%s); serving misses until it is back", exc)
            self.ok = False
        self._health = asyncio.create_task(self._health_loop(), name="cache-redis-health")

    async def close(self) -> None:
        """Cancel background tasks, close the connection."""
        for task in (self._health, self._tail):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def mark_down(self) -> None:
        """Record an outage; the health loop reconnects and rebuilds."""
        self.ok = False
        self._wake.set()

    def suspect(self) -> None:
        """A command failed: let the health loop check with a PING (a slow reply is not an outage)."""
        self._suspect = True
        self._wake.set()

    async def _health_loop(self) -> None:
        while True:
            if self.ok and self._tail is not None and self._tail.done():
                self.mark_down()
            if self.ok and self._suspect:
                self._suspect = False
                try:
                    await asyncio.wait_for(self.client.ping(), 0.5)
                except _ERRORS:
                    log.warning("cache: Redis does not answer; degrading until it is back")
                    self.ok = False
            if not self.ok:
                try:
                    await asyncio.wait_for(self.client.ping(), 1.0)
                    await self._rebuild()
                    log.info("cache: Redis is back; mirror rebuilt with %d entries", self.mirror.count())
                except _ERRORS:
                    pass
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    async def _rebuild(self) -> None:
        """Load every namespace into a fresh mirror, swap it in, tail the stream from before the scan."""
        if self._tail is not None:
            self._tail.cancel()
            with contextlib.suppress(BaseException):
                await self._tail
        k, r = self.keys, self.client
        last = await r.xrevrange(k.stream, count=1)
        start_id = last[0][0].decode() if last else "0-0"
        fresh = Mirror(exact_max=self.exact_max, ef_search=self.ef_search)
        for raw_ns in await r.smembers(k.namespaces):
            ns = raw_ns.decode()
            prior = decode_fit(await r.get(k.prior(ns)))
            if prior is not None:
                fresh.priors[ns] = prior
            ids = [i.decode() for i in await r.zrange(k.ids(ns), 0, -1)]
            gone: list[str] = []
            for lo in range(0, len(ids), 1000):
                chunk = ids[lo : lo + 1000]
                pipe = r.pipeline(transaction=False)
                for eid in chunk:
                    pipe.hmget(k.entry(ns, eid), list(ENTRY_MIRROR_FIELDS))
                for eid, vals in zip(chunk, await pipe.execute(), strict=True):
                    built = entry_from_fields(ns, eid, vals)
                    if built is None:
                        gone.append(eid)
                    else:
                        fresh.put(*built)
            if gone:  # expired entries leave their id behind in the sorted set
                await r.zrem(k.ids(ns), *gone)
            await self._load_fits(fresh, ns)
        self.mirror = fresh
        self.last_id = start_id
        if (
            self.on_reconnect is not None
        ):  # the service swaps in fresh clients (old pools died with the server)
            self.on_reconnect()
        self.rebuilds += 1
        self.ok = True
        self._tail = asyncio.create_task(self._tail_loop(), name="cache-stream-tail")

    async def _load_fits(self, fresh: Mirror, ns: str) -> None:
        """Read the fits of the answer groups of ``ns``'s mirrored entries."""
        k, r = self.keys, self.client
        groups = sorted({e.group_id for (n, _), e in fresh.entries.items() if n == ns})
        for lo in range(0, len(groups), 1000):
            chunk = groups[lo : lo + 1000]
            pipe = r.pipeline(transaction=False)
            for grp in chunk:
                pipe.hmget(k.group(ns, grp), ["fit", "nobs"])
            for grp, (fit, nobs) in zip(chunk, await pipe.execute(), strict=True):
                if fit:
                    fresh.set_fit(ns, grp, decode_fit(fit), int(nobs or b"0"))

    async def _tail_loop(self) -> None:
        try:
            while True:
                resp = await self.client.xread({self.keys.stream: self.last_id}, count=512, block=_BLOCK_MS)
                for _stream, events in resp or []:
                    for event_id, fields in events:
                        self.apply(event_to_dict(fields))
                        self.last_id = event_id.decode()
        except asyncio.CancelledError:
            raise
        except _ERRORS as exc:
            if self.ok:
                log.warning("cache: change stream lost (%s)", exc)
            self.mark_down()

    # ------------------------------------------------------------ events
    def apply(self, ev: dict[str, Any]) -> None:
        """Apply one change event to the mirror (idempotent)."""
        op, ns = ev.get("op"), ev.get("ns", "")
        m = self.mirror
        if op == "put":
            if m.get(ns, ev["id"]) is None:
                entry = MirrorEntry(
                    ev["id"],
                    ns,
                    ev.get("scope", ""),
                    ev["resp"],
                    float(ev.get("exp", 0) or 0),
                    ttl_s=int(ev.get("ttl", 0) or 0),
                    group=ev.get("grp", ""),
                )
                m.put(entry, np.frombuffer(ev["emb"], dtype=np.float32).copy())
        elif op == "del":
            m.remove(ns, ev["id"])
        elif op == "fit" and "grp" in ev:
            m.set_fit(ns, ev["grp"], decode_fit(ev.get("fit")), int(ev.get("nobs", 0)))
        elif op == "exp":
            touched = m.get(ns, ev["id"])
            if touched is not None:
                touched.expires_at = float(ev.get("exp", 0) or 0)
        elif op == "prior":
            fit = decode_fit(ev.get("fit"))
            if fit is not None:
                m.priors[ns] = fit
        elif op == "nsdel":
            m.drop_namespace(ns)
            if self.on_nsdel is not None:
                self.on_nsdel(ns)

    def _xadd(self, pipe: Any, fields: dict[str, Any], maxlen: int) -> None:
        pipe.xadd(self.keys.stream, fields, maxlen=maxlen, approximate=True)

    # ------------------------------------------------------------ writes
    async def write_entry(
        self,
        r: Any,
        ns: str,
        vec: np.ndarray,
        prompt: str,
        response: str,
        scope: str,
        metadata: dict[str, Any] | None,
        ttl_s: int | None,
        config: Any,
        group: str | None = None,
    ) -> tuple[str, int]:
        """Write an entry durably (MULTI) into answer group ``group`` (None: its own), mirror it, evict."""
        k = self.keys
        eid = uuid.uuid4().hex
        grp = group or eid
        now = time.time()
        expires = now + ttl_s if ttl_s else 0.0
        emb = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
        fields: dict[str, Any] = {
            "prompt": prompt,
            "response": response,
            "scope": scope,
            "emb": emb,
            "created": f"{now:.6f}",
            "expires": f"{expires:.6f}",
            "ttl": str(ttl_s or 0),
            "meta": json.dumps(metadata or {}, default=str),
            "grp": grp,
        }
        pipe = r.pipeline(transaction=True)
        pipe.hset(k.entry(ns, eid), mapping=fields)
        if ttl_s:
            pipe.expire(k.entry(ns, eid), ttl_s)
        pipe.eval(GROUP_TTL, 2, k.group(ns, grp), k.group_obs(ns, grp), "1", str(1000 * (ttl_s or 0)))
        pipe.zadd(k.ids(ns), {eid: now})
        pipe.sadd(k.namespaces, ns)
        pipe.hincrby(k.stats(ns), "stores", 1)
        event = {"op": "put", "ns": ns, "id": eid, "scope": scope, "emb": emb, "resp": response, "grp": grp}
        event["exp"] = f"{expires:.6f}"
        event["ttl"] = str(ttl_s or 0)
        self._xadd(pipe, event, config.stream_maxlen)
        pipe.zcard(k.ids(ns))
        res = await pipe.execute()
        self.mirror.put(
            MirrorEntry(eid, ns, scope, response, expires, ttl_s=ttl_s or 0, group=grp),
            np.frombuffer(emb, np.float32).copy(),
        )
        size = int(res[-1])
        evicted = 0
        if size > config.max_entries:
            evicted = await self._evict(r, ns, size - config.max_entries, config)
        return eid, evicted

    async def _evict(self, r: Any, ns: str, count: int, config: Any) -> int:
        k = self.keys
        popped = await r.zpopmin(k.ids(ns), count)
        pipe = r.pipeline(transaction=True)
        ids = [m.decode() for m, _score in popped]
        for eid in ids:
            pipe.eval(_DROP_ENTRY, 1, k.entry(ns, eid), k.ns(ns))
            self._xadd(pipe, {"op": "del", "ns": ns, "id": eid}, config.stream_maxlen)
        pipe.hincrby(k.stats(ns), "evictions", len(ids))
        await pipe.execute()
        for eid in ids:
            self.mirror.remove(ns, eid)
        return len(ids)

    async def delete_entry(self, r: Any, ns: str, eid: str) -> bool:
        """Delete one entry everywhere; False if it was not stored."""
        k = self.keys
        pipe = r.pipeline(transaction=True)
        pipe.zrem(k.ids(ns), eid)
        pipe.eval(_DROP_ENTRY, 1, k.entry(ns, eid), k.ns(ns))
        pipe.xadd(k.stream, {"op": "del", "ns": ns, "id": eid}, maxlen=1_000_000, approximate=True)
        res = await pipe.execute()
        was_mirrored = self.mirror.remove(ns, eid)
        return bool(res[1]) or was_mirrored

    async def delete_namespace(self, r: Any, ns: str) -> int:
        """Delete every key of a namespace; returns the number of entries it held."""
        k = self.keys
        count = int(await r.zcard(k.ids(ns)))
        batch: list[str] = []
        async for key in r.scan_iter(match=f"{k.ns(ns)}:*", count=1000):
            batch.append(key.decode() if isinstance(key, bytes) else key)
            if len(batch) >= 500:
                await r.unlink(*batch)
                batch = []
        pipe = r.pipeline(transaction=True)
        if batch:
            pipe.unlink(*batch)
        pipe.srem(k.namespaces, ns)
        pipe.xadd(k.stream, {"op": "nsdel", "ns": ns}, maxlen=1_000_000, approximate=True)
        await pipe.execute()
        mirrored = self.mirror.drop_namespace(ns)
        return max(count, mirrored)

    def touch(self, pipe: Any, entry: MirrorEntry, config: Any) -> None:
        """Queue a TTL refresh of ``entry`` on ``pipe`` (refresh_ttl_on_hit)."""
        k = self.keys
        ttl = entry.ttl_s
        if ttl <= 0:
            return
        expires = time.time() + ttl
        pipe.expire(k.entry(entry.namespace, entry.id), ttl)
        grp = entry.group_id
        pipe.eval(
            GROUP_TTL,
            2,
            k.group(entry.namespace, grp),
            k.group_obs(entry.namespace, grp),
            "0",
            str(1000 * ttl),
        )
        pipe.hset(k.entry(entry.namespace, entry.id), "expires", f"{expires:.6f}")
        self._xadd(
            pipe,
            {"op": "exp", "ns": entry.namespace, "id": entry.id, "exp": f"{expires:.6f}"},
            config.stream_maxlen,
        )
        entry.expires_at = expires

    async def publish_fit(self, r: Any, ns: str, grp: str, fit: ThresholdFit | None, n_obs: int) -> None:
        """Persist an answer group's refitted parameters and tell the other replicas."""
        k = self.keys
        payload = encode_fit(fit)
        pipe = r.pipeline(transaction=True)
        pipe.eval(_SET_FIT_IF_EXISTS, 1, k.group(ns, grp), payload, str(n_obs))
        pipe.xadd(
            k.stream,
            {"op": "fit", "ns": ns, "grp": grp, "fit": payload, "nobs": str(n_obs)},
            maxlen=1_000_000,
            approximate=True,
        )
        await pipe.execute()
        self.mirror.set_fit(ns, grp, fit, n_obs)

    async def publish_prior(self, r: Any, ns: str, fit: ThresholdFit) -> None:
        """Persist a namespace's pooled fit and tell the other replicas."""
        k = self.keys
        payload = encode_fit(fit)
        pipe = r.pipeline(transaction=True)
        pipe.set(k.prior(ns), payload)
        pipe.xadd(k.stream, {"op": "prior", "ns": ns, "fit": payload}, maxlen=1_000_000, approximate=True)
        await pipe.execute()
        self.mirror.priors[ns] = fit
