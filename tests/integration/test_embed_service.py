"""EmbeddingService with real exported models: semantics, prompts, dimensions, errors, rerank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedder.errors import InvalidInput, NotReady, TooLarge
from embedder.inprocess import InProcessEmbedderClient
from embedder.registry import BGE_QUERY_PROMPT, UnknownModel
from embedder.service import EmbeddingService

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def scifact(shared_data: Path, n_queries: int, n_docs: int) -> tuple[list[str], list[str]]:
    qs = [json.loads(line)["text"] for line in (shared_data / "scifact" / "queries.jsonl").open()][:n_queries]
    docs = []
    with (shared_data / "scifact" / "corpus.jsonl").open() as f:
        for line in f:
            d = json.loads(line)
            docs.append(f"{d['title']} {d['text']}")
            if len(docs) >= n_docs:
                break
    return qs, docs


@pytest.fixture(scope="module")
def bge_service(model_cache: Path) -> EmbeddingService:
    svc = EmbeddingService(model_cache, [], default_model="bge-small", batching=False)
    svc.start_blocking()
    return svc


async def test_embed_vectors_are_normalised_with_token_counts(embedding_service: EmbeddingService) -> None:
    client = InProcessEmbedderClient(embedding_service)
    res = await client.embed(["a cat sat on the mat", "quantum chromodynamics of gluons"])
    assert res.vectors.shape == (2, 384) and res.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, rtol=1e-5)
    # [CLS] a cat sat on the mat [SEP] = 8 tokens
    assert res.token_counts[0] == 8 and res.token_counts[1] > 5
    assert res.model == "minilm"
    info = await client.model_info()
    assert info["name"] == "minilm" and info["dim"] == 384 and info["max_length"] == 256
    assert info["kind"] == "bi-encoder" and len(info["revision"]) == 64


async def test_semantics_related_texts_are_closer(embedding_service: EmbeddingService) -> None:
    v = (
        await embedding_service.embed(["How do I bake bread?", "A recipe for baking a loaf", "Tax law"])
    ).vectors
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


async def test_dimensions_truncate_and_renormalise(embedding_service: EmbeddingService) -> None:
    texts = ["first text about proteins", "second text about galaxies"]
    full = (await embedding_service.embed(texts)).vectors
    for d in (1, 64, 256, 384):
        cut = (await embedding_service.embed(texts, dimensions=d)).vectors
        assert cut.shape == (2, d)
        np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-5)
        ref = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
        np.testing.assert_allclose(cut, ref, atol=1e-6)


@pytest.mark.parametrize("dims", [0, -1, 385, True, 2.5])
async def test_bad_dimensions_name_field_and_limit(embedding_service: EmbeddingService, dims: object) -> None:
    with pytest.raises(InvalidInput) as err:
        await embedding_service.embed(["x"], dimensions=dims)  # type: ignore[arg-type]
    assert err.value.field == "dimensions" and err.value.limit == 384


@pytest.mark.parametrize(
    ("texts", "field"),
    [
        ([], "input"),
        ([""], "input[0]"),
        (["ok", "  "], "input[1]"),
        (["ok", 3], "input[1]"),
        ("str", "input"),
    ],
)
async def test_bad_inputs_name_the_field(
    embedding_service: EmbeddingService, texts: object, field: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        await embedding_service.embed(texts)  # type: ignore[arg-type]
    assert err.value.field == field and err.value.limit is not None


async def test_too_many_inputs_and_too_long_are_too_large(embedding_service: EmbeddingService) -> None:
    with pytest.raises(TooLarge) as err:
        await embedding_service.embed(["x"] * (embedding_service.max_client_batch + 1))
    assert err.value.limit == embedding_service.max_client_batch and err.value.field == "input"
    long_text = "word " * 300
    with pytest.raises(TooLarge) as err:
        await embedding_service.embed(["short", long_text], truncate=False)
    assert err.value.limit == 256 and err.value.field == "input[1]"
    res = await embedding_service.embed([long_text])  # truncate=True (default) cuts at 256 tokens
    assert res.token_counts == [256]


async def test_unknown_model_and_wrong_kind(embedding_service: EmbeddingService) -> None:
    with pytest.raises(UnknownModel) as err:
        await embedding_service.embed(["x"], model="nope")
    assert err.value.field == "model" and "minilm" in err.value.limit
    with pytest.raises(InvalidInput) as err2:
        await embedding_service.embed(["x"], model="ms-marco-l12")
    assert err2.value.field == "model"
    with pytest.raises(InvalidInput) as err3:
        await embedding_service.embed(["x"], prompt_name="nonsense")
    assert err3.value.field == "prompt_name" and err3.value.limit == ["passage", "query"]


async def test_not_ready_before_start(model_cache: Path) -> None:
    svc = EmbeddingService(model_cache, [], batching=False)
    with pytest.raises(NotReady):
        await svc.embed(["x"])


def test_bge_query_prompt_is_applied(bge_service: EmbeddingService) -> None:
    q = "what causes tides"
    plain = bge_service.encode([q])
    prompted = bge_service.encode([q], prompt_name="query")
    manual = bge_service.encode([BGE_QUERY_PROMPT + q])
    passage = bge_service.encode([q], prompt_name="passage")
    np.testing.assert_array_equal(prompted, manual)
    np.testing.assert_array_equal(plain, passage)  # bge's passage prompt is empty
    assert float(plain[0] @ prompted[0]) < 0.999  # the instruction changes the vector
    assert bge_service.model_info()["pooling"] == "cls"


async def test_instruction_overrides_prompt_verbatim(bge_service: EmbeddingService) -> None:
    a = (await bge_service.embed(["tides"], instruction="Find: ")).vectors
    b = (await bge_service.embed(["Find: tides"])).vectors
    np.testing.assert_array_equal(a, b)


async def test_rerank_orders_relevant_first(embedding_service: EmbeddingService, shared_data: Path) -> None:
    client = InProcessEmbedderClient(embedding_service)
    docs = ["Paris is the capital of France.", "Cats are small domesticated carnivorous mammals.", ""]
    scores = await client.rerank("what kind of animal is a cat", docs)
    assert len(scores) == 3 and scores[1] > scores[0] + 3 and scores[1] > scores[2]
    info = await client.model_info("ms-marco-l12")
    assert info["kind"] == "cross-encoder"
    with pytest.raises(InvalidInput) as err:
        await client.rerank("", ["x"])
    assert err.value.field == "query"
    with pytest.raises(TooLarge) as err2:
        await client.rerank("q", ["word " * 600], truncate=False)
    # pairs are capped at the serve-time default of 256 tokens (the model itself allows 512)
    assert info["max_length"] == 256
    assert err2.value.field == "documents" and err2.value.limit == 256
