"""Plain configuration and result types of the semantic cache service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.cache.store import PREFIX
from gateway.cache.validate import CacheLimits

Decision = Literal["exploit", "explore", "miss"]


@dataclass
class CacheConfig:
    """Tunables of the cache service (plain values; services/settings.py maps env vars onto them)."""

    default_max_error: float = 0.02
    default_threshold: float = 0.9
    min_obs: int = 10  # observations of an answer group before its own fit decides (else the prior)
    use_prior: bool = True  # new entries decide with the namespace's pooled fit
    prior_min_obs: int = 50
    prior_every: int = 25  # refit the pooled prior every N feedbacks
    prior_window: int = 5000
    max_obs_per_entry: int = 256  # observations kept per answer group
    prior_weight: float = 5.0  # total weight of the pooled sample in each group's fit (0 = own data only)
    prior_sample: int = 2000  # most recent pooled observations used as that pseudo-data
    adaptive_rule: Literal["budget", "vcache"] = "budget"  # deterministic risk budget | vCache's random rule
    group_by: Literal["response", "lineage"] = "response"  # how entries pool observations (store.py)
    store_on_correct_explore: bool = True  # a correct explore is stored too (in the entry's group)
    duplicate_similarity: float = 0.9999  # ... unless it is this close to the entry
    min_similarity: float = 0.0  # adaptive: a neighbour below this is a miss
    # one feedback source (API key, else client address) counts once per answer group and score bin of
    # this width: repeating a confirmation adds no evidence (0 = off; in-process callers name no source)
    source_bin: float = 0.02
    # a group's fit and the namespace prior serve only on evidence from this many distinct sources
    # (1 = off, the default of in-process callers; the HTTP service defaults to 2, see docs/cache.md)
    min_sources: int = 1
    # adaptive: the policy models s - w * (best similarity of another answer group), see contrast_score;
    # 0 = plain similarity. Tuned on banking77 train only (bench/results/cache_tune.md).
    contrast_weight: float = 0.75
    max_entries: int = 1_000_000  # per namespace; oldest evicted first
    default_ttl_s: int | None = None
    refresh_ttl_on_hit: bool = False
    lookup_ttl_s: int = 3600
    op_timeout_s: float = 0.04  # lookup-path Redis budget (the miss-within-50-ms promise)
    write_timeout_s: float = 1.0
    reconnect_interval_s: float = 0.25
    stream_maxlen: int = 1_000_000
    redis_cluster: bool = False  # the Redis URL is a cluster seed (also implied by a redis+cluster:// URL)
    sync_poll_s: float = 0.05  # on a cluster: how often a replica polls the namespaces' change streams
    # a store is acknowledged (stored: true) only once this many replicas of its master hold it (WAIT);
    # 0 = once the master has it (asynchronous replication: a failover may lose the last stores)
    store_replicas: int = 0
    store_replicas_timeout_ms: int = 200
    exact_max: int = 4096
    ef_search: int = 64
    embed_model: str | None = None
    prefix: str = PREFIX
    limits: CacheLimits = field(default_factory=CacheLimits)


@dataclass
class LookupResult:
    """Outcome of one lookup."""

    hit: bool
    decision: Decision
    lookup_id: str
    response: str | None = None
    similarity: float | None = None
    entry_id: str | None = None
    exploit_probability: float | None = None
    degraded: str | None = None


@dataclass
class StoreResult:
    """Outcome of one store."""

    stored: bool
    entry_id: str | None = None
    evicted: int = 0
    degraded: str | None = None


@dataclass
class FeedbackResult:
    """Outcome of one feedback."""

    correct: bool | None
    entry_id: str | None
    stored_entry_id: str | None
    observations: int = 0
