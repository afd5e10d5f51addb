"""API keys: creation, listing, revocation (Redis, shared by every replica) and per-process verification.

A key reads ``dws_<id>_<secret>``: ``id`` is 12 hex characters (public, shown by ``dowse keys list``, fine
to log), ``secret`` is ``secrets.token_urlsafe(32)`` (256 random bits). Redis stores only
``sha256(key)``: a slow password hash (bcrypt, argon2) protects *guessable* secrets; with 256 random bits
no hash rate makes a preimage search feasible, and a fast hash keeps verification cheap. The stored hash is
compared with :func:`hmac.compare_digest`.

Layout (one Redis hash, so ``list`` is one HGETALL):

- ``dowse:auth:keys``     hash  id -> JSON record (name, scopes, hash, created/expires/revoked, quotas)
- ``dowse:auth:enabled``  "1" once any key was created: ``DOWSE_AUTH=auto`` turns on for every replica

Each process caches records for ``ttl_s`` (default 2 s), so a revocation reaches every replica within
that TTL (< 5 s) with no pub/sub. While Redis is unreachable a record fetched within the last
``stale_s`` is still honoured (a revocation cannot be written then either); older or unknown keys fail
closed with 503. After a failure Redis is not asked again for ``down_s`` (1 s), so an outage costs a
request at most one ``op_timeout_s`` (0.1 s) wait per second, not one per key.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from embedder.errors import DowseError, InvalidInput, NotFound

KEYS_HASH = "dowse:auth:keys"
ENABLED_FLAG = "dowse:auth:enabled"
KEY_RE = re.compile(r"dws_([0-9a-f]{12})_([A-Za-z0-9_\-]{32,64})")
SCOPE_KINDS = ("search", "write", "cache", "embed", "admin")
GLOB_KINDS = ("search", "write", "cache")
GLOB_RE = re.compile(r"[A-Za-z0-9_.:\-*?\[\]!]{1,128}")
NAME_RE = re.compile(r"[A-Za-z0-9_.\-@ ]{1,64}")


class AuthUnavailable(DowseError):
    """The key store (Redis) is unreachable and the key is not cached (HTTP 503)."""

    type = "auth_unavailable"


def key_hash(key: str) -> str:
    """Hex sha256 of the whole key: what Redis stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key(token: str) -> str | None:
    """The key id of a well-formed key, else None."""
    m = KEY_RE.fullmatch(token)
    return m.group(1) if m else None


def check_scope(scope: str) -> str:
    """Validate a scope: ``search:<glob>``, ``write:<glob>``, ``cache:<glob>``, ``embed``, ``admin``."""
    kind, sep, glob = scope.partition(":")
    if kind in ("embed", "admin") and not sep:
        return scope
    if kind in GLOB_KINDS and sep and GLOB_RE.fullmatch(glob):
        return scope
    raise InvalidInput(
        f"bad scope {scope!r}: use search:<glob>, write:<glob>, cache:<glob>, embed or admin",
        field="scopes",
    )


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's scopes and quotas (``admin`` covers every scope)."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    rps: float | None = None
    texts_per_s: float | None = None
    burst: float | None = None
    service: bool = False  # the gateway's service token (embedder / indexer roles)

    @property
    def admin(self) -> bool:
        """True for the admin scope and the service token."""
        return self.service or "admin" in self.scopes

    def has_kind(self, kind: str) -> bool:
        """The key holds some scope of this kind (``search``, ``embed``, ...)."""
        return self.admin or any(s == kind or s.startswith(kind + ":") for s in self.scopes)

    def allows(self, kind: str, name: str) -> bool:
        """A ``kind:<glob>`` scope of this key matches ``name`` (case-sensitive)."""
        if self.admin:
            return True
        return any(
            s.startswith(kind + ":") and fnmatch.fnmatchcase(name, s[len(kind) + 1 :]) for s in self.scopes
        )

    def covers_all(self, kind: str) -> bool:
        """Every name of this kind is in scope (admin or ``kind:*``)."""
        return self.admin or f"{kind}:*" in self.scopes


