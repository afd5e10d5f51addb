"""Redis clients of the cache: one Redis or a Redis Cluster, chosen by the URL or a flag.

``DOWSE_REDIS_URL=redis+cluster://host:port`` (or ``rediss+cluster://``), or any ``redis://`` URL together
with ``DOWSE_REDIS_CLUSTER=1``, names a Redis Cluster: the URL is one seed node, the client discovers the
rest (``CLUSTER SLOTS``) and follows failovers (``MOVED``). Every client fails fast (no retries): the
lookup path has a 40 ms budget and degrades to a miss rather than wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str, flag: bool = False) -> bool:
    """True when ``url`` (or the explicit flag) names a Redis Cluster."""
    return flag or url.split("://", 1)[0].lower() in _SCHEMES


def plain_url(url: str) -> str:
    """The URL with a ``+cluster`` scheme turned into the scheme redis-py parses."""
    scheme, sep, rest = url.partition("://")
    return _SCHEMES.get(scheme.lower(), scheme) + sep + rest


def make_client(url: str, cluster: bool, timeout: float | None, connect_timeout: float | None = None) -> Any:
    """An asyncio client (``Redis`` or ``RedisCluster``) with no retries and the given socket timeout."""
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout if connect_timeout is not None else max(timeout or 0, 0.5),
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if cluster:
        # a cluster has db 0 only; the URL's path must not carry another
        return RedisCluster.from_url(plain_url(url), **kwargs)
    return aioredis.Redis.from_url(plain_url(url), **kwargs)


def make_sync_client(url: str, cluster: bool, timeout: float) -> Any:
    """A blocking client (``redis.Redis`` or ``redis.cluster.RedisCluster``) for CLI one-offs."""
    import redis
    from redis.cluster import RedisCluster as SyncCluster

    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if cluster:
        return SyncCluster.from_url(plain_url(url), **kwargs)
    return redis.Redis.from_url(plain_url(url), **kwargs)


class ReplicaWaiter:
    """Confirms that a master's replicas hold a write (``WAIT``) before a store is acknowledged.

    ``WAIT`` counts replicas that reached the replication offset of the *calling connection's* last write,
    so it runs right after a small write (a counter on the namespace's stats hash, same slot and master)
    on one connection: replication is ordered per master, so that offset covers the store's MULTI that the
    same master executed before it.
    """

    def __init__(self, url: str, cluster: bool, timeout: float) -> None:
        self.url, self.cluster, self.timeout = url, cluster, timeout
        self._nodes: dict[tuple[str, int], Any] = {}
        # no socket timeout: WAIT blocks up to its own timeout; wait() bounds the whole exchange
        self._single: Any = None if cluster else make_client(url, False, None, timeout)

    def _client_for(self, main: Any, key: str) -> Any:
        if not self.cluster:
            return self._single
        node = main.get_node_from_key(key)
        addr = (node.host, int(node.port))
        if addr not in self._nodes:
            self._nodes[addr] = aioredis.Redis(
                host=addr[0], port=addr[1], socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0)
            )
        return self._nodes[addr]

    async def wait(self, main: Any, stats_key: str, replicas: int, timeout_ms: int) -> int:
        """Replicas (of the master owning ``stats_key``) that confirmed every write up to now; 0 on error."""
        try:
            pipe = self._client_for(main, stats_key).pipeline(transaction=False)
            pipe.hincrby(stats_key, "replicated_stores", 1)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            res = await asyncio.wait_for(pipe.execute(), timeout_ms / 1000 + self.timeout)
            return int(res[1])
        except (TimeoutError, RedisError, OSError, KeyError, AttributeError):
            return 0

    async def aclose(self) -> None:
        """Close the per-node connections."""
        for c in [*self._nodes.values(), self._single]:
            if c is not None:
                with contextlib.suppress(Exception):  # closing a dead connection
                    await c.aclose()
