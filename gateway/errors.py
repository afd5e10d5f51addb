"""Typed errors of the search gateway (subclasses of the shared categories in ``embedder.errors``)."""

from __future__ import annotations

from typing import Any

from embedder.errors import DependencyFailed, InvalidInput, NotReady


class InvalidSearch(InvalidInput):
    """A search request value is out of range or unknown (HTTP 422, names the field and the limit)."""


class SearchFailed(DependencyFailed):
    """Every retriever the request needed failed or timed out (HTTP 424)."""


class EmbedderUnavailable(SearchFailed):
    """The embedder (query encoder or reranker) failed, timed out, or its circuit is open."""


class CircuitOpen(EmbedderUnavailable):
    """The embedder is skipped after repeated failures (the breaker's cooldown)."""


class ShardUnavailable(NotReady):
    """A write could not reach every shard it needed (HTTP 503); ``result`` says what was acknowledged.

    Writes are idempotent by document id, so retrying the whole request is safe: ids already written are
    overwritten with the same content."""

    type = "shard_unavailable"

    def __init__(self, message: str, *, field: str | None = None, result: dict[str, Any] | None = None):
        super().__init__(message, field=field)
        self.result: dict[str, Any] = result or {}
