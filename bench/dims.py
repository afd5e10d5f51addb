"""Matryoshka dims bench: per-collection PCA rotation + funnel search on SciFact (quality, memory) and 1M (QPS).

    .venv/bin/python bench/dims.py --part embed --model minilm     # cache corpus/query vectors (slow, once)
    .venv/bin/python bench/dims.py --part quality --model minilm   # nDCG@10 + bytes/vector table
    .venv/bin/python bench/dims.py --part qps                      # 64-d funnel vs full-dim HNSW, 1M vectors

Quality uses the serving int8 ONNX model, whole documents (title + abstract, truncated at the model's
maximum length) and dense-only exact search, and goes through the same code that serves
(``indexer.rotation`` and ``indexer.funnel``). Results merge into bench/results/dims.json and dims.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("DOWSE_SHARED_DATA", REPO.parent / "shared" / "data")) / "scifact"
CACHE = REPO / ".cache" / "dims-bench"
RESULTS = REPO / "bench" / "results"


def load_scifact() -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """(queries id->text, corpus id->title+text, test qrels)."""
    queries = {}
    for line in (DATA / "queries.jsonl").open():
        q = json.loads(line)
        queries[q["_id"]] = q["text"]
    corpus = {}
    for line in (DATA / "corpus.jsonl").open():
        d = json.loads(line)
        corpus[d["_id"]] = f"{d['title']} {d['text']}"
    qrels: dict[str, dict[str, int]] = {}
    for line in list((DATA / "qrels" / "test.tsv").open())[1:]:
        qid, did, score = line.strip().split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return queries, corpus, qrels


def part_embed(model: str) -> None:
    """Embed the SciFact corpus and test queries at full dims with the serving model; cache as npy."""
    from embedder.service import EmbeddingService

    queries, corpus, qrels = load_scifact()
    CACHE.mkdir(parents=True, exist_ok=True)
    dpath, qpath = CACHE / f"{model}-docs.npy", CACHE / f"{model}-queries.npy"
    svc = EmbeddingService(REPO / ".cache" / "models", [model], default_model=model, batching=False)
    qids = [q for q in queries if q in qrels]
    if not qpath.is_file():
        np.save(qpath, svc.encode([queries[q] for q in qids], model=model, prompt_name="query"))
    if not dpath.is_file():
        t0 = time.perf_counter()
        ids = list(corpus)
        vecs = svc.encode([corpus[i] for i in ids], model=model, prompt_name="passage", batch_size=32)
        print(f"embedded {len(ids)} docs with {model} in {time.perf_counter() - t0:.0f} s", flush=True)
        np.save(dpath, vecs)
    print("cached", dpath, qpath)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("embed", "quality", "qps"), required=True)
    ap.add_argument("--model", default="minilm")
    args = ap.parse_args()
    if args.part == "embed":
        part_embed(args.model)


if __name__ == "__main__":
    main()
