"""Indexer benchmark: SciFact quality + ingest rate, BM25 engines, dense ANN on >= 1M x 384 clustered vectors.

Parts (run all, or some with --part; each merges its section into bench/results/index.json and rewrites
bench/results/index.md):

- ``quality``: SciFact test nDCG@10 / Recall@100 through IndexerService (BM25 tantivy en_stem, dense minilm
  flat, SQ8 + rescoring, binary + rescoring, HNSW) from a collection built by ``dowse index`` (real embedder).
- ``bm25``: nDCG@10 and single-thread QPS of tantivy (chosen) vs bm25s vs rank_bm25 on the SciFact queries.
- ``ingest``: IndexerService upsert docs/s with embedding (real in-process embedder) and without (replayed
  vectors: chunking + SQLite + FAISS + tantivy only), interleaved rounds.
- ``ann``: >= 1M x 384 vectors derived from real SciFact embeddings (hierarchical clusters around them);
  flat / HNSW / SQ8+rescore / binary+rescore: recall@10 vs exact, single-thread QPS, bytes per vector.

Speed numbers are ratios vs a peer in the same run (interleaved rounds, median and spread); absolute
numbers depend on the machine's load at the time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
CACHE = REPO / ".cache" / "index-bench"
log = logging.getLogger("bench.index")


# ---- shared helpers ---------------------------------------------------------------------------------
def load_results() -> dict[str, Any]:
    path = RESULTS / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_section(name: str, data: dict[str, Any]) -> None:
    res = load_results()
    res[name] = data
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "index.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "index.md").write_text(render_md(res))
    if "ann" in res:
        plot_ann(res["ann"], RESULTS / "index.png")


def plot_ann(ann: dict[str, Any], path: Path) -> None:
    """Recall@10 vs single-thread QPS (log scale) of every dense index on the 1M set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    hnsw = [
        (r["qps"]["median"], r["recall@10"], k) for k, r in ann["indexes"].items() if k.startswith("hnsw")
    ]
    if hnsw:
        ax.plot([h[0] for h in hnsw], [h[1] for h in hnsw], "o-", label="HNSW (efSearch sweep)")
        for q, r, k in hnsw:
            ax.annotate(
                k.split("efSearch=")[-1], (q, r), textcoords="offset points", xytext=(4, -10), fontsize=8
            )
    for k, r in ann["indexes"].items():
        if not k.startswith("hnsw") and "qps" in r:
            ax.plot(
                [r["qps"]["median"]], [r["recall@10"]], "s", label=f"{k} ({r['bytes_per_vector']:.0f} B/vec)"
            )
    ax.set_xscale("log")
    ax.set_xlabel("queries/s, one thread (median of interleaved rounds)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title(f"{ann['n']:,} x {ann['dims']} clustered vectors from real SciFact embeddings")
    ax.axhline(0.95, color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "rounds": len(xs)}


def load_scifact() -> tuple[list[dict[str, Any]], dict[str, str], dict[str, dict[str, int]]]:
    corpus = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
    queries = {
        q["_id"]: q["text"] for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())
    }
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.strip().split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return corpus, queries, qrels


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    from ranx import Qrels, Run
    from ranx import evaluate as rx_eval

    run = {q: (r if r else {"__none__": 0.0}) for q, r in run.items() if q in qrels}
    scores = rx_eval(Qrels(qrels), Run(run), ["ndcg@10", "recall@100"])
    return {
        "ndcg@10": round(float(scores["ndcg@10"]), 4),
        "recall@100": round(float(scores["recall@100"]), 4),
    }


def make_embedder(precision: str) -> Any:
    from embedder.inprocess import InProcessEmbedderClient
    from embedder.service import EmbeddingService

    svc = EmbeddingService(
        REPO / ".cache" / "models", [], default_model="minilm", precision=precision, batching=False
    )
    svc.start_blocking()
    return InProcessEmbedderClient(svc)


