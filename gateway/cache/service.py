"""The semantic cache service: lookups against the in-process mirror, durable state in Redis.

A lookup embeds the prompt, finds the nearest live entry of its (namespace, scope) in the mirror, decides
exploit / explore / miss with the chosen policy and records the lookup (one pipelined Redis round trip) so
that feedback can reach any replica. Redis outages degrade the cache, never the gateway: lookups answer
miss, stores are dropped and counted, and a background task reconnects and rebuilds the mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from embedder.client import EmbedderClient
from embedder.errors import DependencyFailed
from gateway.cache.config import CacheConfig, Decision, FeedbackResult, LookupResult, StoreResult
from gateway.cache.judge import ExactMatchJudge, Judge
from gateway.cache.mirror import Mirror, MirrorEntry
from gateway.cache.policy import BudgetBook, ThresholdFit, VerifiedPolicy, contrast_score
from gateway.cache.redis_client import ReplicaWaiter, is_cluster, make_client
from gateway.cache.store import Keys, encode_fit, response_group, scope_hash
from gateway.cache.sync import MirrorSync
from gateway.cache.validate import check_id, check_json, check_namespace, check_policy, check_text

log = logging.getLogger(__name__)

__all__ = ["CacheConfig", "CacheService", "FeedbackResult", "LookupResult", "StoreResult"]
_REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError, ConnectionError)


def new_lookup_id() -> str:
    """A lookup id: 128 random bits from the OS (unguessable; feedback must also name its namespace)."""
    return secrets.token_hex(16)


class CacheService:
    """Semantic prompt cache over Redis with per-entry adaptive thresholds."""

    def __init__(
        self,
        redis_url: str,
        embedder: EmbedderClient | None,
        config: CacheConfig | None = None,
        *,
        judge: Judge | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config or CacheConfig()
        self.cluster = is_cluster(redis_url, self.config.redis_cluster)
        self.keys = Keys(self.config.prefix, cluster=self.cluster)
        self.embedder = embedder
        self.judge: Judge = judge or ExactMatchJudge()
        self.policy = VerifiedPolicy()
        self.budgets = BudgetBook()  # per (namespace, delta): this replica's risk budget ("budget" rule)
        self.rng = random.Random(seed)
        self.fast: Any = self._client(redis_url, self.config.op_timeout_s)
        self.main: Any = self._client(redis_url, self.config.write_timeout_s)
        self.sync = MirrorSync(
            redis_url,
            self.keys,
            self.config.exact_max,
            self.config.ef_search,
            poll_s=self.config.sync_poll_s,
        )
        self.waiter = ReplicaWaiter(redis_url, self.cluster, self.config.write_timeout_s)
        self.redis_url = redis_url
        self.sync.on_reconnect = self._fresh_clients
        self.sync.on_nsdel = self.budgets.drop_namespace
        self._retired: set[asyncio.Task[None]] = set()
        self.local: dict[str, int] = {"degraded_lookups": 0, "dropped_stores": 0, "redis_errors": 0}
        self.local["unreplicated_stores"] = 0
        self.started = False

    # ----------------------------------------------------------------- lifecycle
    @property
    def mirror(self) -> Mirror:
        """The current in-process mirror."""
        return self.sync.mirror

    @property
    def redis_ok(self) -> bool:
        """False while Redis is unreachable."""
        return self.sync.ok

    async def start(self) -> None:
        """Rebuild the mirror from Redis and follow the change stream (degraded if Redis is down)."""
        await self.sync.start()
        for client in (self.fast, self.main):  # open the pools' first connections outside the lookup budget
            with contextlib.suppress(*_REDIS_ERRORS):
                await asyncio.wait_for(client.ping(), 1.0)
        self.started = True

    def _client(self, url: str, timeout: float) -> Any:
        return make_client(url, self.cluster, timeout)

    def _fresh_clients(self) -> None:
        """After an outage: new clients (a pool whose sockets died with the server can stall a command)."""
        old = (self.fast, self.main)
        self.fast = self._client(self.redis_url, self.config.op_timeout_s)
        self.main = self._client(self.redis_url, self.config.write_timeout_s)
        for client in old:
            task = asyncio.get_running_loop().create_task(self._retire(client))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    @staticmethod
    async def _retire(client: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 5.0)

    async def close(self) -> None:
        """Stop background tasks and close connections."""
        await self.sync.close()
        await self.waiter.aclose()
        for c in (self.fast, self.main):
            with contextlib.suppress(Exception):
                await c.aclose()

    def _failed(self, what: str, exc: BaseException) -> None:
        self.local["redis_errors"] += 1
        log.warning("cache: Redis failed during %s (%r)", what, exc)
        self.sync.suspect()

    # ----------------------------------------------------------------- helpers
    async def embed(self, text: str) -> np.ndarray:
        """The prompt's L2-normalised embedding."""
        if self.embedder is None:
            raise DependencyFailed("no embedder configured for the cache", field="embedder")
        res = await self.embedder.embed([text], model=self.config.embed_model, priority="interactive")
        vec = np.asarray(res.vectors[0], dtype=np.float32)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec

    def fit_for(self, entry: MirrorEntry) -> ThresholdFit | None:
        """The fit that decides for ``entry``: its group's once it has enough observations, else the prior.

        A fit made on scores of another contrast weight (before a settings change) is not used.
        """
        cw = self.config.contrast_weight
        fit, n_obs = self.mirror.group_fit(entry.namespace, entry.group_id)
        if n_obs >= self.config.min_obs and fit is not None and fit.usable and fit.contrast == cw:
            return fit
        if self.config.use_prior:
            prior = self.mirror.priors.get(entry.namespace)
            if prior is not None and prior.n >= self.config.prior_min_obs and prior.contrast == cw:
                return prior
        return None

    # ----------------------------------------------------------------- lookup
    async def lookup(
        self,
        namespace: str,
        prompt: str,
        scope: Any = None,
        policy: str = "adaptive",
        max_error: float | None = None,
        threshold: float | None = None,
    ) -> LookupResult:
        """Embed ``prompt`` and decide whether a cached response may be served."""
        check_text(namespace, prompt, "prompt", self.config.limits.max_prompt_chars)
        check_json(scope, "scope")
        max_error, threshold = check_policy(policy, max_error, threshold, self.config)
        lookup_id = new_lookup_id()
        if not self.redis_ok:
            self.local["degraded_lookups"] += 1
            return LookupResult(False, "miss", lookup_id, degraded="redis unavailable")
        vec = await self.embed(prompt)
        return await self.lookup_vector(
            namespace, vec, prompt, scope_hash(scope), policy, max_error, threshold, lookup_id
        )

    async def lookup_vector(
        self,
        namespace: str,
        vec: np.ndarray,
        prompt: str,
        scope: str,
        policy: str,
        max_error: float,
        threshold: float,
        lookup_id: str | None = None,
    ) -> LookupResult:
        """Decide for an already-embedded prompt (``scope`` is the scope hash)."""
        lookup_id = lookup_id or new_lookup_id()
        if not self.redis_ok:
            self.local["degraded_lookups"] += 1
            return LookupResult(False, "miss", lookup_id, degraded="redis unavailable")
        nb = self.mirror.nearest(namespace, scope, vec)
        decision: Decision = "miss"
        p_exploit: float | None = None
        fit: ThresholdFit | None = None
        s = nb.similarity if nb is not None else -1.0
        x = s  # the score the adaptive fits model (contrast_score)
        if nb is not None:
            fit = self.fit_for(nb.entry)
            x = contrast_score(s, nb.competitor, self.config.contrast_weight)
        if policy == "static":
            decision = "exploit" if nb is not None and s >= threshold else "miss"
        elif self.config.adaptive_rule == "budget":
            budget = self.budgets.get(namespace, max_error)
            risk = None
            if nb is not None and s >= self.config.min_similarity:
                # no fit (too few observations, no prior): risk 1, never within the budget's cut
                risk = 1.0 - self.policy.correct_lower_bound(x, fit)
                decision = "explore"
            if budget.decide(risk):
                decision, p_exploit = "exploit", 1.0
            elif risk is not None:
                p_exploit = 0.0
        elif nb is not None and s >= self.config.min_similarity:
            # too few observations and no usable prior: always explore
            p_exploit = 0.0 if fit is None else self.policy.exploit_probability(x, fit, max_error)
            decision = "exploit" if self.rng.random() < p_exploit else "explore"
        k = self.keys
        pipe = self.fast.pipeline(transaction=False)
        record: dict[str, Any] = {"ns": namespace, "scope": scope, "dec": decision, "prompt": prompt}
        record["emb"] = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
        if nb is not None:
            record["eid"] = nb.entry.id
            record["s"] = f"{nb.similarity:.6f}"
            record["x"] = f"{x:.6f}"
            record["cw"] = repr(float(self.config.contrast_weight))
        pipe.hset(k.lookup(lookup_id), mapping=record)
        pipe.expire(k.lookup(lookup_id), self.config.lookup_ttl_s)
        stats = k.stats(namespace)
        pipe.hincrby(stats, "lookups", 1)
        pipe.hincrby(stats, decision, 1)
        if decision == "exploit" and nb is not None:
            if fit is not None and fit.usable:
                p_correct = 1.0 / (1.0 + np.exp(-fit.gamma * (x - fit.t)))
                pipe.hincrbyfloat(stats, "est_wrong", float(1.0 - p_correct))
                pipe.hincrby(stats, "est_n", 1)
            if self.config.refresh_ttl_on_hit and nb.entry.expires_at > 0:
                self.sync.touch(pipe, nb.entry, self.config)
        try:
            async with asyncio.timeout(self.config.op_timeout_s * 1.2):  # no extra task, unlike wait_for
                await pipe.execute()
        except _REDIS_ERRORS as exc:
            self._failed("lookup", exc)
            self.local["degraded_lookups"] += 1
            return LookupResult(False, "miss", lookup_id, degraded="redis unavailable")
        if decision != "exploit" or nb is None:
            return LookupResult(
                False,
                decision,
                lookup_id,
                similarity=nb.similarity if nb else None,
                entry_id=nb.entry.id if nb else None,
                exploit_probability=p_exploit,
            )
        return LookupResult(
            True, "exploit", lookup_id, nb.entry.response, nb.similarity, nb.entry.id, p_exploit
        )

    # ----------------------------------------------------------------- store
    async def store(
        self,
        namespace: str,
        prompt: str,
        response: str,
        scope: Any = None,
        metadata: dict[str, Any] | None = None,
        ttl_s: int | None = None,
    ) -> StoreResult:
        """Embed and store a prompt/response pair (dropped and counted while Redis is down)."""
        lim = self.config.limits
        check_text(namespace, prompt, "prompt", lim.max_prompt_chars)
        check_text(namespace, response, "response", lim.max_response_chars)
        check_json(scope, "scope")
        lim.check_metadata(metadata)
        lim.check_ttl(ttl_s)
        if not self.redis_ok:
            return self._drop_store("redis unavailable")
        vec = await self.embed(prompt)
        return await self.store_vector(namespace, vec, prompt, response, scope_hash(scope), metadata, ttl_s)

    def _drop_store(self, reason: str) -> StoreResult:
        self.local["dropped_stores"] += 1
        log.warning("cache: store dropped (%s); %d dropped so far", reason, self.local["dropped_stores"])
        return StoreResult(False, degraded=reason)

    async def store_vector(
        self,
        namespace: str,
        vec: np.ndarray,
        prompt: str,
        response: str,
        scope: str,
        metadata: dict[str, Any] | None = None,
        ttl_s: int | None = None,
        group: str | None = None,
    ) -> StoreResult:
        """Store an already-embedded prompt (``scope`` is the scope hash) in answer group ``group``."""
        if not self.redis_ok:
            return self._drop_store("redis unavailable")
        ttl = ttl_s if ttl_s is not None else self.config.default_ttl_s
        if group is None and self.config.group_by == "response":
            group = response_group(response)
        try:
            eid, evicted = await self.sync.write_entry(
                self.main, namespace, vec, prompt, response, scope, metadata, ttl, self.config, group
            )
        except _REDIS_ERRORS as exc:
            self._failed("store", exc)
            return self._drop_store("redis unavailable")
        want = self.config.store_replicas
        if want > 0:
            got = await self.waiter.wait(
                self.main, self.keys.stats(namespace), want, self.config.store_replicas_timeout_ms
            )
            if got < want:  # written on the master, but a failover could lose it: not acknowledged
                self.local["unreplicated_stores"] += 1
                return StoreResult(False, eid, evicted, degraded=f"replicated to {got} of {want} replicas")
        return StoreResult(True, eid, evicted)

    # ----------------------------------------------------------------- feedback
    async def feedback(
        self, lookup_id: str, response: str, *, namespace: str | None = None, source: str | None = None
    ) -> FeedbackResult:
        """Judge the cached response against the fresh one; update the entry; store the pair if needed.

        ``namespace``: the lookup must belong to it, else it answers as an unknown id (the HTTP route
        always names it). ``source``: who gives the feedback (API key id or client address; see
        ``CacheConfig.source_bin``); None for trusted in-process callers."""
        from gateway.cache.feedback import apply_feedback

        check_id(lookup_id, "lookup_id")
        if namespace is not None:
            check_namespace(namespace)
        check_text("-", response, "response", self.config.limits.max_response_chars)
        if not self.redis_ok:
            raise DependencyFailed("cache store (Redis) is unavailable", field="redis")
        try:
            return await apply_feedback(self, lookup_id, response, namespace, source)
        except _REDIS_ERRORS as exc:
            self._failed("feedback", exc)
            raise DependencyFailed("cache store (Redis) is unavailable", field="redis") from None

    async def feedback_entry(
        self,
        namespace: str,
        entry_id: str,
        prompt: str,
        response: str,
        scope: Any = None,
        *,
        source: str | None = None,
    ) -> FeedbackResult:
        """Feedback without a lookup id: similarity is recomputed from the prompt."""
        from gateway.cache.feedback import apply_entry_feedback

        check_id(entry_id, "entry_id")
        check_text(namespace, prompt, "prompt", self.config.limits.max_prompt_chars)
        check_text(namespace, response, "response", self.config.limits.max_response_chars)
        check_json(scope, "scope")
        if not self.redis_ok:
            raise DependencyFailed("cache store (Redis) is unavailable", field="redis")
        vec = await self.embed(prompt)
        try:
            return await apply_entry_feedback(
                self, namespace, entry_id, prompt, vec, scope_hash(scope), response, source
            )
        except _REDIS_ERRORS as exc:
            self._failed("feedback", exc)
            raise DependencyFailed("cache store (Redis) is unavailable", field="redis") from None

    # ----------------------------------------------------------------- admin
    async def delete_entry(self, namespace: str, entry_id: str) -> bool:
        """Delete one entry; False if it did not exist."""
        check_namespace(namespace)
        check_id(entry_id, "entry_id")
        self._need_redis()
        try:
            return await self.sync.delete_entry(self.main, namespace, entry_id)
        except _REDIS_ERRORS as exc:
            self._failed("delete", exc)
            raise DependencyFailed("cache store (Redis) is unavailable", field="redis") from None

    async def delete_namespace(self, namespace: str) -> int:
        """Delete a namespace with all its entries and statistics; returns the entry count removed."""
        check_namespace(namespace)
        self._need_redis()
        self.budgets.drop_namespace(namespace)
        try:
            return await self.sync.delete_namespace(self.main, namespace)
        except _REDIS_ERRORS as exc:
            self._failed("delete", exc)
            raise DependencyFailed("cache store (Redis) is unavailable", field="redis") from None

    def _need_redis(self) -> None:
        if not self.redis_ok:
            raise DependencyFailed("cache store (Redis) is unavailable", field="redis")

    async def stats(self, namespace: str | None = None) -> dict[str, Any]:
        """Counters and rates (one namespace or all), plus this replica's degraded-mode counters."""
        from gateway.cache.feedback import read_stats

        out: dict[str, Any] = {"redis": "ok" if self.redis_ok else "unavailable", "replica": dict(self.local)}
        out["entries_mirrored"] = self.mirror.count(namespace)
        if self.redis_ok:
            try:
                out.update(await read_stats(self, namespace))
            except _REDIS_ERRORS as exc:
                self._failed("stats", exc)
                out["redis"] = "unavailable"
        return out

    def now(self) -> float:
        """Wall clock (seconds)."""
        return time.time()

    def fit_payload(self, fit: ThresholdFit | None) -> str:
        """Serialised fit for Redis/stream."""
        return encode_fit(fit)
