"""``/v1/aliases`` on an indexer (mounted with the indexer role): the alias table it stores durably."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from indexer.service import IndexerService

router = APIRouter(prefix="/v1/aliases", tags=["aliases"])


class AliasPut(BaseModel):
    """The collection an alias points to."""

    model_config = ConfigDict(extra="forbid")
    collection: str = Field(min_length=1, max_length=64)


def _svc(request: Request) -> IndexerService:
    svc: IndexerService = request.app.state.indexer_service
    return svc


@router.put("/{alias}")
async def put_alias(alias: str, body: AliasPut, request: Request) -> dict[str, Any]:
    """Create or switch an alias (atomic: readers see the old or the new target)."""
    return await _svc(request).put_alias(alias, body.collection)


@router.get("")
async def list_aliases(request: Request) -> dict[str, Any]:
    """Every alias and its collection."""
    return {"aliases": await _svc(request).list_aliases()}


@router.get("/{alias}")
async def get_alias(alias: str, request: Request) -> dict[str, Any]:
    """The collection an alias points at (404 if there is no such alias)."""
    return await _svc(request).get_alias(alias)


@router.delete("/{alias}")
async def delete_alias(alias: str, request: Request) -> dict[str, Any]:
    """Remove an alias (the collection stays)."""
    return await _svc(request).delete_alias(alias)


async def start(app: FastAPI, settings: Any) -> None:
    """Nothing to start: the table belongs to the indexer service."""


async def stop(app: FastAPI) -> None:
    """Nothing to stop."""
