"""HTTP routes for API keys (scope ``admin``; mounted by the gateway role): create, list, revoke."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from embedder.errors import NotReady
from services.keys import KeyStore

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyCreate(BaseModel):
    """A new key: its name, scopes, optional expiry and quotas."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    scopes: list[str] = Field(min_length=1, max_length=64)
    expires_in_s: float | None = Field(None, gt=0, le=10 * 365 * 86400, description="lifetime in seconds")
    rps: float | None = Field(None, gt=0, le=1e6, description="requests per second (token bucket)")
    texts_per_s: float | None = Field(None, gt=0, le=1e6, description="embed/rerank/upsert texts per second")
    burst: float | None = Field(None, gt=0, le=1e6, description="request bucket size (default: rps)")


def _store(request: Request) -> KeyStore:
    store: KeyStore | None = request.app.state.auth_guard.store
    if store is None:
        raise NotReady("no key store: the gateway needs DOWSE_REDIS_URL", field="redis")
    return store


@router.post("", status_code=201)
async def create_key(body: KeyCreate, request: Request) -> dict[str, Any]:
    """Create a key; the answer is the only place the key ever appears."""
    expires = time.time() + body.expires_in_s if body.expires_in_s else None
    key, rec = await _store(request).create(
        body.name,
        body.scopes,
        expires_at=expires,
        rps=body.rps,
        texts_per_s=body.texts_per_s,
        burst=body.burst,
    )
    return {"key": key, **rec.public()}


@router.get("")
async def list_keys(request: Request) -> dict[str, Any]:
    """Every key's id, name, scopes, quotas and state (never the key or its hash)."""
    return {"keys": [r.public() for r in await _store(request).list_keys()]}


@router.delete("/{key}")
async def revoke_key(key: str, request: Request) -> dict[str, Any]:
    """Revoke a key by id (or every live key of that name); replicas refuse it within 5 s."""
    return {"revoked": [r.id for r in await _store(request).revoke(key)]}


async def start(app: FastAPI, settings: Any) -> None:
    """Nothing to start: the store lives on ``app.state.auth_guard``."""


async def stop(app: FastAPI) -> None:
    """Nothing to stop."""
