"""Judges: would the cached response have been a correct answer, given the fresh LLM response?"""

from __future__ import annotations

import re
import unicodedata
from typing import Protocol

import numpy as np

from embedder.client import EmbedderClient

_WS = re.compile(r"\s+")


def _strip_edges(t: str) -> str:
    """``t`` without its leading and trailing runs of non-alphanumerics (``[\\W_]``), in linear time.

    The regex ``^[\\W_]+|[\\W_]+$`` it replaces retried the trailing branch at every position of an inner
    punctuation run: quadratic, 37 s for a 40 KB response on the event loop."""
    start, end = 0, len(t)
    while start < end and not t[start].isalnum():
        start += 1
    while end > start and not t[end - 1].isalnum():
        end -= 1
    return t[start:end]


def normalise(text: str) -> str:
    """NFKC, casefold, collapse whitespace, strip punctuation at both ends."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = _WS.sub(" ", t).strip()
    return _strip_edges(t)


class Judge(Protocol):
    """Decides whether ``cached`` is an acceptable answer where the LLM said ``fresh``."""

    name: str

    async def __call__(self, cached: str, fresh: str) -> bool:
        """True when reusing ``cached`` would have been correct."""
        ...


class ExactMatchJudge:
    """Correct iff the responses are equal after :func:`normalise` (the default)."""

    name = "exact"

    async def __call__(self, cached: str, fresh: str) -> bool:
        """Normalised exact match."""
        return normalise(cached) == normalise(fresh)


class EmbeddingJudge:
    """Correct iff the two responses' embeddings have cosine >= ``threshold``."""

    name = "embedding"

    def __init__(self, embedder: EmbedderClient, threshold: float = 0.9, model: str | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("judge threshold must lie in [0, 1]")
        self.embedder = embedder
        self.threshold = threshold
        self.model = model

    async def __call__(self, cached: str, fresh: str) -> bool:
        """Cosine of the two responses' embeddings against the threshold."""
        if normalise(cached) == normalise(fresh):
            return True
        res = await self.embedder.embed([cached, fresh], model=self.model)
        v = np.asarray(res.vectors, dtype=np.float32)
        return float(v[0] @ v[1]) >= self.threshold
