"""Typed errors of the search gateway (subclasses of the shared categories in ``embedder.errors``)."""

from __future__ import annotations

from embedder.errors import DependencyFailed, InvalidInput


class InvalidSearch(InvalidInput):
    """A search request value is out of range or unknown (HTTP 422, names the field and the limit)."""


class SearchFailed(DependencyFailed):
    """Every retriever the request needed failed or timed out (HTTP 424)."""


class EmbedderUnavailable(SearchFailed):
    """The embedder (query encoder or reranker) failed, timed out, or its circuit is open."""


class CircuitOpen(EmbedderUnavailable):
    """The embedder is skipped after repeated failures (the breaker's cooldown)."""
