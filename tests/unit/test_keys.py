"""Key store and verifier on a real Redis: hashing, scopes, expiry, and behaviour while Redis is down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from embedder.errors import InvalidInput
from services.keys import (
    ENABLED_FLAG,
    KEYS_HASH,
    AuthUnavailable,
    KeyStore,
    KeyVerifier,
    Principal,
    key_hash,
    parse_key,
)
from tests.conftest import REDIS_URL

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    """Leave no key (nor the auth flag) behind: other tests' gateways in this Redis run DOWSE_AUTH=auto."""
    yield
    redis.Redis.from_url(REDIS_URL).delete(KEYS_HASH, ENABLED_FLAG)


async def test_create_stores_only_the_hash_and_verifies() -> None:
    r = aioredis.Redis.from_url(REDIS_URL)
    store = KeyStore(r)
    key, rec = await store.create("svc", ["search:demo", "embed"], rps=5)
    assert parse_key(key) == rec.id and len(key.split("_", 2)[2]) >= 43  # 256 random bits
    raw = (await r.hget(KEYS_HASH, rec.id)).decode()
    assert key not in raw and json.loads(raw)["hash"] == key_hash(key)
    v = KeyVerifier(store)
    who = await v.principal(key)
    assert who is not None and who.scopes == ("search:demo", "embed") and who.rps == 5
    assert await v.principal(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await v.principal("dws_" + rec.id + "_" + "x" * 43) is None
    await r.aclose()


async def test_scope_validation_and_matching() -> None:
    store = KeyStore(aioredis.Redis.from_url(REDIS_URL))
    for bad in (["search"], ["embed:x"], ["write:"], ["nope:*"], [], ["search:a b"]):
        with pytest.raises(InvalidInput):
            await store.create("x", bad)
    p = Principal("i", "n", ("search:team-*", "cache:faq"))
    assert p.allows("search", "team-a") and not p.allows("search", "team") and not p.allows("write", "team-a")
    assert p.has_kind("cache") and not p.has_kind("embed") and not p.covers_all("search")
    assert Principal("i", "n", ("admin",)).allows("write", "anything")


async def test_redis_down_serves_recent_records_and_fails_closed_otherwise() -> None:
    r = aioredis.Redis.from_url(REDIS_URL)
    store = KeyStore(r)
    key, _ = await store.create("t", ["search:*"])
    other, _ = await store.create("u", ["search:*"])
    v = KeyVerifier(store, ttl_s=0.05)
    assert await v.principal(key) is not None
    time.sleep(0.06)  # the record is past its TTL
    store.redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.05)
    t0 = time.monotonic()
    assert await v.principal(key) is not None  # stale but recent: honoured
    with pytest.raises(AuthUnavailable):
        await v.principal(other)  # never seen: fail closed
    assert time.monotonic() - t0 < 0.5
    await r.aclose()
