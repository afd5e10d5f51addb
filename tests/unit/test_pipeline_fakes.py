"""Fake embedder / indexer clients for plumbing tests of the search pipeline (no quality claims)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np

from embedder.client import EmbedResult
from embedder.errors import DependencyFailed, InvalidInput, NotFound
from indexer.client import Hit

DOCS = {
    "d1": ("Alpha", "aspirin reduces fever and pain"),
    "d2": ("Beta", "vitamin d deficiency and bone loss"),
    "d3": ("Gamma", "aspirin lowers the risk of heart attack"),
    "d4": ("Delta", "exercise improves heart health"),
    "d5": ("Eps", "bone density increases with vitamin intake"),
    "d6": ("Zeta", "fever in children treated with paracetamol"),
}
META = {"d1": {"year": 2001}, "d2": {"year": 2010}, "d3": {"year": 2015}}


def _vec(text: str, dims: int = 16) -> np.ndarray:
    """A bag-of-words hash embedding: deterministic, shared words -> higher cosine."""
    v = np.zeros(dims, dtype=np.float32)
    for w in text.lower().split():
        h = int(hashlib.md5(w.encode()).hexdigest(), 16)
        v[h % dims] += 1.0
    n = np.linalg.norm(v)
    return v / n if n else v


class FakeEmbedder:
    """Deterministic embedder with switchable failure modes and a call log."""

    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.delay_s = 0.0
        self.rerank_delay_s = 0.0
        self.calls: list[dict[str, Any]] = []
        self.rerank_calls: list[tuple[str, list[str]]] = []
        self.rerank_priorities: list[str | None] = []

    async def embed(
        self,
        texts: list[str],
        *,
        model: str | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> EmbedResult:
        self.calls.append(
            {
                "texts": texts,
                "model": model,
                "prompt_name": prompt_name,
                "instruction": instruction,
                "dimensions": dimensions,
                "priority": priority,
            }
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        vecs = np.stack([_vec(t) for t in texts])
        return EmbedResult(vectors=vecs, token_counts=[len(t.split()) for t in texts], model=model or "fake")

    async def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        model: str | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> list[float]:
        self.rerank_calls.append((query, documents))
        self.rerank_priorities.append(priority)
        if self.rerank_delay_s:
            await asyncio.sleep(self.rerank_delay_s)
        if self.fail is not None:
            raise self.fail
        # "cross-encoder": prefers documents whose text is longer (an order unlike BM25's)
        return [float(len(d)) / 10.0 for d in documents]

    async def model_info(self, model: str | None = None) -> dict[str, Any]:
        return {"name": model or "fake", "dim": 16}

    async def aclose(self) -> None:
        return None


class FakeIndexer:
    """In-memory collection 'sci': word-overlap BM25 stand-in and exact dot-product dense search."""

    def __init__(self) -> None:
        self.lexical_delay_s = 0.0
        self.dense_delay_s = 0.0
        self.lexical_fail: Exception | None = None
        self.info_calls = 0
        self.search_defaults: dict[str, Any] | None = None  # what `dowse eval` stored for the collection
        self.model = "fake-model"

    def _check(self, name: str) -> None:
        if name != "sci":
            raise NotFound(f"collection {name!r} not found", field="collection")

    def _filter(self, filters: dict[str, Any] | None) -> list[str]:
        ids = list(DOCS)
        if not filters:
            return ids
        for key, cond in filters.items():
            if not isinstance(cond, int | str):
                raise InvalidInput(f"bad filter on {key}", field=f"filters.{key}")
            ids = [i for i in ids if META.get(i, {}).get(key) == cond]
        return ids

    def _hit(self, i: str, score: float, with_text: bool = True) -> Hit:
        if not with_text:  # the real indexer's contract: ids and scores only past the first ``texts``
            return Hit(id=i, score=score)
        return Hit(id=i, score=score, title=DOCS[i][0], text=DOCS[i][1], metadata=META.get(i, {}))

    async def collection_info(self, name: str) -> dict[str, Any]:
        self.info_calls += 1
        self._check(name)
        return {
            "name": name,
            "model": self.model,
            "dims": 16,
            "query_prompt": "query",
            "prompt": "passage",
            "search_defaults": self.search_defaults,
        }

    async def search_dense(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> list[Hit]:
        self._check(name)
        if self.dense_delay_s:
            await asyncio.sleep(self.dense_delay_s)
        ids = self._filter(filters)
        scored = [(i, float(_vec(f"{DOCS[i][0]} {DOCS[i][1]}") @ vector)) for i in ids]
        scored.sort(key=lambda x: (-x[1], x[0]))
        return [self._hit(i, s, texts is None or n < texts) for n, (i, s) in enumerate(scored[:k])]

    async def search_lexical(
        self,
        name: str,
        query: str,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> list[Hit]:
        self._check(name)
        if self.lexical_delay_s:
            await asyncio.sleep(self.lexical_delay_s)
        if self.lexical_fail is not None:
            raise self.lexical_fail
        q = set(query.lower().split())
        scored = [(i, float(len(q & set(DOCS[i][1].split())))) for i in self._filter(filters)]
        scored = [x for x in scored if x[1] > 0]
        scored.sort(key=lambda x: (-x[1], x[0]))
        return [self._hit(i, s, texts is None or n < texts) for n, (i, s) in enumerate(scored[:k])]

    async def get_documents(self, name: str, ids: list[str]) -> list[dict[str, Any]]:
        self._check(name)
        return [
            {"id": i, "title": DOCS[i][0], "text": DOCS[i][1], "metadata": META.get(i, {})}
            for i in ids
            if i in DOCS
        ]

    async def aclose(self) -> None:
        return None


def outage() -> Exception:
    """What the HTTP embedder client raises when the embedder process is gone."""
    return DependencyFailed("embedder unreachable at http://127.0.0.1:1: ConnectError", field="embedder")
