"""Matryoshka dims bench: per-collection PCA rotation + funnel search: SciFact quality / memory, QPS.

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


def _queries(model: str, qids: list[str], queries: dict[str, str]) -> np.ndarray:
    """Full-dim test-query vectors (cached)."""
    from embedder.service import EmbeddingService

    path = CACHE / f"{model}-queries.npy"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        svc = EmbeddingService(REPO / ".cache" / "models", [model], default_model=model, batching=False)
        np.save(path, svc.encode([queries[q] for q in qids], model=model, prompt_name="query"))
    return np.load(path)


def _docs(model: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(chunk vectors, their document ids, source): served chunks if exported, else whole documents."""
    served = CACHE / f"{model}-served-chunks.npy"
    if served.is_file():
        ids = np.load(CACHE / f"{model}-served-chunk-docids.npy")
        return np.load(served), ids, "served chunks (256 tokens, passage_text) of a `dowse index` collection"
    _, corpus, _ = load_scifact()
    return np.load(CACHE / f"{model}-docs.npy"), np.asarray(list(corpus)), "whole documents"


def _build(
    root: Path, vecs: np.ndarray, doc_ids: np.ndarray, dims: int, rotate: bool, code: str | None
) -> Any:
    """A real Collection holding ``vecs`` (chunk rows grouped by document), written in one batch."""
    import shutil

    from indexer.collection import Collection
    from indexer.manifest import IndexSpec, Manifest
    from indexer.store import PreparedDoc

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    model_dim = vecs.shape[1]
    man = Manifest(
        name="b",
        model="m",
        revision="r",
        dims=dims,
        model_dim=model_dim,
        rotate=rotate,
        index=IndexSpec(type="flat", code=code),
    )
    man.save(root / "manifest.json")
    coll = Collection(root, man, snapshot_every=10**9)
    coll.open()
    if not rotate and dims < model_dim:  # raw truncation: what `dimensions` did before rotations
        vecs = vecs[:, :dims] / np.linalg.norm(vecs[:, :dims], axis=1, keepdims=True)
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(doc_ids):
        groups.setdefault(str(d), []).append(i)
    docs = [
        PreparedDoc(d, "", "x", "{}", [(j, 0, 1) for j in range(len(rows))], vecs[rows])
        for d, rows in groups.items()
    ]
    coll.write(docs)
    return coll


def _ndcg(
    coll: Any, qvecs: np.ndarray, qids: list[str], qrels: dict, dims: int, funnel_m: int | None
) -> float:
    import pytrec_eval

    run = {}
    for qid, q in zip(qids, qvecs, strict=True):
        qq = q if coll.manifest.rotate or dims == len(q) else q[:dims] / np.linalg.norm(q[:dims])
        hits = coll.search_dense(qq, 10, funnel_m=funnel_m, texts=0)
        run[qid] = {h.id: float(h.score) for h in hits}
    ev = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids}, {"ndcg_cut.10"})
    return float(np.mean([r["ndcg_cut_10"] for r in ev.evaluate(run).values()]))


def _centring(vecs: np.ndarray, doc_ids: np.ndarray, qvecs: np.ndarray, qids: list[str], qrels: dict) -> dict:
    """nDCG@10 of rotated truncation, centred vs uncentred PCA, fit on a 2,000-chunk subset (numpy only)."""
    import pytrec_eval

    from indexer import rotation

    rng = np.random.default_rng(0)
    sub = vecs[rng.choice(len(vecs), min(2000, len(vecs)), replace=False)]
    out: dict[str, dict[str, float]] = {}
    for centred in (True, False):
        rot = rotation.fit(sub, 1, centred=centred)
        for d in (64, 128):
            dv, qv = rot.truncate(vecs, d, True), rot.truncate(qvecs, d, True)
            s = qv @ dv.T
            run: dict[str, dict[str, float]] = {}
            for qi, qid in enumerate(qids):
                best: dict[str, float] = {}
                for j in np.argsort(-s[qi])[:200]:
                    best.setdefault(str(doc_ids[j]), float(s[qi, j]))
                run[qid] = best
            ev = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids}, {"ndcg_cut.10"})
            ndcg = float(np.mean([r["ndcg_cut_10"] for r in ev.evaluate(run).values()]))
            out.setdefault("centred" if centred else "uncentred", {})[str(d)] = round(ndcg, 4)
    return out


