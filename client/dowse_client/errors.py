"""Typed exceptions for Dowse's JSON error body ``{"error": {"type", "message", "field"?, "limit"?}}``.

The server maps each error category to exactly one HTTP status; this module reads that mapping backwards:
the body's ``type`` picks the class when it is a known category, else the status does.
"""

from __future__ import annotations

from typing import Any


class DowseError(Exception):
    """Base class of every error this client raises."""


class TransportError(DowseError):
    """The request never got an HTTP answer (connection refused, timeout, TLS)."""


class APIError(DowseError):
    """Dowse answered an error status; ``type``, ``message``, ``field``, ``limit`` come from its body."""

    status_code: int = 0
    default_type: str = "error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        field: str | None = None,
        limit: Any = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {type or self.default_type}: {message}")
        self.message = message
        self.status_code = status_code
        self.type = type or self.default_type
        self.field = field
        self.limit = limit
        self.body = body
        self.retry_after = retry_after


class MalformedRequest(APIError):
    """400: the body was not valid JSON."""

    default_type = "malformed_json"


class InvalidInput(APIError):
    """422: a value is not acceptable; ``field`` names it and ``limit`` the bound it broke."""

    default_type = "invalid_input"


class TooLarge(APIError):
    """413: over a size limit (too many inputs, too many tokens)."""

    default_type = "too_large"


class Unauthorized(APIError):
    """401: missing or unknown API key."""

    default_type = "unauthorized"


class Forbidden(APIError):
    """403: the key's scopes do not cover this request."""

    default_type = "forbidden"


class NotFound(APIError):
    """404: unknown collection, document, job, lookup id or route."""

    default_type = "not_found"


class Conflict(APIError):
    """409: the request contradicts stored state (collection exists, other model)."""

    default_type = "conflict"


class Overloaded(APIError):
    """429: a queue or quota is full; retried with backoff before it reaches you."""

    default_type = "overloaded"


class DependencyFailed(APIError):
    """424: a downstream service (embedder, indexer, Redis) failed or timed out."""

    default_type = "dependency_failed"


class NotReady(APIError):
    """503: the service is still starting (models loading, indexes replaying)."""

    default_type = "not_ready"


class ServerError(APIError):
    """5xx other than 503: a bug or crash on the server side."""

    default_type = "internal"


BY_STATUS: dict[int, type[APIError]] = {
    400: MalformedRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: InvalidInput,
    424: DependencyFailed,
    429: Overloaded,
    503: NotReady,
}
BY_TYPE: dict[str, type[APIError]] = {cls.default_type: cls for cls in BY_STATUS.values()}


def error_class(status: int, type_: str | None) -> type[APIError]:
    """The exception class for an error answer: the body's category if known, else the status's."""
    if type_ is not None and type_ in BY_TYPE:
        return BY_TYPE[type_]
    if status in BY_STATUS:
        return BY_STATUS[status]
    return ServerError if status >= 500 else APIError


def from_response(status: int, body: Any, retry_after: float | None = None) -> APIError:
    """Build the typed exception for an error status and its (possibly non-JSON) body."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        type_ = err.get("type") if isinstance(err.get("type"), str) else None
        message = str(err.get("message", "")) or f"HTTP {status}"
        field, limit = err.get("field"), err.get("limit")
    else:
        type_, field, limit = None, None, None
        message = (body if isinstance(body, str) else "") or f"HTTP {status}"
    cls = error_class(status, type_)
    return cls(
        message,
        status_code=status,
        type=type_,
        field=field,
        limit=limit,
        body=body,
        retry_after=retry_after,
    )
