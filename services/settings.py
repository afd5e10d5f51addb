"""One pydantic-settings class per service (env prefix ``DOWSE_``); built in ``main()``, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from embedder.batching import MICRO_BATCH_TOKENS


class CommonSettings(BaseSettings):
    """Settings every role shares."""

    model_config = SettingsConfigDict(env_prefix="DOWSE_", extra="ignore")

    data_dir: Path = Path("./data")
    model_cache: Path | None = Field(
        default=None, description="Exported ONNX models; default <data_dir>/models"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    log_json: bool = False
    log_level: str = "INFO"
    # Auth (docs/security.md). auto: on once a key exists (or DOWSE_ADMIN_KEY is set), else off, which
    # only a loopback bind or --insecure allows; required: on; off: no checks (loopback or --insecure).
    auth: Literal["auto", "required", "off"] = "auto"
    admin_key: SecretStr | None = None  # bootstrap key with scope admin (>= 32 characters)
    service_token: SecretStr | None = None  # gateway -> embedder/indexer; separate roles accept only it
    insecure: bool = False  # allow serving a non-loopback address with auth off
    auth_cache_ttl_s: float = Field(2.0, gt=0, le=5, description="key records cached per process")
    # Host names served (DNS rebinding guard); None: loopback names + `host`, or any when bound to 0.0.0.0
    allowed_hosts: list[str] | None = None
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="request bodies over this: 413")

    def model_cache_dir(self) -> Path:
        """Where exported models live."""
        return self.model_cache or (self.data_dir / "models")


class EmbedderSettings(CommonSettings):
    """Embedding service: models, precision, batching."""

    model: str = "minilm"
    extra_models: list[str] = Field(default_factory=lambda: ["ms-marco-l12"])
    precision: Literal["fp32", "int8"] = "int8"
    intra_op_threads: int = 0  # 0 = ONNX Runtime default (all cores)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batching: bool = True
    max_batch_size: int = 64
    max_batch_tokens: int = 8192
    # 0: a lone request runs at once and batches form while the model is busy (measured on 2 CPU cores:
    # the same HTTP requests/s as 2 ms, and 2 ms less per in-process search); raise it on a GPU
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    max_client_batch: int = 256
    auto_export: bool = True
    rerank_max_length: int = 256
    # Batch-class work (ingest, large client batches) runs in micro-batches of this many padded tokens:
    # 48.5 ms (p50) of minilm int8 on 2 CPU cores (bench/micro_batch.py), the longest an interactive
    # request waits behind it. Raise it on a GPU (same bound, more tokens).
    micro_batch_tokens: int = Field(default=MICRO_BATCH_TOKENS, ge=1)
    max_batch_queue: int = 1024  # batch-class inputs waiting, then 429 (ingest backs off and retries)
    max_request_tokens: int = Field(default=32_768, ge=1)  # per embeddings request, then 413
    max_rerank_docs: int = Field(default=100, ge=1)  # documents per rerank request, then 413
    max_rerank_tokens: int = Field(default=25_600, ge=1)  # (query, document) tokens per rerank, then 413


class IndexerSettings(CommonSettings):
    """Indexer: collection storage and the embedder it calls."""

    embedder_url: str | None = None  # None = in-process embedder
    hnsw_threshold: int = 50_000
    embedder_timeout_s: float = 60.0  # document batches embed in one call per 64 chunks
    max_batch_docs: int = 1000
    max_doc_chars: int = 1_000_000
    snapshot_every: int = 20_000  # dense snapshot after this many chunk changes (SQLite replays the rest)
    # a rotating collection fits its PCA rotation at max(2 * dims, this) chunks (bench/dims.py: MiniLM at
    # 128 dims lost 0.018 nDCG@10 with a 256-chunk fit, none with 1,000)
    rotation_min_chunks: int = 1000
    # ingest jobs over HTTP read only regular files under <data_dir>/imports and these folders
    job_roots: list[Path] | None = None


class CacheSettings(CommonSettings):
    """Semantic cache (served by the gateway)."""

    redis_url: str = "redis://127.0.0.1:6379/0"  # redis+cluster://host:port names a Redis Cluster seed
    redis_cluster: bool = False  # treat redis_url as a Redis Cluster seed node (same as redis+cluster://)
    cache_store_replicas: int = Field(
        0, ge=0, description="a store is acknowledged once this many replicas hold it (Redis WAIT)"
    )
    cache_store_replicas_timeout_ms: int = Field(200, ge=1, description="how long a store waits for them")
    cache_sync_poll_s: float = Field(0.05, gt=0, description="Redis Cluster: change-stream poll interval")
    cache_max_error: float = Field(0.02, gt=0, lt=1, description="default delta of the adaptive policy")
    cache_threshold: float = Field(0.9, ge=0, le=1, description="default threshold of the static policy")
    cache_min_obs: int = Field(
        10, ge=0, description="observations of an answer group before its own fit decides (else the prior)"
    )
    cache_adaptive_rule: Literal["budget", "vcache"] = "budget"  # deterministic risk budget | vCache's rule
    cache_group_by: Literal["response", "lineage"] = "response"  # how entries pool their observations
    cache_store_on_correct_explore: bool = True  # a correct explore is stored too (more coverage)
    cache_prior_weight: float = Field(
        5.0, ge=0, description="weight of the pooled observations in each answer group's fit (0 = own only)"
    )
    cache_use_prior: bool = True  # new entries decide with the namespace's pooled fit
    cache_min_similarity: float = 0.0  # adaptive: a nearest neighbour below this is a plain miss
    # one feedback source (API key / client address) adds one observation per answer group and score bin
    cache_source_bin: float = Field(0.02, ge=0, le=2, description="0 = every feedback counts")
    cache_min_sources: int = Field(
        1, ge=1, description="distinct feedback sources before adaptive evidence serves (1 = one trusted app)"
    )
    cache_contrast_weight: float = Field(
        0.75, ge=0, le=2, description="adaptive: weight of the closest other answer's similarity (0 = off)"
    )
    cache_max_entries: int = Field(1_000_000, ge=1, description="per namespace; oldest evicted first")
    cache_default_ttl_s: int | None = None
    cache_refresh_ttl_on_hit: bool = False
    cache_lookup_ttl_s: int = 3600  # how long a lookup id accepts feedback
    cache_op_timeout_s: float = 0.04  # Redis budget of a lookup (misses within 50 ms when Redis is down)
    cache_judge: Literal["exact", "embedding"] = "exact"
    cache_judge_threshold: float = Field(0.9, ge=0, le=1)
    cache_embed_model: str | None = None  # None = the embedder's default model
    cache_max_prompt_chars: int = 32_768
    cache_max_response_chars: int = 262_144


class GatewaySettings(CacheSettings):
    """Gateway: search pipeline, cache, and where the other services live."""

    embedder_url: str | None = None
    indexer_url: str | None = None  # the shard map: comma-separated indexer URLs, shard 0 first
    shard_timeout_s: float | None = None  # per shard call; None = 0.9 x retrieve_timeout_s
    bm25_global_stats: bool = True  # sharded BM25 with collection-wide idf (one extra round trip)
    shard_write_timeout_s: float = 300.0  # a write embeds its documents on the shard before it answers
    embed_timeout_s: float = 2.0
    rerank_timeout_s: float = 5.0
    search_timeout_s: float = 5.0
    retrieve_timeout_s: float = 3.0  # each indexer call (BM25, dense, collection info)
    search_candidates: int = 100  # hits per retriever before fusion (default; per request: candidates)
    search_alpha: float = 0.5  # convex fusion weight of the dense list (untuned default)
    rerank_top_n: int = 20  # fused candidates sent to the cross-encoder
    rerank_weight: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="CE weight vs first stage for collections without a `dowse eval` choice; unset = "
        "the built-in weight per first stage (gateway.search_defaults)",
    )
    rerank_model: str | None = None  # None = the embedder's default cross-encoder (ms-marco-l12)
    # folders whose tables / plots the playground's Eval view shows; None = bench/results, <data_dir>/results
    results_dirs: list[Path] | None = None


class ServeSettings(EmbedderSettings, IndexerSettings, GatewaySettings):
    """Everything in one process (``dowse serve``): the union of the three roles."""

    demo_corpus: Path | None = None
