"""Typed errors shared by the core packages.

The core packages (embedder, indexer, gateway) raise only subclasses of :class:`DowseError`.
Each *category* below has exactly one HTTP status, in :data:`HTTP_STATUS`: ``services.errors`` serves
it, and the core HTTP clients read it backwards to turn another service's error JSON into the same
category. Packages subclass the category that fits (e.g. ``class UnknownModel(InvalidInput)``) and never
pick a status themselves.
"""

from __future__ import annotations

from typing import Any


class DowseError(Exception):
    """Base class: a message for humans plus the offending field and the limit it broke."""

    type: str = "error"

    def __init__(self, message: str, *, field: str | None = None, limit: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON error body ``{"type", "message", "field"?, "limit"?}``."""
        body: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.limit is not None:
            body["limit"] = self.limit
        return body


class InvalidInput(DowseError):
    """The request is well-formed JSON but a value is not acceptable (HTTP 422)."""

    type = "invalid_input"


class TooLarge(DowseError):
    """The request is over a size limit: too many inputs, too many tokens (HTTP 413)."""

    type = "too_large"


class NotFound(DowseError):
    """A named thing (collection, document, lookup id, job) does not exist (HTTP 404)."""

    type = "not_found"


class Conflict(DowseError):
    """The request contradicts stored state, e.g. vectors from another model (HTTP 409)."""

    type = "conflict"


class Overloaded(DowseError):
    """A bounded queue is full; retry later (HTTP 429)."""

    type = "overloaded"


class NotReady(DowseError):
    """The component is still starting (models loading, index replaying) (HTTP 503)."""

    type = "not_ready"


class DependencyFailed(DowseError):
    """A downstream service (embedder, indexer, Redis) failed or timed out (HTTP 424)."""

    type = "dependency_failed"


#: The one table: category -> HTTP status.
HTTP_STATUS: dict[type[DowseError], int] = {
    InvalidInput: 422,
    TooLarge: 413,
    NotFound: 404,
    Conflict: 409,
    Overloaded: 429,
    NotReady: 503,
    DependencyFailed: 424,
}
_BY_STATUS: dict[int, type[DowseError]] = {status: cls for cls, status in HTTP_STATUS.items()}
_BY_STATUS[400] = InvalidInput  # malformed JSON
_BY_TYPE: dict[str, type[DowseError]] = {cls.type: cls for cls in HTTP_STATUS}


def category_for_status(status: int) -> type[DowseError] | None:
    """The category a Dowse service meant by answering ``status`` (None for codes outside the table)."""
    return _BY_STATUS.get(status)


def category_for_type(type_: str) -> type[DowseError] | None:
    """The category named by an error body's ``type`` (None for subclass-specific or unknown types)."""
    return _BY_TYPE.get(type_)
