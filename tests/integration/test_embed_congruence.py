"""Acceptance 1 and 3 on SciFact subsets: ONNX vs sentence-transformers torch, int8 vs fp32, batch
invariance of the served graphs, cross-encoder sanity. Full-size numbers come from bench/embed.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from embedder.batching import run_sorted
from embedder.export import ensure_exported
from embedder.onnx_model import OnnxModel
from embedder.registry import resolve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def load_scifact(shared_data: Path) -> tuple[list[dict], dict[str, str], dict[str, set[str]]]:
    root = shared_data / "scifact"
    queries = [json.loads(line) for line in (root / "queries.jsonl").open()]
    corpus = {}
    for line in (root / "corpus.jsonl").open():
        d = json.loads(line)
        corpus[d["_id"]] = f"{d['title']} {d['text']}"
    qrels: dict[str, set[str]] = {}
    for line in list((root / "qrels" / "test.tsv").open())[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(did)
    return queries, corpus, qrels


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    """100 queries + 100 documents (documents are long: many hit the 256-token limit)."""
    queries, corpus, _ = load_scifact(shared_data)
    docs = list(corpus.values())
    return [q["text"] for q in queries[:100]] + docs[:100]


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def test_onnx_matches_sentence_transformers(exported_minilm: Path, texts: list[str]) -> None:
    st = pytest.importorskip("sentence_transformers", reason="needs the 'export' extra (torch)")
    ref = st.SentenceTransformer(str(resolve("minilm").path), device="cpu").encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
    )
    fp32 = OnnxModel(exported_minilm, "fp32", device="cpu")
    int8 = OnnxModel(exported_minilm, "int8", device="cpu")
    v32 = run_sorted(fp32.run, fp32.tokenize(texts), 32, 1 << 20)
    v8 = run_sorted(int8.run, int8.tokenize(texts), 32, 1 << 20)
    # fp32 export differs from torch only by kernel summation order (~1e-7 per component)
    assert min_cos(v32, ref) >= 0.9999
    # int8 weights + int8 activations: the bound
    assert min_cos(v8, ref) >= 0.98


@pytest.mark.parametrize("name", ["minilm", "bge-small"])
def test_served_graph_is_batch_invariant(model_cache: Path, texts: list[str], name: str) -> None:
    """Acceptance 3: each of 32 texts alone vs inside mixed batches (other queries and long documents)."""
    model = OnnxModel(ensure_exported(name, model_cache), "int8", device="cpu")
    probe = texts[:16] + texts[100:116]
    others = texts[16:100] + texts[116:]
    alone = np.stack([model.run(model.tokenize([t]))[0] for t in probe])
    rng = random.Random(7)
    worst = 1.0
    for i, t in enumerate(probe):
        comp = rng.sample(others, 7)
        pos = rng.randrange(8)
        batch = comp[:pos] + [t] + comp[pos:]
        worst = min(worst, float(model.run(model.tokenize(batch))[pos] @ alone[i]))
    assert worst >= 0.999, worst


def test_cross_encoder_batch_invariant_and_sane(model_cache: Path, shared_data: Path) -> None:
    """Relevant pair above a random non-relevant pair for >= 95% of queries (60-query subset here), and
    each pair's score within 0.05 of its score when batched with other pairs."""
    queries, corpus, qrels = load_scifact(shared_data)
    model = OnnxModel(ensure_exported("ms-marco-l12", model_cache), "int8", device="cpu")
    rng = random.Random(3)
    ids = list(corpus)
    judged = [q for q in queries if q["_id"] in qrels][:60]
    wins = 0
    max_shift = 0.0
    for k, q in enumerate(judged):
        rel = sorted(qrels[q["_id"]])[0]
        neg = rng.choice([d for d in rng.sample(ids, 5) if d not in qrels[q["_id"]]])
        batch = model.tokenize_pairs(q["text"], [corpus[rel], corpus[neg]])
        scores = model.run(batch)
        wins += int(scores[0] > scores[1])
        if k < 8:
            alone = model.run(batch[:1])[0]
            max_shift = max(max_shift, abs(float(alone) - float(scores[0])))
    assert wins / len(judged) >= 0.95, wins / len(judged)
    assert max_shift <= 0.05, max_shift
