"""Settings shared by the sync and async clients: URL, API key, headers, timeout, retries."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import httpx

from dowse_client import errors
from dowse_client._core import DEFAULT_URL, RetryPolicy, parse_retry_after
from dowse_client.types import CacheLookup

log = logging.getLogger("dowse_client")
__version__ = "0.1.0"
# only failures where the request surely never reached the server are retried for every method
RETRYABLE_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class _Settings:
    """Constructor arguments common to both clients."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("DOWSE_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("DOWSE_API_KEY")
        self.headers = {"user-agent": f"dowse-client/{__version__}", **(headers or {})}
        if key:
            self.headers["authorization"] = f"Bearer {key}"
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries, backoff_s, max_backoff_s)


def body_of(resp: httpx.Response) -> Any:
    """The error body as JSON, else as text."""
    try:
        return json.loads(resp.content)
    except ValueError:
        return resp.text


def parse_ok(parse: Any, resp: httpx.Response) -> Any:
    """Parse a 2xx answer; a body that is not the documented shape raises ``APIError`` (type bad_response)."""
    try:
        return parse(resp.json())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise errors.APIError(
            f"unexpected response body: {type(exc).__name__}: {exc}",
            status_code=resp.status_code,
            type="bad_response",
            body=resp.text[:2000],
        ) from exc


def should_retry(resp: httpx.Response, attempt: int, retry: RetryPolicy) -> float | None:
    """Seconds to wait before retrying this answer, or None to raise/return it."""
    if resp.status_code not in (429, 503) or attempt >= retry.max_retries:
        return None
    return retry.delay(attempt, parse_retry_after(resp.headers.get("retry-after")))


def error_for(resp: httpx.Response) -> errors.APIError:
    """The typed exception for an error answer."""
    return errors.from_response(
        resp.status_code, body_of(resp), parse_retry_after(resp.headers.get("retry-after"))
    )


def needs_write(lookup: CacheLookup) -> bool:
    """Whether a fresh response should go back to the cache after ``lookup`` (explore or miss, recorded)."""
    return lookup.decision != "exploit" and not lookup.degraded


def log_write_failure(exc: Exception) -> None:
    """A failed cache write after the LLM call: the fresh answer is still returned."""
    log.warning("dowse cache write failed after the call: %s", exc)
