"""Offline evaluation of the search pipeline on a BEIR-format dataset (``dowse eval``).

Quality metrics come from pytrec_eval (nDCG@10, Recall@100; MRR@10 from the same run); latency is the
wall time of ``SearchPipeline.search`` per query, one query at a time (p50/p95/p99; QPS = queries / wall
time).

Tuning is by cross-validation over query folds, and only held-out numbers are reported: for each fold the
parameter (convex ``alpha`` or the rerank weight) is chosen on the other folds by mean nDCG@10 over a grid,
using the same fusion functions the pipeline runs, then the real pipeline answers that fold's queries with
the chosen value.

Cross-encoder scores are expensive on CPU (~1.7 s per query for 20 pairs on 2 cores), so evaluation
reranks through :class:`CachedReranker`, which stores scores per (model, query text, passage text) in
SQLite and computes only the missing ones. The rerank model is batch-invariant (fp32 graph), so a cached
score equals a live one. Latency of rerank configurations is measured live (cache bypassed) on a subset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from embedder.client import EmbedderClient, EmbedResult
from gateway import fusion
from gateway.pipeline import SearchPipeline, SearchRequest

log = logging.getLogger(__name__)

GRID = [round(i * 0.05, 2) for i in range(21)]
METRICS = ("ndcg@10", "recall@100", "mrr@10")


@dataclass
class Dataset:
    """BEIR queries and relevance judgements (only queries that have judgements)."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(path: Path, split: str = "test") -> Dataset:
    """Read ``queries.jsonl`` and ``qrels/<split>.tsv`` of a BEIR dataset folder."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path / "qrels" / f"{split}.tsv", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and parts[0] == "query-id":
                continue
            if len(parts) >= 3 and int(parts[2]) > 0:
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries: dict[str, str] = {}
    with open(path / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                q = json.loads(line)
                if str(q["_id"]) in qrels:
                    queries[str(q["_id"])] = str(q["text"])
    return Dataset(queries=queries, qrels={q: qrels[q] for q in queries})


def evaluate(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], per_query: bool = False
) -> dict[str, Any]:
    """pytrec_eval metrics of ``run`` (nDCG@10, Recall@100, MRR@10); means, or per-query dicts.

    Queries of ``qrels`` with an empty run count as 0. ``run`` scores must be strictly decreasing in rank
    order (trec_eval breaks score ties by document id, not by the run's order).
    """
    import pytrec_eval

    qids = [q for q in qrels if q in run]
    evaluator = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids}, {"ndcg_cut.10", "recall.100"})
    scores = evaluator.evaluate({q: run[q] for q in qids if run[q]})
    # MRR@10: reciprocal rank of the first relevant document within the top 10
    mrr: dict[str, float] = {}
    for q in qids:
        top = sorted(run[q].items(), key=lambda kv: -kv[1])[:10]
        mrr[q] = next((1.0 / (i + 1) for i, (d, _) in enumerate(top) if qrels[q].get(d, 0) > 0), 0.0)
    out = {
        "ndcg@10": {q: float(scores.get(q, {}).get("ndcg_cut_10", 0.0)) for q in qids},
        "recall@100": {q: float(scores.get(q, {}).get("recall_100", 0.0)) for q in qids},
        "mrr@10": mrr,
    }
    if per_query:
        return out
    return {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in out.items()}


def folds(qids: Sequence[str], k: int = 5, seed: int = 0) -> list[list[str]]:
    """Deterministic k-fold split of query ids."""
    ids = sorted(qids)
    random.Random(seed).shuffle(ids)
    return [ids[i::k] for i in range(k)]


def choose_value(
    per_query: dict[float, dict[str, float]], train: Sequence[str], prefer: float | None = None
) -> tuple[float, float]:
    """The grid value with the best mean over ``train`` (and that mean); see :func:`choose_by_cv`."""
    means = {val: statistics.fmean(per_query[val][q] for q in train) for val in sorted(per_query)}
    best_val, best_score = None, -1.0
    for val, score in means.items():
        if score > best_score + 1e-12:
            best_val, best_score = val, score
    assert best_val is not None
    if prefer is not None and len(train) > 1:
        admissible = []
        for val, score in means.items():
            diffs = [per_query[best_val][q] - per_query[val][q] for q in train]
            se = statistics.stdev(diffs) / math.sqrt(len(diffs))
            if best_score - score <= se + 1e-12:
                admissible.append(val)
        best_val = min(admissible, key=lambda v: (abs(v - prefer), v))
        best_score = means[best_val]
    return best_val, best_score


def choose_by_cv(
    per_query: dict[float, dict[str, float]],
    fold_ids: list[list[str]],
    prefer: float | None = None,
) -> list[tuple[float, float]]:
    """For each fold, the grid value chosen on the other folds (and its mean metric there).

    Without ``prefer`` the value with the best training mean wins. With ``prefer`` (the "do nothing"
    value, e.g. rerank weight 0) the one-standard-error rule applies: among the values whose training
    mean is within one standard error of the best (SE of the per-query paired difference to the best),
    the one closest to ``prefer`` wins, so a gain that the training queries cannot tell from noise
    does not move the default.
    """
    chosen = []
    for i in range(len(fold_ids)):
        train = [q for j, f in enumerate(fold_ids) if j != i for q in f]
        chosen.append(choose_value(per_query, train, prefer))
    return chosen


def latency_stats(latencies_s: Sequence[float], wall_s: float) -> dict[str, float]:
    """p50/p95/p99 in ms and QPS (queries / wall seconds, one query at a time)."""
    ms = sorted(x * 1000.0 for x in latencies_s)

    def pct(p: float) -> float:
        if not ms:
            return float("nan")
        idx = min(len(ms) - 1, max(0, math.ceil(p / 100.0 * len(ms)) - 1))  # nearest rank
        return ms[idx]

    return {
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "qps": len(ms) / wall_s if wall_s > 0 else float("nan"),
        "n": len(ms),
    }


class CachedReranker:
    """EmbedderClient wrapper whose ``rerank`` is served from an SQLite score cache (``live`` bypasses)."""

    def __init__(self, inner: EmbedderClient, path: Path, model_key: str = "ms-marco-l12") -> None:
        self.inner = inner
        self.model_key = model_key
        self.live = False
        self.computed = 0
        self.hits = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("CREATE TABLE IF NOT EXISTS ce (k TEXT PRIMARY KEY, score REAL)")

    def _key(self, query: str, doc: str) -> str:
        return hashlib.sha1(f"{self.model_key}\x00{query}\x00{doc}".encode()).hexdigest()

    async def embed(self, texts: list[str], **kw: Any) -> EmbedResult:
        """Pass through to the wrapped embedder."""
        return await self.inner.embed(texts, **kw)

    async def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        model: str | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> list[float]:
        """Cached cross-encoder scores; missing ones are computed in one call and stored."""
        if self.live:
            return await self.inner.rerank(
                query, documents, model=model, truncate=truncate, priority=priority
            )
        keys = [self._key(query, d) for d in documents]
        found: dict[str, float] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(f"SELECT k, score FROM ce WHERE k IN ({marks})", chunk).fetchall())
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(keys) - len(missing)
        if missing:
            scores = await self.inner.rerank(
                query, [documents[i] for i in missing], model=model, truncate=truncate, priority=priority
            )
            rows = [(keys[i], float(s)) for i, s in zip(missing, scores, strict=True)]
            self.db.executemany("INSERT OR REPLACE INTO ce VALUES (?, ?)", rows)
            self.db.commit()
            found.update(rows)
            self.computed += len(missing)
        return [found[k] for k in keys]

    async def model_info(self, model: str | None = None) -> dict[str, Any]:
        """Pass through."""
        return await self.inner.model_info(model)

    async def aclose(self) -> None:
        """Close the cache (the wrapped client is closed by its owner)."""
        self.db.close()


@dataclass
class EvalConfig:
    """One evaluated configuration: a base request plus what to tune by cross-validation."""

    name: str
    request: SearchRequest
    tune: str | None = None  # "alpha" | "rerank_weight" | None
    notes: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


async def run_queries(
    pipeline: SearchPipeline,
    queries: dict[str, str],
    base: SearchRequest,
    per_query: Callable[[str], dict[str, Any]] | None = None,
    warmup: int = 3,
) -> tuple[dict[str, dict[str, float]], dict[str, list[Any]], list[float], float, int]:
    """Run every query through the pipeline; returns (run, hits, latencies, wall seconds, degraded count)."""
    items = list(queries.items())
    for _qid, text in items[:warmup]:
        await pipeline.search(replace(base, query=text))
    run: dict[str, dict[str, float]] = {}
    hits: dict[str, list[Any]] = {}
    lat: list[float] = []
    degraded = 0
    t0 = time.perf_counter()
    for qid, text in items:
        req = replace(base, query=text, **(per_query(qid) if per_query else {}))
        s = time.perf_counter()
        resp = await pipeline.search(req)
        lat.append(time.perf_counter() - s)
        degraded += bool(resp.degraded)
        hits[qid] = resp.hits
        # metrics rank by score: encode the pipeline's order (ties included) as strictly decreasing scores
        run[qid] = {h.id: float(len(resp.hits) - i) for i, h in enumerate(resp.hits)}
    return run, hits, lat, time.perf_counter() - t0, degraded


def fused_lists(
    lex: dict[str, list[Any]], den: dict[str, list[Any]], alpha: float, normalization: str
) -> dict[str, dict[str, float]]:
    """Offline convex fusion of cached retriever lists (same function the pipeline uses) as a run."""
    run: dict[str, dict[str, float]] = {}
    for qid in lex:
        recs = fusion.convex_pair(
            [(h.id, h.score) for h in lex[qid]],
            [(h.id, h.score) for h in den.get(qid, [])],
            alpha,
            normalization,  # type: ignore[arg-type]
        )[:100]
        run[qid] = {r.id: float(len(recs) - i) for i, r in enumerate(recs)}
    return run


def blended_run(
    first: dict[str, list[Any]], ce: dict[str, list[float]], weight: float, top_n: int
) -> dict[str, dict[str, float]]:
    """Offline rerank blend of a first-stage run (hits with fused scores) with cached CE scores."""
    run: dict[str, dict[str, float]] = {}
    for qid, hits in first.items():
        head, tail = hits[:top_n], hits[top_n:]
        mixed = fusion.blend_rerank([h.score for h in head], ce[qid], weight) if head else []
        order = sorted(range(len(head)), key=lambda i: (-mixed[i], i))
        ranked = [head[i].id for i in order] + [h.id for h in tail]
        run[qid] = {d: float(len(ranked) - i) for i, d in enumerate(ranked)}
    return run


def passage(hit: Any) -> str:
    """The text the pipeline sends to the cross-encoder for a hit."""
    return f"{hit.title} {hit.text}".strip() or " "
