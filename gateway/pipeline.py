"""The hybrid search pipeline: BM25 and dense retrieval in parallel, fusion, optional cross-encoder rerank.

``SearchPipeline`` talks to the embedder and the indexer only through their client protocols
(``embedder.client.EmbedderClient``, ``indexer.client.IndexerClient``), so the same code serves the
in-process build and the three-service deployment. Every stage has a timeout; failures degrade instead
of failing where a useful answer remains:

- embedder down / timed out / circuit open -> BM25-only results, ``degraded`` says why;
- lexical search failed (hybrid) -> dense-only results, flagged;
- reranker failed or over its budget -> the fused first-stage order, flagged.

User errors (unknown collection, bad filters) are never swallowed: they propagate as their 4xx category.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np

from embedder.client import EmbedderClient
from embedder.errors import DowseError, InvalidInput, NotFound, NotReady, Overloaded, TooLarge
from gateway import fusion, search_defaults
from gateway.errors import CircuitOpen, EmbedderUnavailable, InvalidSearch, SearchFailed
from gateway.search_types import CircuitBreaker, SearchHit, SearchLimits, SearchRequest, SearchResponse
from indexer.client import Hit, IndexerClient
from indexer.filters import compile_filters
from indexer.manifest import NAME_RE

log = logging.getLogger(__name__)

T = TypeVar("T")
__all__ = ["CircuitBreaker", "SearchHit", "SearchLimits", "SearchPipeline", "SearchRequest", "SearchResponse"]
MODES = ("bm25", "dense", "hybrid")
FUSIONS = ("rrf", "convex")
# User errors: propagate even where a retriever failure would otherwise degrade the answer.
_USER_ERRORS = (InvalidInput, TooLarge, NotFound, NotReady)


class _Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}

    def add(self, name: str, start: float) -> None:
        self.timings[name] = round((time.perf_counter() - start) * 1000.0, 3)

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, DowseError):
        return exc.message
    return "failed"  # the exception class is logged, never shown to clients


def _reason(stage: str, exc: BaseException) -> str:
    """A short code for a fallback, ``<stage>_<cause>``: the reason label of the degraded-search metric.

    ``stage``: embed (query embedding), dense / bm25 (an indexer retriever), rerank; ``cause``: timeout,
    overloaded (the embedder's queue was full), circuit_open, failed.
    """
    if stage == "dense" and isinstance(exc, EmbedderUnavailable):
        stage = "embed"
    if isinstance(exc, CircuitOpen):
        return f"{stage}_circuit_open"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError | asyncio.TimeoutError):
            return f"{stage}_timeout"
        if isinstance(seen, Overloaded):
            return f"{stage}_overloaded"
        seen = seen.__cause__
    return f"{stage}_failed"


class SearchPipeline:
    """Hybrid search over an indexer collection with query embedding, fusion and optional reranking."""

    def __init__(
        self,
        embedder: EmbedderClient,
        indexer: IndexerClient,
        *,
        embed_timeout_s: float = 2.0,
        retrieve_timeout_s: float = 5.0,
        rerank_timeout_s: float = 5.0,
        search_timeout_s: float = 10.0,
        default_candidates: int = 100,
        default_alpha: float = 0.5,
        default_rerank_top_n: int = 20,
        default_rerank_weight: float | None = None,
        rerank_model: str | None = None,
        info_ttl_s: float = 5.0,
        limits: SearchLimits | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.embedder = embedder
        self.indexer = indexer
        self.embed_timeout_s = embed_timeout_s
        self.retrieve_timeout_s = retrieve_timeout_s
        self.rerank_timeout_s = rerank_timeout_s
        self.search_timeout_s = search_timeout_s
        self.default_candidates = default_candidates
        self.default_alpha = default_alpha
        self.default_rerank_top_n = default_rerank_top_n
        self.default_rerank_weight = default_rerank_weight
        self.rerank_model = rerank_model
        self.info_ttl_s = info_ttl_s
        self.limits = limits or SearchLimits()
        self.breaker = breaker or CircuitBreaker()
        self._info: dict[str, tuple[float, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ validation
    def validate(self, req: SearchRequest) -> SearchRequest:
        """Check every field against its limit and fill defaults; raises ``InvalidSearch``."""
        lim = self.limits
        if not isinstance(req.collection, str) or not req.collection.strip():
            raise InvalidSearch("collection must be a non-empty string", field="collection")
        if not NAME_RE.fullmatch(req.collection):
            raise InvalidSearch(
                f"collection name must match {NAME_RE.pattern}", field="collection", limit=NAME_RE.pattern
            )
        if not isinstance(req.query, str) or not req.query.strip():
            raise InvalidSearch("query must be a non-empty string", field="query", limit=1)
        if len(req.query) > lim.max_query_chars:
            raise InvalidSearch(
                f"query is longer than {lim.max_query_chars} characters",
                field="query",
                limit=lim.max_query_chars,
            )
        if not 1 <= req.top_k <= lim.max_top_k:
            raise InvalidSearch(f"top_k must be in [1, {lim.max_top_k}]", field="top_k", limit=lim.max_top_k)
        if req.mode not in MODES:
            raise InvalidSearch(f"unknown mode {req.mode!r}; choose from {list(MODES)}", field="mode")
        if req.fusion not in FUSIONS:
            raise InvalidSearch(f"unknown fusion {req.fusion!r}; choose from {list(FUSIONS)}", field="fusion")
        if not 0 <= req.rrf_k <= 10_000:
            raise InvalidSearch("rrf_k must be in [0, 10000]", field="rrf_k", limit=10_000)
        alpha = self.default_alpha if req.alpha is None else req.alpha
        if not 0.0 <= alpha <= 1.0:
            raise InvalidSearch("alpha must be in [0, 1]", field="alpha", limit=1)
        if req.normalization not in fusion.NORMALIZATIONS:
            raise InvalidSearch(
                f"unknown normalization {req.normalization!r}; choose from {list(fusion.NORMALIZATIONS)}",
                field="normalization",
            )
        cands = req.candidates if req.candidates is not None else max(self.default_candidates, req.top_k)
        if not 1 <= cands <= lim.max_candidates:
            raise InvalidSearch(
                f"candidates must be in [1, {lim.max_candidates}]",
                field="candidates",
                limit=lim.max_candidates,
            )
        if cands < req.top_k:
            raise InvalidSearch("candidates must be >= top_k", field="candidates", limit=req.top_k)
        top_n = self.default_rerank_top_n if req.rerank_top_n is None else req.rerank_top_n
        if not 1 <= top_n <= lim.max_rerank_top_n:
            raise InvalidSearch(
                f"rerank_top_n must be in [1, {lim.max_rerank_top_n}]",
                field="rerank_top_n",
                limit=lim.max_rerank_top_n,
            )
        weight = req.rerank_weight  # None: chosen per collection and first stage in search()
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise InvalidSearch("rerank_weight must be in [0, 1]", field="rerank_weight", limit=1)
        if req.filters is not None and not isinstance(req.filters, dict):
            raise InvalidSearch("filters must be an object of metadata key -> condition", field="filters")
        compile_filters(req.filters or None)  # the indexer's own syntax check: 422 naming filters.<key>
        if req.instruction is not None and len(req.instruction) > lim.max_query_chars:
            raise InvalidSearch(
                f"instruction is longer than {lim.max_query_chars} characters",
                field="instruction",
                limit=lim.max_query_chars,
            )
        return replace(
            req,
            alpha=alpha,
            candidates=cands,
            rerank_top_n=top_n,
            rerank_weight=weight,
            filters=req.filters or None,
        )

    # ------------------------------------------------------------------ stages
    async def _timed(self, aw: Awaitable[T], timeout_s: float, timer: _Timer, name: str) -> T:
        start = time.perf_counter()
        try:
            return await asyncio.wait_for(aw, timeout=max(timeout_s, 0.001))
        finally:
            timer.add(name, start)

    async def _indexer(self, aw: Awaitable[T], timeout_s: float, timer: _Timer, name: str) -> T:
        """An indexer call with a timeout; anything but a typed error becomes ``SearchFailed`` (424)."""
        try:
            return await self._timed(aw, timeout_s, timer, name)
        except DowseError:
            raise
        except TimeoutError as exc:
            raise SearchFailed(f"indexer {name} timed out after {timeout_s:.1f} s", field="indexer") from exc
        except Exception as exc:
            log.exception("indexer %s failed", name)
            raise SearchFailed(f"indexer {name} failed", field="indexer") from exc

    def _remaining(self, timer: _Timer) -> float:
        return self.search_timeout_s - timer.elapsed_s()

    async def collection_info(self, name: str) -> dict[str, Any]:
        """The collection manifest, cached for ``info_ttl_s`` (unknown collection -> ``NotFound``)."""
        now = time.monotonic()
        cached = self._info.get(name)
        if cached is not None and now - cached[0] < self.info_ttl_s:
            return cached[1]
        info = await self.indexer.collection_info(name)
        self._info[name] = (now, info)
        return info

    async def served_defaults(self, name: str) -> dict[str, Any]:
        """The rerank weight each first stage is served with on collection ``name``, and its source."""
        if not NAME_RE.fullmatch(name):
            raise InvalidSearch(f"collection name must match {NAME_RE.pattern}", field="collection")
        aw = self.collection_info(name)
        info = await self._indexer(aw, self.retrieve_timeout_s, _Timer(), "collection")
        table = search_defaults.served_table(info, self.default_rerank_weight)
        return {"collection": name, "rerank_top_n": self.default_rerank_top_n, "rerank_weight": table}

    async def _embed_query(self, req: SearchRequest, info: dict[str, Any], timer: _Timer) -> np.ndarray:
        if not self.breaker.allow():
            raise CircuitOpen("embedder circuit open after repeated failures", field="embedder")
        aw = self.embedder.embed(
            [req.query],
            model=info.get("model"),
            prompt_name=None if req.instruction else info.get("query_prompt", "query"),
            instruction=req.instruction,
            dimensions=info.get("query_dims", info.get("dims")),  # rotating collections: full dims
            priority="interactive",  # a search waits for it: ahead of ingest micro-batches
        )
        try:
            res = await self._timed(aw, min(self.embed_timeout_s, self._remaining(timer)), timer, "embed")
        except Exception as exc:
            # Any embedder failure degrades the answer (even a 4xx such as a model the embedder has not
            # loaded: the user's query is still answerable by BM25); only outages count for the breaker.
            if not isinstance(exc, _USER_ERRORS):
                self.breaker.failure()
            raise EmbedderUnavailable(f"embedder: {_describe(exc)}", field="embedder") from exc
        self.breaker.success()
        return np.asarray(res.vectors[0], dtype=np.float32)

    async def _dense(self, req: SearchRequest, info: dict[str, Any], timer: _Timer) -> list[Hit]:
        vec = await self._embed_query(req, info, timer)
        assert req.candidates is not None
        aw = self.indexer.search_dense(
            req.collection, vec, req.candidates, req.filters, texts=self._texts_needed(req)
        )
        return await self._indexer(aw, min(self.retrieve_timeout_s, self._remaining(timer)), timer, "dense")

    @staticmethod
    def _texts_needed(req: SearchRequest) -> int:
        """Leading hits per retriever that carry their text: 3x what is shown (and reranked).

        Fusion lifts documents both retrievers found at middling ranks above either list's top few, so
        the final top-k reaches past each list's top-k; at 3x the fetch afterwards (`_passages`) found
        nothing left to read on SciFact, while the other candidates travel as ids and scores only.
        """
        assert req.top_k is not None
        n = max(req.top_k, req.rerank_top_n or 0) if req.rerank else req.top_k
        return 3 * n

    async def _lexical(self, req: SearchRequest, timer: _Timer) -> list[Hit]:
        assert req.candidates is not None
        aw = self.indexer.search_lexical(
            req.collection, req.query, req.candidates, req.filters, texts=self._texts_needed(req)
        )
        return await self._indexer(aw, min(self.retrieve_timeout_s, self._remaining(timer)), timer, "bm25")

    async def _retrieve(
        self,
        req: SearchRequest,
        info: dict[str, Any],
        timer: _Timer,
        reasons: list[str],
    ) -> tuple[list[Hit] | None, list[Hit] | None, list[str]]:
        """Run the retrievers the mode needs, concurrently; returns (lexical, dense, degradation notes).

        Each fallback also appends its code (see :func:`_reason`) to ``reasons``."""
        notes: list[str] = []
        lexical: list[Hit] | None = None
        dense: list[Hit] | None = None
        start = time.perf_counter()
        if req.mode == "bm25":
            lexical = await self._lexical(req, timer)
        elif req.mode == "hybrid":
            lex_res, den_res = await asyncio.gather(
                self._lexical(req, timer), self._dense(req, info, timer), return_exceptions=True
            )
            for res in (lex_res, den_res):
                if isinstance(res, _USER_ERRORS):
                    raise res
                if isinstance(res, BaseException) and not isinstance(res, Exception):
                    raise res  # cancellation and friends
            if isinstance(den_res, BaseException):
                notes.append(f"dense retrieval unavailable ({_describe(den_res)}): bm25 only")
                reasons.append(_reason("dense", den_res))
            else:
                dense = den_res
            if isinstance(lex_res, BaseException):
                notes.append(f"lexical retrieval unavailable ({_describe(lex_res)}): dense only")
                reasons.append(_reason("bm25", lex_res))
            else:
                lexical = lex_res
            if lexical is None and dense is None:
                raise SearchFailed(f"all retrievers failed: {'; '.join(notes)}", field="indexer")
        else:  # dense
            try:
                dense = await self._dense(req, info, timer)
            except _USER_ERRORS:
                raise
            except Exception as exc:
                notes.append(f"dense retrieval unavailable ({_describe(exc)}): bm25 only")
                reasons.append(_reason("dense", exc))
                try:
                    lexical = await self._lexical(req, timer)
                except _USER_ERRORS:
                    raise
                except Exception as exc2:
                    raise SearchFailed(
                        f"dense and fallback lexical retrieval failed ({_describe(exc2)})", field="indexer"
                    ) from exc2
        timer.add("retrieve", start)
        return lexical, dense, notes

    @staticmethod
    def _fuse(req: SearchRequest, lexical: list[Hit] | None, dense: list[Hit] | None) -> list[fusion.Fused]:
        lex = [(h.id, h.score) for h in lexical] if lexical is not None else []
        den = [(h.id, h.score) for h in dense] if dense is not None else []
        if lexical is not None and dense is not None:
            if req.fusion == "rrf":
                return fusion.rrf([lex, den], k=req.rrf_k)
            assert req.alpha is not None
            return fusion.convex_pair(lex, den, req.alpha, req.normalization)
        # One retriever: keep its raw scores, but in the two-slot layout (bm25, dense) for explain.
        recs = fusion.single(lex if lexical is not None else den)
        if lexical is None:
            for r in recs:
                r.ranks, r.scores = [None, r.ranks[0]], [None, r.scores[0]]
        else:
            for r in recs:
                r.ranks, r.scores = [r.ranks[0], None], [r.scores[0], None]
        return recs

    async def _passages(
        self, collection: str, ids: list[str], hits: dict[str, Hit]
    ) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """(title, text, metadata) per id, from the retrievers' hits or, if missing there, the store."""
        out: dict[str, tuple[str, str, dict[str, Any]]] = {}
        missing: list[str] = []
        for i in ids:
            h = hits.get(i)
            if h is not None and (h.text or h.title):
                out[i] = (h.title, h.text, dict(h.metadata))
            else:
                missing.append(i)
        if missing:
            aw = self.indexer.get_documents(collection, missing)
            for doc in await self._indexer(aw, self.retrieve_timeout_s, _Timer(), "documents"):
                out[str(doc["id"])] = (
                    str(doc.get("title") or ""),
                    str(doc.get("text") or ""),
                    dict(doc.get("metadata") or {}),
                )
        return out

    async def _rerank(
        self,
        req: SearchRequest,
        head: list[fusion.Fused],
        docs: dict[str, tuple[str, str, dict[str, Any]]],
        timer: _Timer,
    ) -> list[float]:
        if not self.breaker.allow():
            raise CircuitOpen("embedder circuit open after repeated failures", field="embedder")
        texts = [f"{docs[r.id][0]} {docs[r.id][1]}".strip() if r.id in docs else "" for r in head]
        texts = [t or " " for t in texts]
        budget = min(self.rerank_timeout_s, self._remaining(timer))
        if budget <= 0:
            raise TimeoutError
        aw = self.embedder.rerank(req.query, texts, model=self.rerank_model, priority="interactive")
        try:
            scores = await self._timed(aw, budget, timer, "rerank")
        except TimeoutError:
            raise  # slow, not broken: keep the circuit closed
        except Exception as exc:
            if not isinstance(exc, _USER_ERRORS):
                self.breaker.failure()
            raise EmbedderUnavailable(f"reranker: {_describe(exc)}", field="embedder") from exc
        self.breaker.success()
        if len(scores) != len(head):
            raise SearchFailed("reranker returned a wrong number of scores", field="embedder")
        return [float(s) for s in scores]

    # ------------------------------------------------------------------ entry point
    async def search(self, request: SearchRequest) -> SearchResponse:
        """Run one search; degraded answers say why in ``degraded``."""
        timer = _Timer()
        req = self.validate(request)
        start = time.perf_counter()
        info = await self._indexer(
            self.collection_info(req.collection), self.retrieve_timeout_s, timer, "collection"
        )
        # an alias resolves to its collection here, once, for every later call of this search
        req = replace(req, collection=str(info.get("name") or req.collection))
        stage = search_defaults.stage_key(req.mode, req.fusion)
        weight, weight_source = search_defaults.choose_rerank_weight(
            req.rerank_weight, stage, info, self.default_rerank_weight
        )
        req = replace(req, rerank_weight=weight)
        reasons: list[str] = []
        lexical, dense, notes = await self._retrieve(req, info, timer, reasons)
        start = time.perf_counter()
        fused = self._fuse(req, lexical, dense)
        timer.add("fusion", start)

        hits_by_id: dict[str, Hit] = {}
        for lst in (dense or [], lexical or []):
            for h in lst:
                have = hits_by_id.get(h.id)
                if have is None or not (have.text or have.title):  # keep the copy that carries text
                    hits_by_id[h.id] = h

        final: list[fusion.Fused] = fused
        rerank_scores: dict[str, float] = {}
        blended: dict[str, float] = {}
        # weight 0 keeps the first-stage order exactly: the cross-encoder call would change nothing
        if req.rerank and fused and weight > 0.0:
            assert req.rerank_top_n is not None and req.rerank_weight is not None
            head = fused[: req.rerank_top_n]
            docs = await self._passages(req.collection, [r.id for r in head], hits_by_id)
            try:
                ce = await self._rerank(req, head, docs, timer)
            except Exception as exc:
                notes.append(f"rerank skipped ({_describe(exc)}): fused order")
                reasons.append(_reason("rerank", exc))
            else:
                mixed = fusion.blend_rerank([r.score for r in head], ce, req.rerank_weight)
                for r, s, m in zip(head, ce, mixed, strict=True):
                    rerank_scores[r.id] = s
                    blended[r.id] = m
                position = {r.id: i for i, r in enumerate(head)}
                tail = fused[req.rerank_top_n :]
                # keep hit scores monotonic: the tail is placed on the head's blended scale, below it
                tail_scores = fusion.blend_tail(
                    [r.score for r in head], ce, [r.score for r in tail], req.rerank_weight
                )
                blended.update({r.id: s for r, s in zip(tail, tail_scores, strict=True)})
                head = sorted(head, key=lambda r: (-blended[r.id], position[r.id]))
                final = head + tail

        top = final[: req.top_k]
        start = time.perf_counter()
        docs = await self._passages(req.collection, [r.id for r in top], hits_by_id)
        timer.add("fetch", start)
        first_rank = {r.id: i + 1 for i, r in enumerate(fused)}
        weight_info = {"weight": weight, "weight_source": weight_source}
        out: list[SearchHit] = []
        for r in top:
            title, text, meta = docs.get(r.id, ("", "", {}))
            hit = SearchHit(id=r.id, score=blended.get(r.id, r.score), title=title, text=text, metadata=meta)
            if req.explain:
                hit.explain = {
                    "bm25": _stage(r, 0),
                    "dense": _stage(r, 1),
                    "fused": {
                        "rank": first_rank[r.id],
                        "score": r.score,
                        "method": _method(req, lexical, dense),
                    },
                    "rerank": _rerank_explain(req, r.id, rerank_scores, blended, weight_info),
                }
            out.append(hit)
        timer.timings["total"] = round(timer.elapsed_s() * 1000.0, 3)
        degraded = "; ".join(notes) if notes else None
        if degraded:
            log.warning("degraded search on %s: %s", req.collection, degraded)
        failed = _failed_shards(lexical, dense)
        return SearchResponse(
            hits=out,
            timings_ms=timer.timings,
            degraded=degraded,
            degraded_reasons=reasons,
            failed_shards=failed,
        )


def _rerank_explain(
    req: SearchRequest,
    doc_id: str,
    scores: dict[str, float],
    blended: dict[str, float],
    weight_info: dict[str, Any],
) -> dict[str, Any] | None:
    """A hit's rerank explain: its scores (if reranked) and the weight with where it came from."""
    if not req.rerank:
        return None
    if doc_id in scores:
        return {"score": scores[doc_id], "blended": blended[doc_id], **weight_info}
    if weight_info["weight"] == 0.0:
        return {"score": None, "blended": None, "skipped": "weight 0 keeps the fused order", **weight_info}
    return None


def _failed_shards(*lists: list[Hit] | None) -> list[dict[str, Any]]:
    """Shards missing from either retriever's merged hits (one entry per shard, first reason kept)."""
    out: dict[int, dict[str, Any]] = {}
    for lst in lists:
        for f in getattr(lst, "failed_shards", None) or []:
            out.setdefault(f.shard, f.to_dict())
    return [out[k] for k in sorted(out)]


def _stage(rec: fusion.Fused, slot: int) -> dict[str, Any] | None:
    rank = rec.ranks[slot] if slot < len(rec.ranks) else None
    if rank is None:
        return None
    return {"rank": rank, "score": rec.scores[slot]}


def _method(req: SearchRequest, lexical: list[Hit] | None, dense: list[Hit] | None) -> str:
    if lexical is not None and dense is not None:
        return "rrf" if req.fusion == "rrf" else f"convex:{req.normalization}"
    return "bm25" if lexical is not None else "dense"
