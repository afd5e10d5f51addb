"""One pydantic-settings class per service (env prefix ``DOWSE_``); built in ``main()``, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    max_client_batch: int = 256
    auto_export: bool = True


class IndexerSettings(CommonSettings):
    """Indexer: collection storage and the embedder it calls."""

    embedder_url: str | None = None  # None = in-process embedder
    hnsw_threshold: int = 50_000


class CacheSettings(CommonSettings):
    """Semantic cache (served by the gateway)."""

    redis_url: str = "redis://127.0.0.1:6379/0"


class GatewaySettings(CacheSettings):
    """Gateway: search pipeline, cache, and where the other services live."""

    embedder_url: str | None = None
    indexer_url: str | None = None
    embed_timeout_s: float = 2.0
    rerank_timeout_s: float = 5.0
    search_timeout_s: float = 5.0


class ServeSettings(EmbedderSettings, IndexerSettings, GatewaySettings):
    """Everything in one process (``dowse serve``): the union of the three roles."""

    demo_corpus: Path | None = None
