"""The one table mapping core error classes to HTTP statuses, and the FastAPI handlers using it."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedder.errors import HTTP_STATUS, DowseError

log = logging.getLogger(__name__)

# The one category -> status table lives beside the categories, so the HTTP clients can read it back.
STATUS = HTTP_STATUS


class ErrorResponse(JSONResponse):
    """JSON error answer rendered as ASCII: a message echoing odd client input can always be encoded."""

    def render(self, content: Any) -> bytes:
        """Compact ASCII JSON (lone surrogates become escapes instead of an encoding error)."""
        return json.dumps(content, ensure_ascii=True, separators=(",", ":"), default=str).encode()


def status_for(exc: DowseError) -> int:
    """HTTP status of a core error: the first category in its MRO that the table knows."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_body(type_: str, message: str, field: str | None = None, limit: Any = None) -> dict[str, Any]:
    """The JSON error shape used everywhere: ``{"error": {"type", "message", "field"?, "limit"?}}``."""
    err: dict[str, Any] = {"type": type_, "message": message}
    if field is not None:
        err["field"] = field
    if limit is not None:
        err["limit"] = limit
    return {"error": err}


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str:
    loc = list(loc)
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]  # the request part, not a field (a body field may itself be called "query")
    parts = [str(p) for p in loc]
    return ".".join(parts) or "body"


def _limit_from_ctx(ctx: dict[str, Any] | None) -> Any:
    if not ctx:
        return None
    for key in ("le", "ge", "lt", "gt", "max_length", "min_length", "expected"):
        if key in ctx:
            val = ctx[key]
            return val if isinstance(val, int | float | str) else str(val)
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so that no raw exception string ever reaches a client."""

    @app.exception_handler(DowseError)
    async def _dowse(_: Request, exc: DowseError) -> JSONResponse:
        return ErrorResponse(status_code=status_for(exc), content={"error": exc.to_dict()})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        etype = first.get("type", "")
        if etype in ("json_invalid", "json_type"):
            return ErrorResponse(
                status_code=400,
                content=error_body("malformed_json", "request body is not valid JSON", field="body"),
            )
        field = _loc_to_field(first.get("loc", ()))
        msg = str(first.get("msg", "invalid value"))
        return ErrorResponse(
            status_code=422,
            content=error_body("invalid_input", f"{field}: {msg}", field, _limit_from_ctx(first.get("ctx"))),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ErrorResponse(
            status_code=exc.status_code, content=error_body(kind, str(exc.detail)), headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return ErrorResponse(status_code=500, content=error_body("internal", "internal server error"))
