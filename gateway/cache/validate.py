"""Input validation of the cache core: every rejection names the field and the limit it broke."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from embedder.errors import InvalidInput, TooLarge
from gateway.cache.store import ID_RE, NAMESPACE_RE
from indexer.validate import json_depth

MAX_JSON_DEPTH = 32  # nesting of metadata and scope


class InvalidCacheInput(InvalidInput):
    """A cache request value is not acceptable (422)."""


class CacheInputTooLarge(TooLarge):
    """A prompt, response or metadata is over its size limit (413)."""


@dataclass(frozen=True)
class CacheLimits:
    """Size limits of cache requests."""

    max_prompt_chars: int = 32_768
    max_response_chars: int = 262_144
    max_metadata_bytes: int = 16_384
    max_ttl_s: int = 366 * 86_400

    def check_metadata(self, metadata: dict[str, Any] | None) -> None:
        """Reject metadata that is not a JSON object or is too large."""
        if metadata is None:
            return
        if not isinstance(metadata, dict):
            raise InvalidCacheInput("metadata must be a JSON object", field="metadata")
        check_json(metadata, "metadata")
        size = len(json.dumps(metadata, default=str).encode())
        if size > self.max_metadata_bytes:
            raise CacheInputTooLarge(
                f"metadata is {size} bytes as JSON, over the limit",
                field="metadata",
                limit=self.max_metadata_bytes,
            )

    def check_ttl(self, ttl_s: int | None) -> None:
        """TTL must be a positive number of seconds under the limit."""
        if ttl_s is None:
            return
        if not 1 <= ttl_s <= self.max_ttl_s:
            raise InvalidCacheInput(
                f"ttl_s must lie in [1, {self.max_ttl_s}]", field="ttl_s", limit=self.max_ttl_s
            )


def check_json(value: Any, field: str) -> None:
    """A JSON value of valid Unicode nested at most MAX_JSON_DEPTH levels (metadata, scope)."""
    if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InvalidCacheInput(
            f"{field} is nested more than {MAX_JSON_DEPTH} levels deep", field=field, limit=MAX_JSON_DEPTH
        )
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False, default=str).encode()
    except (ValueError, TypeError):
        raise InvalidCacheInput(
            f"{field} must be JSON of finite numbers and valid Unicode", field=field
        ) from None


def check_namespace(namespace: str) -> None:
    """Namespace names: 1-128 of letters, digits and ``_ . : -``."""
    if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
        raise InvalidCacheInput(
            "namespace must be 1-128 characters of letters, digits, '_', '.' or '-'",
            field="namespace",
            limit=128,
        )


def check_id(value: str, field: str) -> None:
    """Entry and lookup ids: 1-64 characters of letters, digits, '_' or '-' (never a key separator)."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise InvalidCacheInput(
            f"{field} must be 1-64 characters of letters, digits, '_' or '-'", field=field, limit=64
        )


def check_text(namespace: str, text: str, field: str, max_chars: int) -> None:
    """Namespace valid; text non-empty (not only whitespace) and at most ``max_chars`` characters."""
    if namespace != "-":
        check_namespace(namespace)
    if not isinstance(text, str) or not text.strip():
        raise InvalidCacheInput(f"{field} must be a non-empty string", field=field, limit=1)
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidCacheInput(f"{field} is not valid Unicode (lone surrogate)", field=field) from None
    if len(text) > max_chars:
        raise CacheInputTooLarge(
            f"{field} has {len(text)} characters, over the limit", field=field, limit=max_chars
        )


def check_policy(
    policy: str, max_error: float | None, threshold: float | None, config: Any
) -> tuple[float, float]:
    """Validate the policy parameters; returns (max_error, threshold) with defaults filled in."""
    if policy not in ("adaptive", "static"):
        raise InvalidCacheInput("policy must be 'adaptive' or 'static'", field="policy")
    me = config.default_max_error if max_error is None else float(max_error)
    th = config.default_threshold if threshold is None else float(threshold)
    if not 0.0 < me < 1.0:
        raise InvalidCacheInput("max_error must lie in (0, 1)", field="max_error", limit="(0, 1)")
    if not 0.0 <= th <= 1.0:
        raise InvalidCacheInput("threshold must lie in [0, 1]", field="threshold", limit="[0, 1]")
    return me, th
