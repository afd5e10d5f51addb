"""A deterministic bag-of-words embedder for fast plumbing tests only (never for quality or speed claims).

Each lowercase word maps to a fixed pseudo-random unit vector (seeded by its hash); a text is the
normalised sum, so texts sharing words are close. Implements ``embedder.client.EmbedderClient``."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

from embedder.client import EmbedResult
from embedder.errors import InvalidInput

_WORD = re.compile(r"\w+")


class FakeEmbedder:
    """Hashing embedder with the EmbedderClient protocol; ``calls`` counts embed() calls."""

    def __init__(self, dim: int = 32, name: str = "fake", revision: str = "r1", fail: bool = False) -> None:
        self.dim = dim
        self.name = name
        self.revision = revision
        self.fail = fail
        self.calls = 0
        self.priorities: list[str | None] = []  # the priority of each embed() call
        self._cache: dict[str, np.ndarray] = {}

    def _word(self, w: str) -> np.ndarray:
        vec = self._cache.get(w)
        if vec is None:
            seed = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            self._cache[w] = vec
        return vec

    def encode(self, texts: list[str], dimensions: int | None = None) -> np.ndarray:
        """Vectors for ``texts`` (sync)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in _WORD.findall(t.lower()):
                out[i] += self._word(w)
            if not out[i].any():
                out[i] = self._word("<empty>")
        d = dimensions or self.dim
        out = out[:, :d]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

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
        """Embed like the real client (model name checked); records the priority asked for."""
        self.calls += 1
        self.priorities.append(priority)
        if self.fail:
            raise ConnectionError("fake embedder is down")
        if model not in (None, self.name):
            raise InvalidInput(f"unknown model {model!r}", field="model", limit=[self.name])
        if dimensions is not None and not 1 <= dimensions <= self.dim:
            raise InvalidInput("bad dimensions", field="dimensions", limit=self.dim)
        vecs = self.encode(texts, dimensions)
        return EmbedResult(vecs, [len(_WORD.findall(t)) for t in texts], self.name)

    async def rerank(
        self,
        query: str,
        documents: list[str],
        *,
        model: str | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> list[float]:
        """Cosine of the fake vectors as a stand-in score."""
        q = self.encode([query])[0]
        return [float(v @ q) for v in self.encode(documents)]

    async def model_info(self, model: str | None = None) -> dict[str, Any]:
        """Preset-like info."""
        if model not in (None, self.name):
            raise InvalidInput(f"unknown model {model!r}", field="model", limit=[self.name])
        return {
            "name": self.name,
            "dim": self.dim,
            "max_length": 64,
            "pooling": "mean",
            "kind": "bi-encoder",
            "prompts": {"query": "", "passage": ""},
            "revision": self.revision,
        }

    async def aclose(self) -> None:
        """Nothing to release."""