def part_quality(model: str) -> dict[str, Any]:
    """nDCG@10 and bytes/vector: full, raw truncation, rotated, rotated + funnel (real Collections)."""
    queries, _, qrels = load_scifact()
    qids = [q for q in queries if q in qrels]
    qvecs = _queries(model, qids, queries)
    vecs, doc_ids, source = _docs(model)
    full_dim = vecs.shape[1]
    root = CACHE / "colls"
    rows = []
    configs = [("full", full_dim, False, None, None)]
    for d in (128, 64):
        configs += [
            (f"raw {d}", d, False, None, None),
            (f"rotated {d}", d, True, None, 0),
            (f"rotated {d} + funnel top 100", d, True, None, 100),
            (f"rotated {d} sq8 + funnel top 100", d, True, "sq8", 100),
        ]
    configs += [(f"rotated 64 sq8 + funnel top {m}", 64, True, "sq8", m) for m in (50, 200)]
    for label, d, rotate, code, funnel_m in configs:
        coll = _build(root / "c", vecs, doc_ids, d, rotate, code)
        dense_b = coll.dense.bytes_per_vector()
        funnel_b = coll.funnel.nbytes_per_vector() if (coll.funnel is not None and funnel_m) else 0.0
        rows.append(
            {
                "config": label,
                "dims": d,
                "funnel_m": funnel_m,
                "ndcg10": round(_ndcg(coll, qvecs, qids, qrels, d, funnel_m), 4),
                "index_bytes_per_vector": round(dense_b, 1),
                "funnel_bytes_per_vector": funnel_b,
                "total_bytes_per_vector": round(dense_b + funnel_b, 1),
                "rotation_version": coll.manifest.rotation_version,
            }
        )
        coll.close()
        print(rows[-1], flush=True)
    full = rows[0]
    for r in rows:
        r["ndcg10_vs_full"] = round(r["ndcg10"] / full["ndcg10"], 4)
        r["memory_vs_full"] = round(r["total_bytes_per_vector"] / full["total_bytes_per_vector"], 4)
    return {
        "model": model,
        "vectors": source,
        "n_vectors": int(len(vecs)),
        "queries": len(qids),
        "table": rows,
        "centring_2000_chunk_fit": _centring(vecs, doc_ids, qvecs, qids, qrels),
    }


