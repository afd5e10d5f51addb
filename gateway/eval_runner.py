"""``dowse eval`` orchestration: build the in-process services, run every configuration, cross-validate.

Configurations (names accepted by ``--config``; a ``+rerank`` suffix blends the cross-encoder score with
the first stage, weight chosen by cross-validation; ``+ce`` is the plain cross-encoder order):

- ``bm25``: stemmed BM25 (the indexer's ``en_stem`` analyzer)
- ``dense-minilm``, ``dense-bge``: all-MiniLM-L6-v2 / bge-small-en v1 with its query instruction
- ``hybrid-rrf``: BM25 + MiniLM, RRF k=60 (untuned); ``hybrid-rrf-bge``: BM25 + bge-small
- ``hybrid-convex``: BM25 + MiniLM, min-max convex fusion, alpha by cross-validation (held-out only)
- ``hybrid-convex-0.5``: the same with the untuned default alpha 0.5
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from embedder.errors import NotFound
from gateway.eval import (
    GRID,
    CachedReranker,
    Dataset,
    blended_run,
    choose_by_cv,
    choose_value,
    evaluate,
    folds,
    fused_lists,
    latency_stats,
    passage,
    run_queries,
)
from gateway.pipeline import SearchLimits, SearchPipeline, SearchRequest
from gateway.search_defaults import merge_eval_defaults

log = logging.getLogger(__name__)

COLLECTIONS = {"minilm": "scifact-minilm", "bge-small": "scifact-bge-small"}
BASE = [
    "bm25",
    "dense-minilm",
    "dense-bge",
    "hybrid-rrf",
    "hybrid-rrf-bge",
    "hybrid-convex",
    "hybrid-convex-0.5",
]
RERANK_PRIORITY = ["hybrid-rrf", "bm25", "hybrid-convex", "dense-minilm", "dense-bge", "hybrid-rrf-bge"]
DEFAULT_CONFIGS = BASE + [f"{b}+{s}" for b in RERANK_PRIORITY for s in ("rerank", "ce")]
# Which served (collection model, first stage) a base configuration's tuned rerank weight applies to.
SERVE_STAGE = {
    "bm25": ("minilm", "bm25"),
    "dense-minilm": ("minilm", "dense"),
    "dense-bge": ("bge-small", "dense"),
    "hybrid-rrf": ("minilm", "hybrid-rrf"),
    "hybrid-rrf-bge": ("bge-small", "hybrid-rrf"),
    "hybrid-convex": ("minilm", "hybrid-convex"),
}


def base_request(name: str, prefix: str) -> SearchRequest:
    """The first-stage request of a base configuration."""
    lex = f"{prefix}{COLLECTIONS['minilm']}"
    table = {
        "bm25": SearchRequest(lex, "q", mode="bm25"),
        "dense-minilm": SearchRequest(lex, "q", mode="dense"),
        "dense-bge": SearchRequest(f"{prefix}{COLLECTIONS['bge-small']}", "q", mode="dense"),
        "hybrid-rrf": SearchRequest(lex, "q", mode="hybrid", fusion="rrf", rrf_k=60),
        "hybrid-rrf-bge": SearchRequest(
            f"{prefix}{COLLECTIONS['bge-small']}", "q", mode="hybrid", fusion="rrf"
        ),
        "hybrid-convex": SearchRequest(lex, "q", mode="hybrid", fusion="convex", normalization="min-max"),
        "hybrid-convex-0.5": SearchRequest(lex, "q", mode="hybrid", fusion="convex", alpha=0.5),
    }
    return replace(table[name], top_k=100, candidates=100)


class Evaluator:
    """Runs configurations over one dataset with one pipeline, caching first-stage results in memory."""

    def __init__(
        self,
        pipeline: SearchPipeline,
        reranker: CachedReranker,
        data: Dataset,
        *,
        n_folds: int = 5,
        rerank_top_n: int = 20,
        latency_queries: int = 20,
        collection_prefix: str = "",
    ) -> None:
        self.pipeline = pipeline
        self.reranker = reranker
        self.data = data
        self.fold_ids = folds(list(data.queries), n_folds)
        self.fold_of = {q: i for i, f in enumerate(self.fold_ids) for q in f}
        self.rerank_top_n = rerank_top_n
        self.latency_queries = latency_queries
        self.prefix = collection_prefix
        self.hits: dict[str, dict[str, list[Any]]] = {}
        self.per_query: dict[str, Any] = {}  # config -> per-fold params callback
        self.results: dict[str, dict[str, Any]] = {}
        # collection -> first stage -> the rerank weight to serve (chosen on every query) and its evidence
        self.serve_defaults: dict[str, dict[str, dict[str, Any]]] = {}

    def _row(self, name: str, run: dict[str, dict[str, float]], lat: dict[str, float], **extra: Any) -> None:
        row: dict[str, Any] = {"config": name, **evaluate(self.data.qrels, run), **lat, **extra}
        row["queries"] = len(run)
        self.results[name] = row
        log.info(
            "%s: nDCG@10 %.4f  R@100 %.4f  p50 %.1f ms",
            name,
            row["ndcg@10"],
            row["recall@100"],
            row["p50_ms"],
        )

    async def base(self, name: str) -> None:
        """Evaluate a first-stage configuration (alpha by CV for ``hybrid-convex``)."""
        if name in self.results:
            return
        req = base_request(name, self.prefix)
        extra: dict[str, Any] = {}
        cb = None
        if name == "hybrid-convex":
            for dep in ("bm25", "dense-minilm"):
                await self.base(dep)
            per_alpha = {
                a: evaluate(
                    self.data.qrels,
                    fused_lists(self.hits["bm25"], self.hits["dense-minilm"], a, "min-max"),
                    per_query=True,
                )["ndcg@10"]
                for a in GRID
            }
            chosen = choose_by_cv(per_alpha, self.fold_ids)
            alphas = [a for a, _ in chosen]
            extra["cv"] = {"param": "alpha", "per_fold": alphas, "train_ndcg@10": [s for _, s in chosen]}

            def cb(qid: str) -> dict[str, Any]:
                return {"alpha": alphas[self.fold_of[qid]]}

        run, hits, lat, wall, degraded = await run_queries(self.pipeline, self.data.queries, req, cb)
        self.hits[name] = hits
        self.per_query[name] = cb
        self._row(name, run, latency_stats(lat, wall), degraded=degraded, **extra)

    async def _ce_scores(self, name: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        for i, (qid, text) in enumerate(self.data.queries.items()):
            head = self.hits[name][qid][: self.rerank_top_n]
            out[qid] = await self.reranker.rerank(text, [passage(h) for h in head]) if head else []
            if i % 25 == 0:
                log.info(
                    "%s: cross-encoder scores for %d/%d queries (%.0f s, %d computed, %d cached)",
                    name,
                    i,
                    len(self.data.queries),
                    time.perf_counter() - t0,
                    self.reranker.computed,
                    self.reranker.hits,
                )
        return out

    async def rerank(self, name: str, plain: bool) -> None:
        """Evaluate ``<name>+rerank`` (CV weight) or ``<name>+ce`` (plain cross-encoder order)."""
        label = f"{name}+{'ce' if plain else 'rerank'}"
        if label in self.results:
            return
        await self.base(name)
        first_cb = self.per_query.get(name)
        req = replace(base_request(name, self.prefix), rerank=True, rerank_top_n=self.rerank_top_n)
        ce = await self._ce_scores(name)
        extra: dict[str, Any] = {"rerank_top_n": self.rerank_top_n}
        if plain:
            weights = [1.0] * len(self.fold_ids)
        else:
            per_w = {
                w: evaluate(
                    self.data.qrels, blended_run(self.hits[name], ce, w, self.rerank_top_n), per_query=True
                )["ndcg@10"]
                for w in GRID
            }
            # one-SE rule towards weight 0: the cross-encoder only moves the order where the
            # training folds show a gain larger than its noise ("reranking never makes it worse")
            chosen = choose_by_cv(per_w, self.fold_ids, prefer=0.0)
            weights = [w for w, _ in chosen]
            # the weight to serve: the same rule trained on every query (the CV above says how it generalises)
            serve_w, serve_score = choose_value(per_w, list(self.data.queries), prefer=0.0)
            extra["cv"] = {
                "param": "rerank_weight",
                "per_fold": weights,
                "train_ndcg@10": [s for _, s in chosen],
                "serve": serve_w,
            }
            model, stage = SERVE_STAGE[name]
            self.serve_defaults.setdefault(f"{self.prefix}{COLLECTIONS[model]}", {})[stage] = {
                "weight": serve_w,
                "config": label,
                "per_fold": weights,
                "ndcg@10_all_queries": round(serve_score, 4),
            }

        def cb(qid: str) -> dict[str, Any]:
            out = dict(first_cb(qid)) if first_cb else {}
            out["rerank_weight"] = weights[self.fold_of[qid]]
            return out

        run, _hits, _lat, _wall, degraded = await run_queries(self.pipeline, self.data.queries, req, cb)
        # latency: live cross-encoder (cache bypassed) on the first queries
        subset = dict(list(self.data.queries.items())[: self.latency_queries])
        self.reranker.live = True
        try:
            _r, _h, lat, wall, _d = await run_queries(self.pipeline, subset, req, cb, warmup=1)
        finally:
            self.reranker.live = False
        extra["latency_queries"] = len(subset)
        self._row(label, run, latency_stats(lat, wall), degraded=degraded, **extra)

    async def run(
        self, configs: list[str], rerank_budget_s: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """Evaluate ``configs`` in order; rerank configurations stop starting once the budget is spent."""
        t0 = time.perf_counter()
        for name in configs:
            if "+" in name:
                base, kind = name.split("+", 1)
                if rerank_budget_s is not None and time.perf_counter() - t0 > rerank_budget_s:
                    log.warning("skipping %s: rerank time budget spent", name)
                    continue
                await self.rerank(base, plain=(kind == "ce"))
            else:
                await self.base(name)
        return {n: self.results[n] for n in configs if n in self.results}


def validate_configs(configs: list[str]) -> list[str]:
    """Reject unknown configuration names (ValueError names the bad one)."""
    for c in configs:
        base, _, kind = c.partition("+")
        if base not in BASE or kind not in ("", "rerank", "ce") or (kind and base == "hybrid-convex-0.5"):
            raise ValueError(f"unknown config {c!r}; known: {', '.join(DEFAULT_CONFIGS)}")
    return configs


def eval_pipeline(embedder: Any, indexer: Any, rerank_top_n: int) -> SearchPipeline:
    """A pipeline with generous timeouts: evaluation must never silently degrade."""
    return SearchPipeline(
        embedder,
        indexer,
        embed_timeout_s=120.0,
        retrieve_timeout_s=120.0,
        rerank_timeout_s=600.0,
        search_timeout_s=900.0,
        default_rerank_top_n=rerank_top_n,
        limits=SearchLimits(max_top_k=100, max_candidates=1000, max_rerank_top_n=100),
    )


def models_needed(configs: list[str]) -> list[str]:
    """The bi-encoders whose collections the configurations read."""
    need = ["minilm"]
    if any(c.split("+")[0] in ("dense-bge", "hybrid-rrf-bge") for c in configs):
        need.append("bge-small")
    return need


async def ensure_collections(
    indexer_service: Any, dataset: Path, prefix: str = "", models: list[str] | None = None
) -> None:
    """Create and fill the SciFact collections (one per needed bi-encoder) unless already complete."""
    corpus = dataset / "corpus.jsonl"
    with open(corpus, encoding="utf-8") as fh:
        n_docs = sum(1 for line in fh if line.strip())
    for model, coll in COLLECTIONS.items():
        if models is not None and model not in models:
            continue
        name = f"{prefix}{coll}"
        try:
            info = await indexer_service.collection_info(name)
        except NotFound:
            await indexer_service.create_collection(name, model=model, index={"type": "flat"})
            info = await indexer_service.collection_info(name)
        if info.get("model") != model:
            raise ValueError(f"collection {name} holds {info.get('model')} vectors, expected {model}")
        have = info["stats"]["documents"]
        if have < n_docs:
            log.info("indexing %s into %s (%d/%d present)", corpus, name, have, n_docs)
            await indexer_service.run_ingest(name, corpus, None, batch_size=64)


async def store_serve_defaults(
    indexer_service: Any, chosen: dict[str, dict[str, dict[str, Any]]], run: dict[str, Any]
) -> list[str]:
    """Merge each collection's chosen rerank weights into its ``search_defaults.json``; returns paths."""
    paths = []
    for name, stages in chosen.items():
        info = await indexer_service.collection_info(name)
        doc = merge_eval_defaults(info.get("search_defaults"), stages, run)
        paths.append(str(await indexer_service.put_search_defaults(name, doc)))
    return paths
