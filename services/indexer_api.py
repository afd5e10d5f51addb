"""HTTP routes of the indexer role (mounted by services.app.create_app)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

router = APIRouter()


async def start(app: FastAPI, settings: Any) -> None:
    """Build this role's core objects onto app.state."""


async def stop(app: FastAPI) -> None:
    """Release this role's resources."""
