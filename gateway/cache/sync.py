"""Keeps the in-process mirror equal to Redis: rebuild on start / reconnect, then follow the change stream.

Every write goes to Redis together with an event on one stream (``put``, ``del``, ``fit``, ``prior``,
``nsdel``) in the same MULTI block; every replica applies its own writes at once and the others' from the
stream. Replaying an event is idempotent, so a rebuild can start tailing from an id taken before its scan.
On a Redis Cluster each namespace has its own stream (on its own slot); a replica polls them all with one
pipelined round per node every ``poll_s`` (a blocking read cannot span slots) and picks up namespaces that
appear in the namespace set, reading a new namespace's stream from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from gateway.cache.mirror import Mirror, MirrorEntry
from gateway.cache.redis_client import make_client
from gateway.cache.store import (
    ENTRY_MIRROR_FIELDS,
    Keys,
    _s,
    decode_fit,
    entry_from_fields,
    event_to_dict,
)
from gateway.cache.writes import CacheWrites

log = logging.getLogger(__name__)


_ERRORS = (RedisError, OSError, asyncio.TimeoutError, ConnectionError)
_BLOCK_MS = 1000


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait (bounded) for it to end."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(task), 5.0)


class MirrorSync(CacheWrites):
    """Owner of the mirror and of the background tasks that keep it in sync."""

    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        exact_max: int,
        ef_search: int,
        interval_s: float = 0.25,
        poll_s: float = 0.05,
    ):
        self.keys = keys
        self.exact_max = exact_max
        self.ef_search = ef_search
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.mirror = Mirror(exact_max=exact_max, ef_search=ef_search)
        timeout = 1.0 if keys.cluster else _BLOCK_MS / 1000 + 5
        self.client: Any = make_client(redis_url, keys.cluster, timeout, 1.0)
        self.ok = False
        self.rebuilds = 0
        self.last_ids: dict[str, str] = {}  # stream key -> id of the last event applied
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
                await _stop(task)
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
            await _stop(self._tail)
        k, r = self.keys, self.client
        if k.cluster:
            names = sorted(_s(n) for n in await r.smembers(k.namespaces))
            streams = [k.stream(ns) for ns in names]
        else:
            streams, names = [k.stream("")], []
        start_ids: dict[str, str] = {}
        for key in streams:  # before the scan: events from here on are replayed (idempotent)
            last = await r.xrevrange(key, count=1)
            start_ids[key] = _s(last[0][0]) if last else "0-0"
        if not k.cluster:
            names = [_s(n) for n in await r.smembers(k.namespaces)]
        fresh = Mirror(exact_max=self.exact_max, ef_search=self.ef_search)
        for ns in names:
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
        self.last_ids = start_ids
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
        me = asyncio.current_task()
        try:
            while True:
                if me is not None and me.cancelling():  # redis-py can swallow a cancellation
                    raise asyncio.CancelledError
                if not self.keys.cluster:
                    resp = await self.client.xread(self.last_ids, count=512, block=_BLOCK_MS)
                    self._apply_read(resp)
                elif not await self._poll_cluster():
                    await asyncio.sleep(self.poll_s)
        except asyncio.CancelledError:
            raise
        except _ERRORS as exc:
            if self.ok:
                log.warning("cache: change stream lost (%s)", exc)
            self.mark_down()

    def _apply_read(self, resp: Any) -> int:
        n = 0
        for stream, events in resp or []:
            for event_id, fields in events:
                self.apply(event_to_dict(fields))
                self.last_ids[_s(stream)] = _s(event_id)
                n += 1
        return n

    async def _poll_cluster(self) -> bool:
        """One round over every namespace's stream; True when a stream may hold more events."""
        k, r = self.keys, self.client
        names = {_s(n) for n in await r.smembers(k.namespaces)}
        tailed = {k.stream(ns): ns for ns in names}
        for key in tailed:
            self.last_ids.setdefault(key, "0-0")  # a namespace created since: its whole stream
        for key in [key for key in self.last_ids if key not in tailed]:
            del self.last_ids[key]  # deleted namespace (its nsdel may have been trimmed away)
        for ns in {ns for (ns, _) in self.mirror.entries} - names:
            self.apply({"op": "nsdel", "ns": ns})
        if not tailed:
            return False
        pipe = r.pipeline(transaction=False)
        keys = list(tailed)
        for key in keys:
            pipe.xread({key: self.last_ids[key]}, count=512)
        full = False
        for resp in await pipe.execute():
            full |= self._apply_read(resp) >= 512
        return full

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