def part_qps(n: int, rounds: int) -> dict[str, Any]:
    """Dense QPS on ``n`` synthetic vectors: full-dim HNSW vs the 64-d HNSW funnel (top 100 at full dims).

    Vectors are drawn from a Gaussian with the mean and covariance of MiniLM's SciFact chunk vectors, then
    normalised (memory / QPS only: quality on them means nothing). Queries: the 300 real test queries.
    Serving classes throughout (DenseIndex, FunnelStore, RotatedMixin._funnel_candidates); one search
    thread, like one request; rounds interleaved with alternating order.
    """
    from types import SimpleNamespace

    import faiss

    from indexer import rotation
    from indexer.dense import DenseIndex
    from indexer.funnel import FunnelStore
    from indexer.manifest import IndexSpec
    from indexer.rotated import RotatedMixin

    src, _, _ = _docs("minilm")
    queries, _, qrels = load_scifact()
    qvecs = _queries("minilm", [q for q in queries if q in qrels], queries)
    rng = np.random.default_rng(0)
    mean, cov = src.mean(axis=0), np.cov(src.T)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(mean)))
    x = np.empty((n, src.shape[1]), np.float32)
    for i in range(0, n, 100_000):
        part = mean + rng.standard_normal((min(100_000, n - i), len(mean))) @ chol.T
        x[i : i + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    spec = IndexSpec(type="hnsw")
    t0 = time.perf_counter()
    full = DenseIndex(x.shape[1], "cosine", spec)
    full.rebuild([(ids, x)], n)
    build_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    rot = rotation.fit(x[:200_000], 1)
    store = FunnelStore(x.shape[1])
    low = np.empty((n, 64), np.float32)
    for i in range(0, n, 100_000):
        r = rot.apply(x[i : i + 100_000])
        if i == 0:
            store.train(r)
        store.add(ids[i : i + 100_000], r)
        low[i : i + len(r)] = rot.truncate(x[i : i + 100_000], 64, True)
    small = DenseIndex(64, "cosine", spec)
    small.rebuild([(ids, low)], n)
    build_funnel = time.perf_counter() - t0
    del low
    coll = SimpleNamespace(
        rotation=rot, funnel=store, dense=small, manifest=SimpleNamespace(dims=64, metric="cosine")
    )

    def run_full() -> list[np.ndarray]:
        return [full.search(q, 10)[0] for q in qvecs]

    def run_funnel() -> list[np.ndarray]:
        return [RotatedMixin._funnel_candidates(coll, q, 10, None, None, 100)[0] for q in qvecs]  # type: ignore[arg-type]

    faiss.omp_set_num_threads(1)
    qps: dict[str, list[float]] = {"full_hnsw": [], "funnel_64_hnsw_top100": []}
    results: dict[str, list[np.ndarray]] = {}
    for r in range(rounds):
        order = [("full_hnsw", run_full), ("funnel_64_hnsw_top100", run_funnel)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            results[name] = fn()
            qps[name].append(len(qvecs) / (time.perf_counter() - t0))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    _, truth = flat.search(qvecs, 10)
    recall = {
        name: float(np.mean([len(set(t) & set(g.tolist())) / 10 for t, g in zip(truth, got, strict=True)]))
        for name, got in results.items()
    }
    ratio = [a / b for a, b in zip(qps["funnel_64_hnsw_top100"], qps["full_hnsw"], strict=True)]
    return {
        "n_vectors": n,
        "vectors": "synthetic: Gaussian fit (mean, covariance) of MiniLM SciFact chunk vectors, normalised",
        "queries": len(qvecs),
        "rounds": rounds,
        "hnsw": {"M": spec.M, "ef_construction": spec.ef_construction, "ef_search": spec.ef_search},
        "qps": {k: summary(v) for k, v in qps.items()},
        "funnel_over_full_qps": summary(ratio),
        "recall_at_10_vs_exact_full": recall,
        "bytes_per_vector": {
            "full_hnsw": round(full.bytes_per_vector(), 1),
            "funnel_64_hnsw": round(small.bytes_per_vector(), 1),
            "funnel_sq8_store": store.nbytes_per_vector(),
        },
        "build_seconds": {"full_hnsw": round(build_full, 1), "funnel": round(build_funnel, 1)},
    }


def summary(xs: list[float]) -> dict[str, float]:
    """Median and spread."""
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def merge(key: str, value: Any) -> dict[str, Any]:
    """Merge one part's result into bench/results/dims.json."""
    path = RESULTS / "dims.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "dims.md").write_text(render(data))
    return data


def render(data: dict[str, Any]) -> str:
    """bench/results/dims.md from dims.json."""
    out = ["# Matryoshka dims: per-collection PCA rotation + funnel search", ""]
    for key in sorted(k for k in data if k.startswith("quality_")):
        q = data[key]
        full = q["table"][0]
        out += [
            f"#### SciFact test nDCG@10, {q['model']} ({q['n_vectors']} vectors: {q['vectors']}; "
            f"{q['queries']} queries; dense only, exact flat search)",
            "",
            "| config | nDCG@10 | vs full | index B/vec | funnel SQ8 B/vec | total B/vec | memory vs full |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in q["table"]:
            out.append(
                f"| {r['config']} | {r['ndcg10']:.4f} | {r['ndcg10_vs_full']:.2%} | "
                f"{r['index_bytes_per_vector']:.0f} | {r['funnel_bytes_per_vector']:.0f} | "
                f"{r['total_bytes_per_vector']:.0f} | {r['memory_vs_full']:.1%} |"
            )
        c = q["centring_2000_chunk_fit"]
        out += [
            "",
            f"Full-dim nDCG@10 {full['ndcg10']:.4f}. Centred vs uncentred PCA (fit on 2,000 chunks): "
            + ", ".join(f"{d} dims {c['centred'][d]:.4f} vs {c['uncentred'][d]:.4f}" for d in c["centred"])
            + " (centred is the default).",
            "",
        ]
    for key in sorted(k for k in data if k.startswith("qps_")):
        r = data[key]
        h = r["hnsw"]
        b = r["bytes_per_vector"]
        out += [
            f"#### Dense QPS, {r['n_vectors']:,} vectors ({r['vectors']}; memory / QPS only), "
            f"{r['queries']} queries, 1 search thread, {r['rounds']} interleaved rounds",
            "",
            "| index | QPS median (min-max) | recall@10 vs exact full-dim | bytes/vector | build s |",
            "|---|---|---|---|---|",
        ]
        for name, label, mem in (
            (
                "full_hnsw",
                f"full-dim HNSW M={h['M']} efC={h['ef_construction']} ef={h['ef_search']}",
                b["full_hnsw"],
            ),
            (
                "funnel_64_hnsw_top100",
                "64-d HNSW (ef=100) + SQ8 full-dim rescoring of top 100",
                b["funnel_64_hnsw"] + b["funnel_sq8_store"],
            ),
        ):
            qs = r["qps"][name]
            build = r["build_seconds"]["full_hnsw" if name == "full_hnsw" else "funnel"]
            out.append(
                f"| {label} | {qs['median']:.0f} ({qs['min']:.0f}-{qs['max']:.0f}) | "
                f"{r['recall_at_10_vs_exact_full'][name]:.4f} | {mem:.0f} | {build} |"
            )
        f = r["funnel_over_full_qps"]
        out += ["", f"Funnel / full QPS per round: {f['median']:.2f} ({f['min']:.2f}-{f['max']:.2f}).", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("embed", "quality", "qps", "render"), required=True)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors for --part qps")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.part == "embed":
        part_embed(args.model)
    elif args.part == "quality":
        merge(f"quality_{args.model}", part_quality(args.model))
    elif args.part == "render":
        (RESULTS / "dims.md").write_text(render(json.loads((RESULTS / "dims.json").read_text())))
    elif args.part == "qps":
        merge(f"qps_{args.n}", part_qps(args.n, args.rounds))


if __name__ == "__main__":
    main()
