"""Collection, document, alias and job routes of a gateway in front of indexer shards.

Mounted with the gateway role when the indexer role is not in the same process (then the indexer's own
routes answer). The gateway routes each request over its shard map (``gateway.shard_admin``). A write
that some shard did not acknowledge answers with the error status and, beside ``error``, the exact
``acknowledged`` ids and the ``failed_shards`` (see docs/scale.md).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from embedder.errors import DowseError, NotReady
from gateway.shard_admin import ShardAdmin
from services.aliases_api import AliasPut
from services.auth import allowed
from services.errors import status_for
from services.indexer_api import CollectionCreate, IdsRequest, JobCreate, UpsertRequest

router = APIRouter(tags=["collections (gateway)"])
PREFIX = "/v1/collections"


def _admin(request: Request) -> ShardAdmin:
    admin: ShardAdmin | None = getattr(request.app.state, "shard_admin", None)
    if admin is None:
        raise NotReady("gateway shard map is not started", field="gateway")
    return admin


async def _answer(aw: Awaitable[dict[str, Any]], status: int = 200) -> JSONResponse:
    """The result, or the error with what was acknowledged before it (writes that reached some shards)."""
    try:
        out = await aw
    except DowseError as exc:
        extra = getattr(exc, "result", None)
        if not extra:
            raise
        return JSONResponse(status_code=status_for(exc), content={"error": exc.to_dict(), **extra})
    return JSONResponse(status_code=status, content=out)


@router.post(PREFIX, status_code=201)
async def create_collection(body: CollectionCreate, request: Request) -> JSONResponse:
    """Create a collection of ``shards`` shards (default 1) on the first indexers of the shard map."""
    spec = body.model_dump(exclude={"shard"})
    if spec.get("model") is None:
        spec.pop("model")
    return await _answer(_admin(request).create_collection(spec), 201)


@router.get(PREFIX)
async def list_collections(request: Request) -> JSONResponse:
    """Collections with stats summed over their shards (with auth on: those the key can search or write)."""
    out = await _admin(request).list_collections()
    out["collections"] = [
        c
        for c in out["collections"]
        if allowed(request, "search", c["name"]) or allowed(request, "write", c["name"])
    ]
    return JSONResponse(out)


@router.get(PREFIX + "/{name}")
async def collection_info(name: str, request: Request) -> JSONResponse:
    """Manifest, summed stats and each shard's stats."""
    return await _answer(_admin(request).collection_info(name))


@router.delete(PREFIX + "/{name}")
async def delete_collection(name: str, request: Request) -> JSONResponse:
    """Delete a collection on every shard."""
    return await _answer(_admin(request).delete_collection(name))


@router.post(PREFIX + "/{name}/documents")
async def upsert_documents(name: str, body: UpsertRequest, request: Request) -> JSONResponse:
    """Batch upsert split per shard; each shard's part is one transaction; says which ids are written."""
    docs = [d.model_dump() for d in body.documents]
    return await _answer(_admin(request).upsert(name, docs, model=body.model, dims=body.dims))


@router.post(PREFIX + "/{name}/documents/delete")
async def delete_documents(name: str, body: IdsRequest, request: Request) -> JSONResponse:
    """Delete by id on each id's shard."""
    return await _answer(_admin(request).delete_documents(name, body.ids))


@router.post(PREFIX + "/{name}/documents/get")
async def get_documents(name: str, body: IdsRequest, request: Request) -> JSONResponse:
    """Stored documents in request order; ``partial`` when a shard holding some of them is down."""
    docs, failed = await _admin(request).client.get_documents_partial(name, body.ids)
    failures = [f.to_dict() for f in failed]
    return JSONResponse({"documents": docs, "partial": bool(failures), "failed_shards": failures})


@router.get(PREFIX + "/{name}/documents/{doc_id:path}")
async def get_document(name: str, doc_id: str, request: Request) -> JSONResponse:
    """One document from its shard."""
    return await _answer(_admin(request).get_document(name, doc_id))


@router.post(PREFIX + "/{name}/jobs", status_code=202)
async def start_job(name: str, body: JobCreate, request: Request) -> JSONResponse:
    """Server-side ingest job (one-shard collections)."""
    return await _answer(_admin(request).start_job(name, body.model_dump()), 202)


@router.get(PREFIX + "/{name}/jobs")
async def list_jobs(name: str, request: Request) -> JSONResponse:
    """Jobs of every shard."""
    return await _answer(_admin(request).list_jobs(name))


@router.get(PREFIX + "/{name}/jobs/{job_id}")
async def get_job(name: str, job_id: str, request: Request) -> JSONResponse:
    """One job."""
    return await _answer(_admin(request).get_job(name, job_id))


@router.put("/v1/aliases/{alias}")
async def put_alias(alias: str, body: AliasPut, request: Request) -> JSONResponse:
    """Create or switch an alias (stored on shard 0; gateways see it within a second)."""
    return await _answer(_admin(request).put_alias(alias, body.collection))


@router.get("/v1/aliases")
async def list_aliases(request: Request) -> JSONResponse:
    """Every alias and its collection."""
    return await _answer(_admin(request).list_aliases())


@router.get("/v1/aliases/{alias}")
async def get_alias(alias: str, request: Request) -> JSONResponse:
    """The collection an alias points at (404 if there is no such alias)."""
    return await _answer(_admin(request).get_alias(alias))


@router.delete("/v1/aliases/{alias}")
async def delete_alias(alias: str, request: Request) -> JSONResponse:
    """Remove an alias."""
    return await _answer(_admin(request).delete_alias(alias))


async def start(app: FastAPI, settings: Any) -> None:
    """Wrap the gateway's shard client (built by ``services.gateway_api.start``) for admin and writes."""
    client = getattr(app.state, "shard_client", None)
    if client is not None:
        app.state.shard_admin = ShardAdmin(
            client, write_timeout_s=getattr(settings, "shard_write_timeout_s", 300.0)
        )


async def stop(app: FastAPI) -> None:
    """The client is closed by the gateway role."""
    app.state.shard_admin = None
