"""Shared fixtures: paths to the evaluation data, the model cache, Redis."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DOWSE_SHARED_DATA", REPO.parent / "shared" / "data"))
# Exported ONNX models are reused across test runs (export is idempotent, keyed by source hash).
MODEL_CACHE = Path(os.environ.get("DOWSE_TEST_MODEL_CACHE", REPO / ".cache" / "models"))
REDIS_URL = os.environ.get("DOWSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (BEIR SciFact, cache workloads); missing data is an error, not a skip."""
    assert SHARED_DATA.is_dir(), f"evaluation data not found at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Directory of exported models shared by the whole test session."""
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return MODEL_CACHE


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis (db 15, flushed by the tests that use it); `.ci/run` starts one if needed."""
    return REDIS_URL


@pytest.fixture(scope="session")
def exported_minilm(model_cache: Path) -> Path:
    """minilm exported (fp32 + int8 ONNX) into the shared model cache; reused across sessions."""
    from embedder.export import ensure_exported

    return ensure_exported("minilm", model_cache)


@pytest.fixture(scope="session")
def embedding_service(model_cache: Path, exported_minilm: Path):  # type: ignore[no-untyped-def]
    """A loaded EmbeddingService (minilm + ms-marco-l12, int8, batching off so any event loop can use it)."""
    from embedder.service import EmbeddingService

    svc = EmbeddingService(model_cache, ["ms-marco-l12"], default_model="minilm", batching=False)
    svc.start_blocking()
    yield svc
    svc.ready = False
