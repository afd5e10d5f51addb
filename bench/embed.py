"""Embedder benchmark: speed (torch vs ONNX fp32 vs int8), rerank, HTTP batching, quality on SciFact.

    .venv/bin/python bench/embed.py                       # all parts (~15 min on 2 idle cores)
    .venv/bin/python bench/embed.py --part speed --rounds 5

Parts (each merges its results into bench/results/embed.json, then embed.md and embed_dims.png are redrawn):
- speed:   sentences/s at batch 1/8/32/128 for SciFact queries and documents; sentence-transformers torch vs
           our fp32 vs our int8 (per-token activations); rounds interleaved, order shuffled.
- rerank:  cross-encoder pairs/s (20 documents per query), fp32 vs int8 vs int8-dynamic.
- http:    16 concurrent clients, one text per request, `dowse serve --role embedder` with batching on/off.
- quality: congruence on 500 SciFact texts (min cosine vs torch), cross-encoder sanity on all test queries,
           dense-only nDCG@10 (pytrec_eval) for fp32 / int8 and at 384/256/128/64 dims, raw truncation and
           after a PCA rotation fit on the collection's own document embeddings.
Targets are ratios against a peer measured in the same run (never absolute timings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embedder.batching import run_sorted  # noqa: E402
from embedder.export import ensure_exported  # noqa: E402
from embedder.onnx_model import OnnxModel, l2_normalize  # noqa: E402
from embedder.registry import resolve  # noqa: E402
from services.machine import describe  # noqa: E402

DATA = Path(os.environ.get("DOWSE_SHARED_DATA", REPO.parent / "shared" / "data")) / "scifact"
CACHE = REPO / ".cache"
RESULTS = REPO / "bench" / "results"
BATCHES = (1, 8, 32, 128)
SPEED_TEXTS = {"queries": {1: 32, 8: 64, 32: 128, 128: 128}, "docs": {1: 8, 8: 16, 32: 32, 128: 128}}
# --quick (a busy shared machine): fewer texts per measurement and no 128-document batches
QUICK_TEXTS = {"queries": {1: 8, 8: 16, 32: 32, 128: 128}, "docs": {1: 2, 8: 8, 32: 32}}


# -- data -------------------------------------------------------------------------------------------------
def load_scifact() -> tuple[list[dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    queries = [json.loads(line) for line in (DATA / "queries.jsonl").open()]
    corpus = {}
    for line in (DATA / "corpus.jsonl").open():
        d = json.loads(line)
        corpus[d["_id"]] = f"{d['title']} {d['text']}"
    qrels: dict[str, dict[str, int]] = {}
    for line in list((DATA / "qrels" / "test.tsv").open())[1:]:
        qid, did, score = line.strip().split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return queries, corpus, qrels


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# -- speed ------------------------------------------------------------------------------------------------
def part_speed(rounds: int, cache: Path, sizes: dict[str, dict[int, int]] = SPEED_TEXTS) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 2)
    queries, corpus, _ = load_scifact()
    rng = random.Random(0)
    q_texts = [q["text"] for q in rng.sample(queries, 128)]
    d_texts = rng.sample(list(corpus.values()), 128)
    model_dir = ensure_exported("minilm", cache)
    st = SentenceTransformer(str(resolve("minilm").path), device="cpu")
    onnx = {p: OnnxModel(model_dir, p, device="cpu") for p in ("fp32", "int8")}

    def run_backend(name: str, texts: list[str], batch: int) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            chunk = texts[i : i + batch]
            if name == "torch":
                st.encode(chunk, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
            else:
                m = onnx[name]
                run_sorted(m.run, m.tokenize(chunk), batch, 1 << 30)
        return len(texts) / (time.perf_counter() - t0)

    backends = ["torch", "fp32", "int8"]
    rates: dict[str, list[float]] = {}
    for name in backends:  # warm-up
        run_backend(name, q_texts[:8], 8)
    for r in range(rounds):
        for kind, texts in (("queries", q_texts), ("docs", d_texts)):
            for batch in sizes[kind]:
                # a rate needs only a few batches: long documents at small batches get a subset
                subset = texts[: sizes[kind][batch]]
                order = backends[:]
                rng.shuffle(order)
                for name in order:
                    rates.setdefault(f"{kind}|{batch}|{name}", []).append(run_backend(name, subset, batch))
        print(f"speed round {r + 1}/{rounds} done", flush=True)
    table = {k: summary(v) for k, v in rates.items()}
    ratios = {}
    for kind in ("queries", "docs"):
        for name in ("fp32", "int8"):
            for batch in sizes[kind]:
                per_round = [
                    a / b
                    for a, b in zip(
                        rates[f"{kind}|{batch}|{name}"], rates[f"{kind}|{batch}|torch"], strict=True
                    )
                ]
                ratios[f"{kind}|{batch}|{name}/torch"] = summary(per_round)
    return {
        "sentences_per_s": table,
        "speedup_vs_torch": ratios,
        "targets": {
            # latency ratio = 1 / throughput ratio at batch 1
            "int8_single_query_latency_vs_torch": 1 / ratios["queries|1|int8/torch"]["median"],
            "int8_single_query_latency_target": "<= 0.3",
            "int8_batch32_docs_throughput_vs_torch": ratios["docs|32|int8/torch"]["median"],
            "int8_batch32_queries_throughput_vs_torch": ratios["queries|32|int8/torch"]["median"],
            "int8_batch32_throughput_target": ">= 1.2",
        },
        "texts_per_measurement": sizes,
    }


# -- rerank -----------------------------------------------------------------------------------------------
def part_rerank(rounds: int, cache: Path) -> dict[str, Any]:
    queries, corpus, _ = load_scifact()
    rng = random.Random(1)
    docs = list(corpus.values())
    model_dir = ensure_exported("ms-marco-l12", cache)
    # pairs truncated at 256 tokens, the serving default (DOWSE_RERANK_MAX_LENGTH)
    graphs = ("fp32", "int8", "int8-dynamic")
    models = {p: OnnxModel(model_dir, p, device="cpu", max_length=256) for p in graphs}
    rates: dict[str, list[float]] = {}
    work = [(q["text"], rng.sample(docs, 20)) for q in rng.sample(queries, rounds)]
    for r, (q, ds) in enumerate(work):
        order = list(models)
        rng.shuffle(order)
        for name in order:
            m = models[name]
            t0 = time.perf_counter()
            run_sorted(m.run, m.tokenize_pairs(q, ds), 32, 1 << 30)
            rates.setdefault(name, []).append(len(ds) / (time.perf_counter() - t0))
        print(f"rerank round {r + 1}/{rounds} done", flush=True)
    return {"pairs_per_s": {k: summary(v) for k, v in rates.items()}, "pairs_per_query": 20}


# -- http -------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(batching: bool, cache: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = _free_port()
    env = dict(
        os.environ,
        DOWSE_MODEL_CACHE=str(cache),
        DOWSE_EXTRA_MODELS="[]",
        DOWSE_BATCHING=str(batching).lower(),
        DOWSE_LOG_LEVEL="WARNING",
        DOWSE_DATA_DIR=str(CACHE / "bench-embed-data"),
    )
    cmd = [sys.executable, "-m", "services.cli", "serve", "--role", "embedder", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("embedder server did not start")


async def _load(base: str, texts: list[str], clients: int, per_client: int) -> dict[str, float]:
    import httpx

    lat: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker(k: int) -> None:
            for j in range(per_client):
                t = time.perf_counter()
                r = await client.post(
                    "/v1/embeddings", json={"input": texts[(k * per_client + j) % len(texts)]}
                )
                r.raise_for_status()
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {
        "rps": len(lat) / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
    }


def part_http(rounds: int, cache: Path, clients: int = 16, per_client: int = 20) -> dict[str, Any]:
    queries, _, _ = load_scifact()
    texts = [q["text"] for q in queries]
    servers = {name: _start_server(name == "on", cache) for name in ("on", "off")}
    res: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    try:
        for base in (b for _, b in servers.values()):  # warm-up
            asyncio.run(_load(base, texts, clients, 2))
        rng = random.Random(2)
        for r in range(rounds):
            order = ["on", "off"]
            rng.shuffle(order)
            for name in order:
                out = asyncio.run(_load(servers[name][1], texts, clients, per_client))
                for k, v in out.items():
                    res[name].setdefault(k, []).append(v)
            print(f"http round {r + 1}/{rounds} done", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    ratio = [a / b for a, b in zip(res["on"]["rps"], res["off"]["rps"], strict=True)]
    return {
        "clients": clients,
        "requests_per_client": per_client,
        "batching_on": {k: summary(v) for k, v in res["on"].items()},
        "batching_off": {k: summary(v) for k, v in res["off"].items()},
        "rps_on_over_off": summary(ratio),
        "target": ">= 1.3x requests/s at equal or lower p99",
    }


# -- quality ----------------------------------------------------------------------------------------------
def _corpus_vectors(model: OnnxModel, ids: list[str], corpus: dict[str, str], tag: str) -> np.ndarray:
    path = CACHE / "embed-bench" / f"scifact-{tag}-{model.revision[:12]}.npy"
    if path.is_file():
        return np.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vecs = run_sorted(model.run, model.tokenize([corpus[i] for i in ids]), 32, 8192)
    print(f"embedded corpus with {tag} in {time.perf_counter() - t0:.0f} s", flush=True)
    np.save(path, vecs)
    return vecs


def _ndcg(qvecs: np.ndarray, dvecs: np.ndarray, qids: list[str], ids: list[str], qrels: dict) -> float:
    import pytrec_eval

    scores = qvecs @ dvecs.T
    run = {}
    for qi, qid in enumerate(qids):
        top = np.argsort(-scores[qi])[:100]
        run[qid] = {ids[j]: float(scores[qi, j]) for j in top}
    ev = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids}, {"ndcg_cut.10"})
    res = ev.evaluate(run)
    return float(np.mean([r["ndcg_cut_10"] for r in res.values()]))


def _cut(v: np.ndarray, d: int) -> np.ndarray:
    return l2_normalize(v[:, :d])


def part_quality(cache: Path, quick: bool = False) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    queries, corpus, qrels = load_scifact()
    ids = list(corpus)
    qids = [q["_id"] for q in queries if q["_id"] in qrels]
    qtext = {q["_id"]: q["text"] for q in queries}
    out: dict[str, Any] = {}
    model_dir = ensure_exported("minilm", cache)
    models = {p: OnnxModel(model_dir, p, device="cpu") for p in ("fp32", "int8")}

    # congruence on 500 texts: 250 queries + 250 documents
    rng = random.Random(5)
    texts = [qtext[q] for q in qids[:250]] + [corpus[i] for i in rng.sample(ids, 250)]
    ref = SentenceTransformer(str(resolve("minilm").path), device="cpu").encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
    )
    cong = {}
    for p, m in models.items():
        v = run_sorted(m.run, m.tokenize(texts), 32, 1 << 30)
        cos = (v * ref).sum(axis=1)
        cong[p] = {"min_cos": float(cos.min()), "mean_cos": float(cos.mean())}
    out["congruence_500"] = cong

    # dense-only nDCG@10, fp32 vs int8, then Matryoshka-style dims (int8 = what serves)
    dims_res: dict[str, dict[str, float]] = {}
    for p, m in models.items():
        if quick:  # embedding the 5,183-document corpus twice is the expensive part
            break
        dvecs = _corpus_vectors(m, ids, corpus, f"minilm-{p}")
        qvecs = run_sorted(m.run, m.tokenize([qtext[q] for q in qids]), 64, 1 << 30)
        out.setdefault("ndcg10", {})[p] = _ndcg(qvecs, dvecs, qids, ids, qrels)
        if p == "int8":
            cov = np.cov((dvecs - dvecs.mean(axis=0)).T)
            evals, evecs = np.linalg.eigh(cov)
            rot = evecs[:, np.argsort(-evals)].astype(np.float32)  # orthogonal: full-dim scores unchanged
            for d in (384, 256, 128, 64):
                dims_res[str(d)] = {
                    "raw": _ndcg(_cut(qvecs, d), _cut(dvecs, d), qids, ids, qrels),
                    "pca_rotated": _ndcg(_cut(qvecs @ rot, d), _cut(dvecs @ rot, d), qids, ids, qrels),
                }
    if not quick:
        out["ndcg10_int8_rel_change"] = out["ndcg10"]["int8"] / out["ndcg10"]["fp32"] - 1
        out["dims_ndcg10_int8"] = dims_res

    # cross-encoder sanity: each judged relevant pair vs a random non-relevant document
    ce = OnnxModel(ensure_exported("ms-marco-l12", cache), "int8", device="cpu")
    rng = random.Random(11)
    wins_q = 0
    pairs = 0
    pair_wins = 0
    for qid in qids[:100] if quick else qids:
        rel = [d for d, s in qrels[qid].items() if s > 0]
        neg = rng.choice([d for d in rng.sample(ids, 5) if d not in qrels[qid]])
        s = ce.run(ce.tokenize_pairs(qtext[qid], [corpus[d] for d in rel] + [corpus[neg]]))
        ok = [bool(x > s[-1]) for x in s[:-1]]
        pairs += len(ok)
        pair_wins += sum(ok)
        wins_q += int(all(ok))
    out["cross_encoder_sanity"] = {
        "queries": min(len(qids), 100) if quick else len(qids),
        "queries_all_relevant_above_random": wins_q / (min(len(qids), 100) if quick else len(qids)),
        "pairs_above_random": pair_wins / pairs,
        "target": ">= 0.95 of queries",
    }
    return out


# -- report -----------------------------------------------------------------------------------------------
def render(results: dict[str, Any]) -> str:
    lines = [
        "# Embedder benchmark",
        "",
        f"Command: `{results.get('command', '')}`; machine: {results.get('machine')}",
        "",
    ]
    sp = results.get("speed")
    if sp:
        lines += ["## Sentences/s (median of rounds, [min-max])", ""]
        lines += ["| texts | batch | torch | onnx fp32 | onnx int8 (served) | int8/torch |"]
        lines += ["|---|---|---|---|---|---|"]
        for kind in ("queries", "docs"):
            for b in BATCHES:
                if f"{kind}|{b}|torch" not in sp["sentences_per_s"]:
                    continue
                cells = []
                for name in ("torch", "fp32", "int8"):
                    s = sp["sentences_per_s"][f"{kind}|{b}|{name}"]
                    cells.append(f"{s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]")
                ratio = sp["speedup_vs_torch"][f"{kind}|{b}|int8/torch"]["median"]
                lines.append(f"| {kind} | {b} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
        t = sp["targets"]
        lines += [
            "",
            f"int8 single-query latency = {t['int8_single_query_latency_vs_torch']:.2f}x torch "
            "(target <= 0.3); int8 batch-32 throughput = "
            f"{t['int8_batch32_docs_throughput_vs_torch']:.2f}x torch on documents, "
            f"{t['int8_batch32_queries_throughput_vs_torch']:.2f}x on queries (target >= 1.2).",
            "",
        ]
    rr = results.get("rerank")
    if rr:
        lines += [
            "## Cross-encoder pairs/s (20 SciFact documents per query)",
            "",
            "| graph | pairs/s |",
            "|---|---|",
        ]
        for k, s in rr["pairs_per_s"].items():
            lines.append(f"| {k} | {s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}] |")
        lines.append("")
    ht = results.get("http")
    if ht:
        lines += [f"## HTTP, {ht['clients']} concurrent clients, one query per request", ""]
        lines += ["| batching | requests/s | p50 ms | p99 ms |", "|---|---|---|---|"]
        for name in ("batching_on", "batching_off"):
            s = ht[name]
            lines.append(
                f"| {name.split('_')[1]} | {s['rps']['median']:.1f} "
                f"[{s['rps']['min']:.1f}-{s['rps']['max']:.1f}]"
                f" | {s['p50_ms']['median']:.1f} | {s['p99_ms']['median']:.1f} |"
            )
        lines += ["", f"requests/s on/off = {ht['rps_on_over_off']['median']:.2f}x (target >= 1.3x)", ""]
    q = results.get("quality")
    if q:
        c = q["congruence_500"]
        lines += [
            "## Quality (SciFact)",
            "",
            f"- min cosine vs sentence-transformers torch on 500 texts: fp32 {c['fp32']['min_cos']:.6f}, "
            f"int8 {c['int8']['min_cos']:.4f}",
            f"- cross-encoder: relevant above random non-relevant for "
            f"{100 * q['cross_encoder_sanity']['queries_all_relevant_above_random']:.1f}% of "
            f"{q['cross_encoder_sanity']['queries']} queries",
        ]
        if "ndcg10" in q:
            lines += [
                f"- dense-only nDCG@10: fp32 {q['ndcg10']['fp32']:.4f}, int8 {q['ndcg10']['int8']:.4f} "
                f"({100 * q['ndcg10_int8_rel_change']:+.2f}%)",
                "",
                "| dims | nDCG@10 raw truncation | after PCA rotation (fit on the corpus) |",
                "|---|---|---|",
            ]
            for d, v in q["dims_ndcg10_int8"].items():
                lines.append(f"| {d} | {v['raw']:.4f} | {v['pca_rotated']:.4f} |")
        else:
            lines.append(
                "- nDCG@10 / dims table: not run (`--quick`); run `python bench/embed.py --part quality`"
            )
        lines.append("")
    inv = results.get("invariance")
    if inv:
        lines += [
            "## Batch invariance (SciFact queries + documents alone vs inside mixed batches of 8)",
            "",
            "| graph | min cosine |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.5f} |" for k, v in inv.items()] + [""]
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> None:
    q = results.get("quality")
    if not q or "dims_ndcg10_int8" not in q:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [int(d) for d in q["dims_ndcg10_int8"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, label in (("raw", "truncate"), ("pca_rotated", "PCA rotation + truncate")):
        ax.plot(dims, [q["dims_ndcg10_int8"][str(d)][key] for d in dims], marker="o", label=label)
    ax.set_xlabel("dimensions")
    ax.set_ylabel("SciFact nDCG@10")
    ax.set_title("MiniLM (int8) Matryoshka-style truncation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "embed_dims.png", dpi=120)


def part_invariance(cache: Path, half: int = 16) -> dict[str, float]:
    queries, corpus, _ = load_scifact()
    rng = random.Random(9)
    texts = [q["text"] for q in queries[:half]] + list(corpus.values())[:half]
    others = [q["text"] for q in queries[16:80]] + list(corpus.values())[16:80]
    out = {}
    for name in ("minilm", "bge-small"):
        for p in ("int8", "int8-dynamic", "fp32"):
            m = OnnxModel(ensure_exported(name, cache), p, device="cpu")
            worst = 1.0
            for t in texts:
                alone = m.run(m.tokenize([t]))[0]
                comp = rng.sample(others, 7)
                worst = min(worst, float(m.run(m.tokenize(comp[:3] + [t] + comp[3:]))[3] @ alone))
            out[f"{name} {p}"] = worst
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part", choices=["all", "speed", "rerank", "http", "quality", "invariance"], default="all"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=CACHE / "models")
    ap.add_argument("--quick", action="store_true", help="smaller speed/http workloads for a busy machine")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "embed.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = describe()
    parts = ["speed", "rerank", "http", "invariance", "quality"] if args.part == "all" else [args.part]
    completed: list[str] = []
    for part in parts:
        t0 = time.perf_counter()
        if part == "speed":
            results["speed"] = part_speed(args.rounds, args.cache, QUICK_TEXTS if args.quick else SPEED_TEXTS)
        elif part == "rerank":
            results["rerank"] = part_rerank(args.rounds, args.cache)
        elif part == "http":
            results["http"] = part_http(args.rounds, args.cache, per_client=8 if args.quick else 20)
        elif part == "quality":
            results["quality"] = part_quality(args.cache, args.quick)
        else:
            results["invariance"] = part_invariance(args.cache, 8 if args.quick else 16)
        seconds = time.perf_counter() - t0
        completed.append(part)
        done = {k: results[k] for k in completed}
        results = json.loads(path.read_text()) if path.is_file() else {}  # other parts may have run meanwhile
        results.update(done)
        results["machine"] = describe()
        results.setdefault("seconds", {})[part] = seconds
        results["command"] = " ".join(["python", "bench/embed.py", *sys.argv[1:]])
        path.write_text(json.dumps(results, indent=2))
        (RESULTS / "embed.md").write_text(render(results))
        plot(results)
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(render(results)))


if __name__ == "__main__":
    main()