# ---- quality ----------------------------------------------------------------------------------------
def copy_collection(src: Path, dst: Path, name: str, index: dict[str, Any]) -> None:
    """A new collection sharing the source's stored chunks + embeddings (SQLite backup API, consistent)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    man = json.loads((src / "manifest.json").read_text())
    man["name"] = name
    man["index"] = {**man["index"], **index}
    (dst / "manifest.json").write_text(json.dumps(man))
    s = sqlite3.connect(f"file:{src / 'store.sqlite'}?mode=ro", uri=True)
    d = sqlite3.connect(dst / "store.sqlite")
    s.backup(d)
    d.execute("DELETE FROM jobs")
    d.commit()
    d.close()
    s.close()


def merge_store(dst: Path, other: Path) -> int:
    """Add the documents (and their chunks + embeddings) of another build of the same collection that
    ``dst`` lacks: two ``dowse index`` runs over the same corpus (same manifest) split the work."""
    conn = sqlite3.connect(dst)
    conn.execute(f"ATTACH 'file:{other}?mode=ro' AS o")
    base = conn.execute("SELECT coalesce(max(dno), 0) FROM main.docs").fetchone()[0]
    conn.execute(
        "CREATE TEMP TABLE m AS SELECT d.*, ? + row_number() OVER (ORDER BY d.dno) AS ndno FROM o.docs d "
        "WHERE d.id NOT IN (SELECT id FROM main.docs)",
        (base,),
    )
    added = conn.execute("SELECT count(*) FROM m").fetchone()[0]
    conn.execute(
        "INSERT INTO main.docs(id, dno, title, text, metadata, seq, n_chunks) "
        "SELECT id, ndno, title, text, metadata, seq, n_chunks FROM m"
    )
    conn.execute(
        "INSERT INTO main.chunks(dno, chunk_no, start, end, seq, emb) "
        "SELECT m.ndno, c.chunk_no, c.start, c.end, c.seq, c.emb FROM o.chunks c JOIN m ON m.dno = c.dno"
    )
    conn.execute("INSERT OR REPLACE INTO main.meta VALUES ('next_dno', (SELECT max(dno) FROM main.docs))")
    conn.commit()
    conn.close()
    return int(added)


async def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    from indexer.service import IndexerService

    corpus, queries, qrels = load_scifact()
    src = Path(args.source)
    n_src = (
        sqlite3.connect(f"file:{src / 'store.sqlite'}?mode=ro", uri=True)
        .execute("SELECT count(*) FROM docs")
        .fetchone()[0]
    )
    manifest = json.loads((src / "manifest.json").read_text())
    root = CACHE / "quality"
    specs = {
        "flat": {"type": "flat", "code": None},
        "sq8+rescore": {"type": "flat", "code": "sq8"},
        "binary+rescore": {"type": "flat", "code": "binary"},
        "hnsw": {"type": "hnsw", "code": None},
    }
    merged = 0
    if args.merge_from:
        copy_collection(src, CACHE / "merged", "merged", {})
        merged = merge_store(CACHE / "merged" / "store.sqlite", Path(args.merge_from) / "store.sqlite")
        src = CACHE / "merged"
        n_src = sqlite3.connect(src / "store.sqlite").execute("SELECT count(*) FROM docs").fetchone()[0]
    if n_src < len(corpus) and not args.allow_partial:
        raise SystemExit(f"{src} holds {n_src} of {len(corpus)} SciFact documents")
    for name, spec in specs.items():
        copy_collection(src, root / "collections" / name, name, spec)
    precision = args.precision
    embedder = make_embedder(precision)
    svc = IndexerService(root, embedder)
    t0 = time.perf_counter()
    await svc.open()
    open_s = time.perf_counter() - t0
    qids = [q for q in queries if q in qrels]
    parts = []
    for i in range(0, len(qids), 100):
        res = await embedder.embed(
            [queries[q] for q in qids[i : i + 100]],
            model=manifest["model"],
            prompt_name="query",
            dimensions=manifest["dims"],
        )
        parts.append(np.asarray(res.vectors, np.float32))
    qvecs = np.concatenate(parts)
    out: dict[str, Any] = {
        "source": str(args.source),
        "merged_from": args.merge_from,
        "merged_docs": merged,
        "documents": n_src,
        "model": manifest["model"],
        "query_precision": precision,
        "chunk_tokens": manifest["chunk_tokens"],
        "results": {},
    }
    run: dict[str, dict[str, float]] = {}
    for q in qids:
        hits = await svc.search_lexical("flat", queries[q], 100)
        run[q] = {h.id: h.score for h in hits}
    out["results"]["bm25 (tantivy en_stem)"] = evaluate(run, qrels)
    for name in specs:
        run = {}
        for q, vec in zip(qids, qvecs, strict=True):
            hits = await svc.search_dense(name, vec, 100)
            run[q] = {h.id: h.score for h in hits}
        out["results"][f"dense {name}"] = evaluate(run, qrels)
        out["results"][f"dense {name}"]["stats"] = (await svc.collection_info(name))["stats"]["dense_index"]
        # nDCG@10 of a top-10 search: codes get only k * rescore candidates (not the top-100's larger pool)
        run10 = {}
        for q, vec in zip(qids, qvecs, strict=True):
            run10[q] = {h.id: h.score for h in await svc.search_dense(name, vec, 10)}
        out["results"][f"dense {name}"]["ndcg@10 (k=10 search)"] = evaluate(run10, qrels)["ndcg@10"]
    flat = out["results"]["dense flat"]["ndcg@10 (k=10 search)"]
    for name in ("sq8+rescore", "binary+rescore", "hnsw"):
        out["results"][f"dense {name}"]["vs_flat"] = round(
            out["results"][f"dense {name}"]["ndcg@10 (k=10 search)"] / flat, 4
        )
    out["open_replay_s"] = round(open_s, 2)
    await svc.close()
    return out


# ---- BM25 engines -----------------------------------------------------------------------------------
def run_bm25(args: argparse.Namespace) -> dict[str, Any]:
    import bm25s
    import Stemmer
    from rank_bm25 import BM25Okapi

    from indexer.lexical import LexicalIndex, sanitize_query

    corpus, queries, qrels = load_scifact()
    qids = [q for q in queries if q in qrels]
    texts = [f"{d.get('title', '')}\n{d['text']}" for d in corpus]
    ids = [d["_id"] for d in corpus]
    stemmer = Stemmer.Stemmer("english")

    t0 = time.perf_counter()
    root = CACHE / "bm25-tantivy"
    shutil.rmtree(root, ignore_errors=True)
    lex = LexicalIndex(root)
    lex.apply([], [(i, "", t) for i, t in enumerate(texts)], 1)
    build = {"tantivy": time.perf_counter() - t0}

    t0 = time.perf_counter()
    tok = bm25s.tokenize(texts, stopwords=[], stemmer=stemmer, show_progress=False)
    b25 = bm25s.BM25(k1=1.5, b=0.75)  # Lucene defaults, as tantivy
    b25.index(tok, show_progress=False)
    build["bm25s"] = time.perf_counter() - t0

    def rb_tok(t: str) -> list[str]:
        return stemmer.stemWords(sanitize_query(t).split())

    t0 = time.perf_counter()
    rb = BM25Okapi([rb_tok(t) for t in texts], k1=1.5, b=0.75)
    build["rank_bm25"] = time.perf_counter() - t0

    def q_tantivy(q: str) -> dict[str, float]:
        dnos, scores = lex.search(q, 100)
        return {ids[int(d)]: float(s) for d, s in zip(dnos, scores, strict=True)}

    def q_bm25s(q: str) -> dict[str, float]:
        qt = bm25s.tokenize([q], stopwords=[], stemmer=stemmer, show_progress=False)
        docs, scores = b25.retrieve(qt, k=100, show_progress=False, n_threads=1)
        return {ids[int(d)]: float(s) for d, s in zip(docs[0], scores[0], strict=True)}

    def q_rank(q: str) -> dict[str, float]:
        scores = rb.get_scores(rb_tok(q))
        top = np.argsort(-scores)[:100]
        return {ids[int(i)]: float(scores[i]) for i in top}

    engines = {"tantivy": q_tantivy, "bm25s": q_bm25s, "rank_bm25": q_rank}
    quality = {name: evaluate({q: fn(queries[q]) for q in qids}, qrels) for name, fn in engines.items()}
    qps: dict[str, list[float]] = {n: [] for n in engines}
    for _ in range(args.rounds):  # interleaved rounds
        for name, fn in engines.items():
            t0 = time.perf_counter()
            for q in qids:
                fn(queries[q])
            qps[name].append(len(qids) / (time.perf_counter() - t0))
    lex.close()
    out = {"queries": len(qids), "documents": len(texts), "engines": {}}
    for name in engines:
        out["engines"][name] = {
            **quality[name],
            "qps": spread(qps[name]),
            "build_s": round(build[name], 2),
            "qps_vs_tantivy": round(statistics.median(qps[name]) / statistics.median(qps["tantivy"]), 3),
        }
    return out


# ---- ingest -----------------------------------------------------------------------------------------
class ReplayEmbedder:
    """Returns vectors computed earlier for the same texts: ingest timing without embedding time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cache: dict[str, np.ndarray] = {}

    async def embed(self, texts: list[str], **kw: Any) -> Any:
        from embedder.client import EmbedResult

        missing = [t for t in texts if t not in self.cache]
        if missing:
            res = await self.inner.embed(missing, **kw)
            self.cache.update(zip(missing, np.asarray(res.vectors), strict=True))
        return EmbedResult(np.stack([self.cache[t] for t in texts]), [], "minilm")

    async def model_info(self, model: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = await self.inner.model_info(model)
        return out

    async def rerank(self, *a: Any, **kw: Any) -> list[float]:
        return []

    async def aclose(self) -> None:
        return None


async def run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from indexer.service import IndexerService

    corpus, _, _ = load_scifact()
    docs = [
        {"id": d["_id"], "title": d.get("title", ""), "text": d["text"]} for d in corpus[: args.ingest_docs]
    ]
    real = make_embedder(args.precision)
    replay = ReplayEmbedder(real)
    rates: dict[str, list[float]] = {"with embedding": [], "without embedding (replayed vectors)": []}
    await replay.embed(
        [f"{d['title']}\n{d['text']}" for d in docs[:1]], model="minilm", prompt_name="passage"
    )
    for r in range(args.rounds):
        for label, emb in (("with embedding", real), ("without embedding (replayed vectors)", replay)):
            root = CACHE / "ingest"
            shutil.rmtree(root, ignore_errors=True)
            svc = IndexerService(root, emb)
            await svc.open()
            await svc.create_collection("c", model="minilm")
            if label.startswith("without") and r == 0:  # warm the replay cache outside the timed region
                pass
            t0 = time.perf_counter()
            for i in range(0, len(docs), 64):
                await svc.upsert("c", docs[i : i + 64])
            rates[label].append(len(docs) / (time.perf_counter() - t0))
            if label == "with embedding":  # fill the replay cache with exactly these passages
                coll = svc._collections["c"]
                with coll.store.reader() as conn:
                    rows = conn.execute(
                        "SELECT d.title, d.text, c.start, c.end, c.emb FROM chunks c "
                        "JOIN docs d ON d.dno = c.dno"
                    ).fetchall()
                for title, text, s, e, emb_blob in rows:
                    key = f"{title}\n{text[s:e]}" if title else text[s:e]
                    replay.cache[key] = np.frombuffer(emb_blob, np.float32)
            await svc.close()
    return {
        "documents": len(docs),
        "batch": 64,
        "precision": args.precision,
        "docs_per_s": {k: spread(v) for k, v in rates.items()},
    }


# ---- ANN on >= 1M vectors ---------------------------------------------------------------------------
def real_embeddings(source: Path) -> np.ndarray:
    conn = sqlite3.connect(f"file:{source / 'store.sqlite'}?mode=ro", uri=True)
    man = json.loads((source / "manifest.json").read_text())
    blobs = [r[0] for r in conn.execute("SELECT emb FROM chunks")]
    return np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), man["dims"]).copy()


