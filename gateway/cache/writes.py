"""Writes of the cache: every one is a MULTI on the namespace's slot carrying its change-stream event."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np

from gateway.cache.mirror import Mirror, MirrorEntry
from gateway.cache.policy import ThresholdFit
from gateway.cache.store import Keys, _s, encode_fit

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


class CacheWrites:
    """Write half of :class:`gateway.cache.sync.MirrorSync`: Redis first, then this replica's mirror."""

    keys: Keys
    mirror: Mirror

    def _xadd(self, pipe: Any, fields: dict[str, Any], maxlen: int = 1_000_000) -> None:
        pipe.xadd(self.keys.stream(fields["ns"]), fields, maxlen=maxlen, approximate=True)

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
        if k.cluster:  # the namespace set has its own slot: registered first, outside the MULTI
            await r.sadd(k.namespaces, ns)
        pipe = r.pipeline(transaction=True)
        pipe.hset(k.entry(ns, eid), mapping=fields)
        if ttl_s:
            pipe.expire(k.entry(ns, eid), ttl_s)
        pipe.eval(GROUP_TTL, 2, k.group(ns, grp), k.group_obs(ns, grp), "1", str(1000 * (ttl_s or 0)))
        pipe.zadd(k.ids(ns), {eid: now})
        if not k.cluster:
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
        self._xadd(pipe, {"op": "del", "ns": ns, "id": eid})
        res = await pipe.execute()
        was_mirrored = self.mirror.remove(ns, eid)
        return bool(res[1]) or was_mirrored

    async def delete_namespace(self, r: Any, ns: str) -> int:
        """Delete every key of a namespace; returns the number of entries it held."""
        k = self.keys
        count = int(await r.zcard(k.ids(ns)))
        batch: list[str] = []
        stream = k.stream(ns)
        async for key in r.scan_iter(match=f"{k.ns(ns)}:*", count=1000):
            name = _s(key)
            if name != stream:  # a cluster's per-namespace stream is kept, trimmed, to carry the nsdel
                batch.append(name)
            if len(batch) >= 500:
                await r.unlink(*batch)
                batch = []
        pipe = r.pipeline(transaction=True)
        if batch:
            pipe.execute_command("UNLINK", *batch)  # one slot: the cluster client would split it
        if k.cluster:
            pipe.xtrim(stream, maxlen=0)
        else:
            pipe.srem(k.namespaces, ns)
        self._xadd(pipe, {"op": "nsdel", "ns": ns})
        await pipe.execute()
        if k.cluster:
            await r.srem(k.namespaces, ns)
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
        self._xadd(pipe, {"op": "fit", "ns": ns, "grp": grp, "fit": payload, "nobs": str(n_obs)})
        await pipe.execute()
        self.mirror.set_fit(ns, grp, fit, n_obs)

    async def publish_prior(self, r: Any, ns: str, fit: ThresholdFit) -> None:
        """Persist a namespace's pooled fit and tell the other replicas."""
        k = self.keys
        payload = encode_fit(fit)
        pipe = r.pipeline(transaction=True)
        pipe.set(k.prior(ns), payload)
        self._xadd(pipe, {"op": "prior", "ns": ns, "fit": payload})
        await pipe.execute()
        self.mirror.priors[ns] = fit
