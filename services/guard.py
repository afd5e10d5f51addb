"""Request guard: one ASGI middleware in front of every route of every role.

Checks that hold for any route, so that a route added later cannot miss them:

- **Host header** (DNS rebinding): only the names in ``allowed_hosts`` are served (421 otherwise);
- **body size**: a body over ``max_body_bytes`` is refused with 413 before it is parsed, from its
  ``Content-Length`` or, for a streamed body, as soon as the bytes received pass the limit;
- **JSON content**: every string and key must be encodable as UTF-8 (no lone surrogates such as
  ``"\\ud800"``), numbers must be finite (no ``NaN``/``Infinity``/``1e999``), integers must fit in 64 bits
  and nesting is at most ``MAX_JSON_DEPTH`` levels. A
  violation answers 422 naming the field (``documents[0].metadata.x``), never a 500.

The JSON checks cost a second parse only when the raw bytes could hold a violation (a surrogate escape,
a run of 19+ digits, or more brackets than the depth limit); plain small requests pass on a byte scan.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.errors import error_body

MAX_JSON_DEPTH = 64  # containers inside containers; core limits on single fields are tighter (metadata 32)
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
THREAD_BODY_BYTES = 1024 * 1024
INT64 = (-(2**63), 2**63 - 1)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
PROBE_PATHS = ("/health", "/ready")  # kubelet probes send the pod IP as Host; they reveal nothing

_SUSPECT_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_RAW_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")  # UTF-8-encoded surrogates: json.loads passes them
# 19+ digits (an int beyond 64 bits) or a 3-digit exponent (a float that overflows to inf), in one pass;
# NaN / Infinity literals (not JSON, but Python's parser takes them) are found with plain substring tests
_BIG_NUMBER = re.compile(rb"[0-9]{19}|[eE]\+?[0-9]{3}")


class GuardRejection(Exception):
    """A request the guard refuses: status + JSON error body."""

    def __init__(self, status: int, type_: str, message: str, field: str | None = None, limit: Any = None):
        super().__init__(message)
        self.status = status
        self.body = error_body(type_, message, field, limit)


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Loopback names plus the bind address; any Host (``*``) when bound to a wildcard address."""
    if bind_host in WILDCARD_BINDS:
        return ["*"]
    return list(dict.fromkeys([*LOOPBACK_HOSTS, bind_host.strip("[]").lower()]))


def _host_name(raw: str) -> str:
    """The name of a Host header without its port (``[::1]:8000`` -> ``::1``)."""
    raw = raw.strip().lower()
    if raw.startswith("["):
        return raw[1 : raw.find("]")] if "]" in raw else raw
    if raw.count(":") == 1:
        return raw.split(":", 1)[0]
    return raw


def host_allowed(header: str, allowed: Iterable[str]) -> bool:
    """True if the Host header names one of ``allowed`` (``*`` any, ``*.example.com`` a subdomain)."""
    name = _host_name(header)
    if not name:
        return False
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def _field(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def _encodable(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json_value(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Walk a parsed JSON document; raise GuardRejection on a non-UTF-8 string, a huge int or deep nesting."""
    stack: list[tuple[Any, list[str | int], int]] = [(value, [], 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if not _encodable(node):
                raise GuardRejection(
                    422, "invalid_input", f"{_field(path)}: not valid Unicode (lone surrogate)", _field(path)
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise GuardRejection(
                    422, "invalid_input", f"{_field(path)}: numbers must be finite", _field(path)
                )
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not INT64[0] <= node <= INT64[1]:
                raise GuardRejection(
                    422,
                    "invalid_input",
                    f"{_field(path)}: integer out of 64-bit range",
                    _field(path),
                    INT64[1],
                )
        elif isinstance(node, dict | list):
            if depth >= max_depth:
                raise GuardRejection(
                    422, "invalid_input", f"{_field(path)}: nested too deeply", _field(path), max_depth
                )
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, str) and not _encodable(key):
                    where = _field(path)
                    raise GuardRejection(
                        422, "invalid_input", f"{where}: a key is not valid Unicode (lone surrogate)", where
                    )
                stack.append((child, [*path, key], depth + 1))


def check_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Byte scan first; parse and walk only when the bytes could hold a violation."""
    if not body:
        return
    suspect = (
        body.count(b"[") + body.count(b"{") > max_depth
        or _SUSPECT_ESCAPE.search(body) is not None
        or _RAW_SURROGATE.search(body) is not None
        or b"\x00" in body[:4]  # UTF-16/32 (json.loads detects them, surrogates included)
        or b"NaN" in body
        or b"Infinity" in body
        or _BIG_NUMBER.search(body) is not None
    )
    if not suspect:
        return
    try:
        value = json.loads(body)
    except RecursionError:
        raise GuardRejection(422, "invalid_input", "body: nested too deeply", "body", max_depth) from None
    except ValueError:  # not JSON (or digits beyond Python's limit): the route's own parser answers 400
        raise GuardRejection(400, "malformed_json", "request body is not valid JSON", "body") from None
    check_json_value(value, max_depth)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


class RequestGuard:
    """ASGI middleware: Host check, body cap before parsing, JSON well-formedness (see module doc)."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, allowed_hosts: list[str] | None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = allowed_hosts  # None: any Host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            host_checked = self.allowed_hosts is not None and scope.get("path") not in PROBE_PATHS
            if host_checked and not host_allowed(headers.get("host", ""), self.allowed_hosts or []):
                raise GuardRejection(
                    421, "misdirected_request", "this server does not serve that Host", "host"
                )
            if "content-length" not in headers and "transfer-encoding" not in headers:
                await self.app(scope, receive, send)  # no body (GET, DELETE, ...)
                return
            body = await self._read_body(headers, receive)
            if _is_json(headers.get("content-type", "")):
                if len(body) > THREAD_BODY_BYTES:  # a second parse of a big body: off the event loop
                    await asyncio.to_thread(check_json_body, body)
                else:
                    check_json_body(body)
        except GuardRejection as rej:
            await _send_json(send, rej.status, rej.body)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise GuardRejection(400, "bad_request", "Content-Length is not a number", "content-length")
            if len(declared.strip()) > 18 or int(declared) > limit:  # (int() refuses 4300+ digits)
                raise GuardRejection(413, "too_large", f"request body over {limit} bytes", "body", limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise GuardRejection(413, "too_large", f"request body over {limit} bytes", "body", limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": raw})