def synth(centers: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Hierarchical clusters: real vector -> 32 sub-centres (cos ~0.9) -> points (cos ~0.93 to sub-centre)."""
    rng = np.random.default_rng(seed)
    d = centers.shape[1]
    sub_per = 32
    subs = np.repeat(centers, sub_per, axis=0)
    subs = subs + rng.standard_normal(subs.shape, dtype=np.float32) * (0.48 / np.sqrt(d))
    subs /= np.linalg.norm(subs, axis=1, keepdims=True)
    out = np.empty((n, d), np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        pick = rng.integers(0, len(subs), m)
        x = subs[pick] + rng.standard_normal((m, d), dtype=np.float32) * (0.4 / np.sqrt(d))
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def run_ann(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from indexer.dense import DenseIndex
    from indexer.manifest import IndexSpec

    source = Path(args.source)
    centers = real_embeddings(source)
    n, d = args.n, centers.shape[1]
    t0 = time.perf_counter()
    base = synth(centers, n, seed=1)
    queries = synth(centers, args.queries, seed=2)
    gen_s = time.perf_counter() - t0
    ids = np.arange(n, dtype=np.int64)
    faiss.omp_set_num_threads(args.build_threads)
    t0 = time.perf_counter()
    gt_index = faiss.IndexFlatIP(d)
    gt_index.add(base)
    _, gt = gt_index.search(queries, 10)
    gt_s = time.perf_counter() - t0
    del gt_index

    def rescorer(cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cand = np.asarray(cand, np.int64)
        return cand, base[cand]

    configs: dict[str, tuple[IndexSpec, list[int]]] = {
        "flat": (IndexSpec(type="flat"), [0]),
        "sq8+rescore": (IndexSpec(type="flat", code="sq8", rescore=4), [0]),
        "binary+rescore": (IndexSpec(type="flat", code="binary", rescore=10), [0]),
        f"hnsw M={args.M} efC={args.efc}": (
            IndexSpec(type="hnsw", M=args.M, ef_construction=args.efc),
            [32, 64, 128, 256],
        ),
    }
    out: dict[str, Any] = {
        "n": n,
        "dims": d,
        "real_centres": len(centers),
        "queries": len(queries),
        "generate_s": round(gen_s, 1),
        "ground_truth_s": round(gt_s, 1),
        "build_threads": args.build_threads,
        "search_threads": 1,
        "indexes": {},
    }
    built: dict[str, DenseIndex] = {}
    for name, (spec, _) in configs.items():
        faiss.omp_set_num_threads(args.build_threads)
        idx = DenseIndex(d, "cosine", spec, hnsw_threshold=10**12)
        t0 = time.perf_counter()
        idx.rebuild([(ids, base)], n)
        build_s = time.perf_counter() - t0
        built[name] = idx
        out["indexes"][name] = {
            "build_s": round(build_s, 1),
            "bytes_per_vector": round(idx.bytes_per_vector(), 1),
            "structure": idx.kind + (f"+{idx.code}" if idx.code else ""),
        }
        log.info("built %s in %.1f s", name, build_s)
        print(f"built {name} in {build_s:.1f} s", flush=True)
    faiss.omp_set_num_threads(1)
    flat_q = min(args.flat_queries, len(queries))
    qps: dict[str, list[float]] = {}
    recall: dict[str, float] = {}
    for r in range(args.rounds):  # interleaved rounds, one thread, one query at a time
        for name, (_spec, efs) in configs.items():
            for ef in efs:
                key = name if ef == 0 else f"{name} efSearch={ef}"
                nq = flat_q if name in ("flat", "sq8+rescore") else len(queries)
                use_rescore = name.endswith("rescore")
                t0 = time.perf_counter()
                res = [
                    built[name].search(queries[i], 10, None, rescorer if use_rescore else None, ef or None)[0]
                    for i in range(nq)
                ]
                qps.setdefault(key, []).append(nq / (time.perf_counter() - t0))
                if r == 0:
                    recall[key] = float(np.mean([len(set(res[i]) & set(gt[i])) / 10 for i in range(nq)]))
        print(f"round {r} done", flush=True)
    flat_qps = statistics.median(qps["flat"])
    for key, xs in qps.items():
        name = key.split(" efSearch=")[0]
        out["indexes"].setdefault(key, dict(out["indexes"][name]))
        out["indexes"][key].update(
            {
                "recall@10": round(recall[key], 4),
                "qps": spread(xs),
                "speedup_vs_flat": round(statistics.median(xs) / flat_qps, 1),
            }
        )
    for name in configs:
        if name.startswith("hnsw"):
            out["indexes"].pop(name, None)
    return out


# ---- report -----------------------------------------------------------------------------------------
def render_md(res: dict[str, Any]) -> str:
    lines = ["# Indexer benchmark (bench/index.py)", ""]
    if "quality" in res:
        q = res["quality"]
        lines += [
            f"## SciFact quality ({q['documents']} docs, 300 test queries, model {q['model']}, "
            f"chunks of {q['chunk_tokens']} tokens)",
            "",
            "| retriever | nDCG@10 (top-100 run) | nDCG@10 (top-10 search) | Recall@100 | vs flat (top-10) |",
            "|---|---|---|---|---|",
        ]
        for name, r in q["results"].items():
            k10 = r.get("ndcg@10 (k=10 search)", "")
            lines.append(
                f"| {name} | {r['ndcg@10']:.4f} | {k10} | {r['recall@100']:.4f} | {r.get('vs_flat', '')} |"
            )
        lines.append("")
    if "bm25" in res:
        b = res["bm25"]
        lines += [
            "## BM25 engines (SciFact, single thread, top-100)",
            "",
            "| engine | nDCG@10 | QPS median (min-max) | vs tantivy | build s |",
            "|---|---|---|---|---|",
        ]
        for name, r in b["engines"].items():
            q = r["qps"]
            lines.append(
                f"| {name} | {r['ndcg@10']:.4f} | {q['median']:.0f} ({q['min']:.0f}-{q['max']:.0f}) | "
                f"{r['qps_vs_tantivy']} | {r['build_s']} |"
            )
        lines.append("")
    if "ingest" in res:
        g = res["ingest"]
        lines += [
            f"## Ingest ({g['documents']} SciFact docs, batches of {g['batch']})",
            "",
            "| path | docs/s median (min-max) |",
            "|---|---|",
        ]
        for name, s in g["docs_per_s"].items():
            lines.append(f"| {name} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) |")
        lines.append("")
    if "ann" in res:
        a = res["ann"]
        lines += [
            f"## Dense ANN: {a['n']:,} x {a['dims']} clustered vectors derived from {a['real_centres']} real "
            f"SciFact embeddings, {a['queries']} queries, 1 search thread",
            "",
            "| index | recall@10 | QPS median (min-max) | x flat | bytes/vector | build s |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in a["indexes"].items():
            if "qps" not in r:
                continue
            q = r["qps"]
            lines.append(
                f"| {name} | {r['recall@10']:.4f} | {q['median']:.1f} ({q['min']:.1f}-{q['max']:.1f}) | "
                f"{r['speedup_vs_flat']} | {r['bytes_per_vector']} | {r['build_s']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", action="append", choices=["quality", "bm25", "ingest", "ann"])
    p.add_argument(
        "--source",
        default=str(REPO / ".cache" / "index-bench" / "data" / "collections" / "scifact"),
        help="collection folder built by `dowse index` over SciFact (stored chunk embeddings)",
    )
    p.add_argument("--precision", default="int8")
    p.add_argument("--merge-from", help="a second build of the same collection to merge (split work)")
    p.add_argument("--allow-partial", action="store_true", help="smoke-test quality on a partial collection")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ingest-docs", type=int, default=128)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--flat-queries", type=int, default=100)
    p.add_argument("--M", type=int, default=32)
    p.add_argument("--efc", type=int, default=64)
    p.add_argument("--build-threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    CACHE.mkdir(parents=True, exist_ok=True)
    parts = args.part or ["bm25", "quality", "ingest", "ann"]
    from rich.console import Console
    from rich.markdown import Markdown

    for part in parts:
        t0 = time.perf_counter()
        if part == "quality":
            data = asyncio.run(run_quality(args))
        elif part == "bm25":
            data = run_bm25(args)
        elif part == "ingest":
            data = asyncio.run(run_ingest(args))
        else:
            data = run_ann(args)
        data["wall_s"] = round(time.perf_counter() - t0, 1)
        if part == "quality" and data["documents"] < 5183:
            print(json.dumps(data, indent=1))  # partial smoke run: not a result
            continue
        save_section(part, data)
    Console().print(Markdown((RESULTS / "index.md").read_text()))


if __name__ == "__main__":
    main()