@dataclass
class KeyRecord:
    """What Redis holds for one key (never the key itself)."""

    id: str
    name: str
    scopes: list[str]
    hash: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    rps: float | None = None
    texts_per_s: float | None = None
    burst: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """The record without its hash (what list/create answer)."""
        out = asdict(self)
        out.pop("hash")
        out.pop("extra")
        return out

    def principal(self) -> Principal:
        """The caller this record stands for."""
        return Principal(self.id, self.name, tuple(self.scopes), self.rps, self.texts_per_s, self.burst)

    def live(self, now: float) -> bool:
        """Not revoked and not expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def _load(raw: Any) -> KeyRecord:
    data = json.loads(raw)
    return KeyRecord(**{k: v for k, v in data.items() if k in KeyRecord.__dataclass_fields__})


class KeyStore:
    """Create / list / revoke / fetch key records in Redis (``redis.asyncio`` client)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def create(
        self,
        name: str,
        scopes: list[str],
        *,
        expires_at: float | None = None,
        rps: float | None = None,
        texts_per_s: float | None = None,
        burst: float | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key (returned once, never stored) and its record."""
        if not NAME_RE.fullmatch(name):
            raise InvalidInput("name: 1-64 of letters, digits, space, _ . - @", field="name")
        if not scopes:
            raise InvalidInput("give at least one scope", field="scopes")
        for s in scopes:
            check_scope(s)
        for fname, val in (("rps", rps), ("texts_per_s", texts_per_s), ("burst", burst)):
            if val is not None and not (0 < val <= 1e6):
                raise InvalidInput(f"{fname} must be in (0, 1e6]", field=fname, limit=1e6)
        now = time.time()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at is in the past", field="expires_at")
        key_id = secrets.token_hex(6)
        key = f"dws_{key_id}_{secrets.token_urlsafe(32)}"
        rec = KeyRecord(key_id, name, list(dict.fromkeys(scopes)), key_hash(key), now, expires_at)
        rec.rps, rec.texts_per_s, rec.burst = rps, texts_per_s, burst
        if not await self.redis.hsetnx(KEYS_HASH, key_id, json.dumps(asdict(rec))):
            raise DowseError("key id collision; retry")  # 48 random bits: practically never
        await self.redis.set(ENABLED_FLAG, "1")
        return key, rec

    async def get(self, key_id: str) -> KeyRecord | None:
        """One record by id."""
        raw = await self.redis.hget(KEYS_HASH, key_id)
        return _load(raw) if raw else None

    async def list_keys(self) -> list[KeyRecord]:
        """Every record, oldest first."""
        raw = await self.redis.hgetall(KEYS_HASH)
        return sorted((_load(v) for v in raw.values()), key=lambda r: r.created_at)

    async def revoke(self, id_or_name: str) -> list[KeyRecord]:
        """Revoke by id, or every live key of that name; 404 if none matched."""
        now = time.time()
        hits = [r for r in await self.list_keys() if id_or_name in (r.id, r.name) and r.revoked_at is None]
        if not hits:
            raise NotFound(f"no live key with id or name {id_or_name!r}", field="key")
        for rec in hits:
            rec.revoked_at = now
            await self.redis.hset(KEYS_HASH, rec.id, json.dumps(asdict(rec)))
        return hits

    async def enabled(self) -> bool:
        """A key was ever created in this Redis (``DOWSE_AUTH=auto`` turns on)."""
        return bool(await self.redis.get(ENABLED_FLAG))


class KeyVerifier:
    """Per-process: bearer token -> Principal, through a short-TTL cache of key records."""

    def __init__(
        self,
        store: KeyStore | None,
        *,
        admin_key: str | None = None,
        service_token: str | None = None,
        ttl_s: float = 2.0,
        stale_s: float = 60.0,
        op_timeout_s: float = 0.1,
        down_s: float = 1.0,
        max_entries: int = 10_000,
    ) -> None:
        self.store = store
        self._admin = key_hash(admin_key) if admin_key else None
        self._service = key_hash(service_token) if service_token else None
        self.ttl_s, self.stale_s, self.op_timeout_s, self.down_s = ttl_s, stale_s, op_timeout_s, down_s
        self._down_until = 0.0
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[KeyRecord | None, float]] = OrderedDict()

    async def principal(self, token: str, *, service_only: bool = False) -> Principal | None:
        """The caller behind ``token``, or None (unknown, revoked, expired, wrong secret)."""
        digest = key_hash(token)
        if self._service and hmac.compare_digest(digest, self._service):
            return Principal("service", "service token", ("admin",), service=True)
        if service_only:
            return None
        if self._admin and hmac.compare_digest(digest, self._admin):
            return Principal("admin", "DOWSE_ADMIN_KEY", ("admin",))
        key_id = parse_key(token)
        if key_id is None or self.store is None:
            return None
        rec = await self._record(key_id)
        if rec is None or not rec.live(time.time()) or not hmac.compare_digest(digest, rec.hash):
            return None
        return rec.principal()

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        assert self.store is not None
        try:
            if now < self._down_until:  # Redis failed under a second ago: do not wait on it again
                raise ConnectionError("key store marked down")
            rec = await asyncio.wait_for(self.store.get(key_id), self.op_timeout_s)
        except Exception as exc:  # Redis down or slow: honour a recent record, else fail closed
            if now >= self._down_until:
                self._down_until = now + self.down_s
            if cached is not None and cached[0] is not None and now - cached[1] < self.stale_s:
                return cached[0]
            raise AuthUnavailable("the key store (Redis) is unavailable", field="authorization") from exc
        self._cache[key_id] = (rec, now)
        self._cache.move_to_end(key_id)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return rec
