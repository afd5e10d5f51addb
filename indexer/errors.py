"""Typed errors of the indexer; each subclasses one category of ``embedder.errors``."""

from __future__ import annotations

from embedder.errors import Conflict, InvalidInput, NotFound, NotReady, TooLarge


class CollectionNotFound(NotFound):
    """No collection of that name (HTTP 404)."""


class CollectionExists(Conflict):
    """A collection of that name already exists with another configuration (HTTP 409)."""


class ManifestMismatch(Conflict):
    """Vectors from another model / revision / dims than the collection's manifest pins (HTTP 409)."""


class InvalidDocument(InvalidInput):
    """A document in a batch is not acceptable (duplicate id, empty text, bad metadata) (HTTP 422)."""


class DocumentTooLarge(TooLarge):
    """A document or batch exceeds a size limit (HTTP 413)."""


class InvalidFilter(InvalidInput):
    """A metadata filter is malformed (HTTP 422)."""


class InvalidCollectionSpec(InvalidInput):
    """Bad collection name, metric, index spec or dims (HTTP 422)."""


class JobNotFound(NotFound):
    """No ingest job of that id in the collection (HTTP 404)."""


class CollectionNotReady(NotReady):
    """The collection is still replaying its indexes (HTTP 503)."""
