"""HTTP routes of the indexer role (mounted by services.app.create_app): collections, docs, search, jobs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from embedder.errors import DowseError, InvalidInput, NotFound
from indexer.client import Hit
from indexer.inprocess import InProcessIndexerClient
from indexer.jobs import retry_transient
from indexer.service import IndexerService
from indexer.sharding import MAX_SHARDS
from indexer.validate import MAX_K
from services.auth import allowed, service_token

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/collections", tags=["indexer"])
DEMO_COLLECTION = "demo"


class CollectionCreate(BaseModel):
    """Create a collection pinned to an embedding model."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    model: str | None = Field(default=None, description="embedding preset; default DOWSE_MODEL")
    dims: int | None = Field(default=None, description="Matryoshka truncation (<= model dim)")
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    index: dict[str, Any] | str | None = Field(
        default=None,
        description='{"type": auto|flat|hnsw|ivf-pq, "M", "ef_construction", "ef_search", '
        '"code": null|sq8|binary, "rescore"}',
    )
    analyzer: Literal["en_stem", "default"] = "en_stem"
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    exist_ok: bool = False
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS, description="shard count, fixed at creation")
    shard: int | None = Field(
        default=None, ge=0, description="which shard this indexer holds (set by the gateway)"
    )
    rotate: bool | None = Field(
        default=None,
        description="fit a per-collection PCA rotation and funnel-rescore at full dims "
        "(default: dims < the model's dim)",
    )


class DocumentIn(BaseModel):
    """A document to upsert."""

    model_config = ConfigDict(extra="forbid")
    id: str
    title: str = ""
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class UpsertRequest(BaseModel):
    """A batch of documents written in one transaction; ``model``/``dims`` assert the manifest (409)."""

    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn]
    model: str | None = None
    dims: int | None = None


class IdsRequest(BaseModel):
    """A list of document ids."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str]


class DenseSearch(BaseModel):
    """Vector search: ``vector`` (floats) or ``vector_b64`` (little-endian float32)."""

    model_config = ConfigDict(extra="forbid")
    vector: list[float] | None = None
    vector_b64: str | None = None
    k: int = Field(default=10, ge=1, le=MAX_K)
    filters: dict[str, Any] | None = None
    per_chunk: bool = False
    # how many leading hits carry title/text/metadata (null: all; the rest: ids and scores only)
    texts: int | None = Field(default=None, ge=0, le=MAX_K)
    # rotated collections, full-dim query: shortlist candidates re-scored at full dims (null: 100, 0: none)
    funnel_m: int | None = None
    # rotated collections: shortlist on only the leading funnel_dims (<= the collection's dims)
    funnel_dims: int | None = None


class LexicalSearch(BaseModel):
    """BM25 search."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(max_length=10_000)
    k: int = Field(default=10, ge=1, le=MAX_K)
    filters: dict[str, Any] | None = None
    per_chunk: bool = False
    # how many leading hits carry title/text/metadata (null: all; the rest: ids and scores only)
    texts: int | None = Field(default=None, ge=0, le=MAX_K)
    stats: dict[str, Any] | None = Field(
        default=None,
        description='collection-wide BM25 statistics {"num_docs", "df": {term: n}} (sharded collections)',
    )


class TermStats(BaseModel):
    """The query whose BM25 term statistics are wanted."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(max_length=10_000)


class JobCreate(BaseModel):
    """Ingest a server-side JSONL / CSV / Parquet file (BEIR corpus.jsonl included)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    format: Literal["jsonl", "csv", "parquet"] | None = None


def _svc(request: Request) -> IndexerService:
    svc: IndexerService = request.app.state.indexer_service
    return svc


def _hits(hits: list[Hit]) -> dict[str, Any]:
    return {
        "hits": [
            {
                "id": h.id,
                "score": h.score,
                "title": h.title,
                "text": h.text,
                "metadata": h.metadata,
                "chunk": h.chunk,
            }
            for h in hits
        ]
    }


@router.post("", status_code=201)
async def create_collection(body: CollectionCreate, request: Request) -> dict[str, Any]:
    """Create a collection (409 if it exists, unless ``exist_ok`` and the configuration matches)."""
    model = body.model or getattr(request.app.state.settings, "model", "minilm")
    return await _svc(request).create_collection(
        body.name,
        model=model,
        dims=body.dims,
        metric=body.metric,
        index=body.index,
        analyzer=body.analyzer,
        chunk_tokens=body.chunk_tokens,
        chunk_overlap=body.chunk_overlap,
        rotate=body.rotate,
        exist_ok=body.exist_ok,
        shards=body.shards,
        shard=body.shard,
    )


@router.get("")
async def list_collections(request: Request) -> dict[str, Any]:
    """All collections with their manifests and counts (with auth on: those the key can search or write)."""
    cols = await _svc(request).list_collections()
    return {
        "collections": [
            c for c in cols if allowed(request, "search", c["name"]) or allowed(request, "write", c["name"])
        ]
    }


@router.get("/{name}")
async def collection_info(name: str, request: Request) -> dict[str, Any]:
    """Manifest and stats of one collection."""
    return await _svc(request).collection_info(name)


@router.delete("/{name}")
async def delete_collection(name: str, request: Request) -> dict[str, Any]:
    """Delete a collection and its files."""
    return await _svc(request).delete_collection(name)


@router.post("/{name}/documents")
async def upsert_documents(name: str, body: UpsertRequest, request: Request) -> dict[str, Any]:
    """Batch upsert: validated, embedded, then written in one transaction (all or nothing)."""
    docs = [d.model_dump() for d in body.documents]
    out = await _svc(request).upsert(name, docs, model=body.model, dims=body.dims)
    # the same fields as a gateway's sharded write (docs/scale.md): one indexer writes all or nothing
    return {**out, "acknowledged": [d["id"] for d in docs], "partial": False, "failed_shards": []}


@router.post("/{name}/documents/delete")
async def delete_documents(name: str, body: IdsRequest, request: Request) -> dict[str, Any]:
    """Delete documents by id (unknown ids ignored)."""
    out = await _svc(request).delete(name, body.ids)
    return {**out, "acknowledged": list(body.ids), "partial": False, "failed_shards": []}


@router.post("/{name}/documents/get")
async def get_documents(name: str, body: IdsRequest, request: Request) -> dict[str, Any]:
    """Several stored documents in request order (missing ids skipped)."""
    return {"documents": await _svc(request).get_documents(name, body.ids)}


@router.get("/{name}/documents/{doc_id:path}")
async def get_document(name: str, doc_id: str, request: Request) -> dict[str, Any]:
    """One stored document (404 if absent)."""
    docs = await _svc(request).get_documents(name, [doc_id])
    if not docs:
        raise NotFound(f"no document {doc_id!r} in collection {name!r}", field="id")
    return docs[0]


@router.post("/{name}/search/dense")
async def search_dense(name: str, body: DenseSearch, request: Request) -> dict[str, Any]:
    """Top-k documents (or chunks) by vector similarity, with optional metadata filters."""
    if (body.vector is None) == (body.vector_b64 is None):
        raise InvalidInput("give exactly one of vector / vector_b64", field="vector")
    if body.vector_b64 is not None:
        try:
            raw = base64.b64decode(body.vector_b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("vector_b64 is not base64", field="vector_b64") from None
        if len(raw) % 4:
            raise InvalidInput("vector_b64 must hold float32 values", field="vector_b64")
        vec: Any = np.frombuffer(raw, dtype="<f4")
    else:
        vec = body.vector
    return _hits(
        await _svc(request).search_dense(
            name,
            vec,
            body.k,
            body.filters,
            body.per_chunk,
            texts=body.texts,
            funnel_m=body.funnel_m,
            funnel_dims=body.funnel_dims,
        )
    )


@router.get("/{name}/rotation")
async def rotation_info(name: str, request: Request) -> dict[str, Any]:
    """The collection's serving rotation (version 0: not fitted yet, the index serves full dims)."""
    return await _svc(request).rotation_info(name)


@router.post("/{name}/rotation/refit")
async def refit_rotation(name: str, request: Request) -> dict[str, Any]:
    """Re-fit the PCA rotation on the collection's current vectors and swap it in atomically."""
    return await _svc(request).refit_rotation(name)


@router.post("/{name}/search/lexical")
async def search_lexical(name: str, body: LexicalSearch, request: Request) -> dict[str, Any]:
    """Top-k documents by BM25, with optional metadata filters."""
    return _hits(
        await _svc(request).search_lexical(
            name, body.query, body.k, body.filters, body.per_chunk, texts=body.texts, stats=body.stats
        )
    )


@router.post("/{name}/search/lexical/stats")
async def lexical_stats(name: str, body: TermStats, request: Request) -> dict[str, Any]:
    """This indexer's BM25 statistics of the query's terms (the gateway sums them over shards)."""
    return await _svc(request).term_stats(name, body.query)


@router.post("/{name}/jobs", status_code=202)
async def start_job(name: str, body: JobCreate, request: Request) -> dict[str, Any]:
    """Start a background ingest job (resumable: ids already stored are skipped)."""
    return await _svc(request).start_job(name, body.path, body.format)


@router.get("/{name}/jobs")
async def list_jobs(name: str, request: Request) -> dict[str, Any]:
    """Jobs of a collection, newest first."""
    return {"jobs": await _svc(request).list_jobs(name)}


@router.get("/{name}/jobs/{job_id}")
async def get_job(name: str, job_id: str, request: Request) -> dict[str, Any]:
    """Progress and errors of one job."""
    return await _svc(request).job(name, job_id)


async def start(app: FastAPI, settings: Any) -> None:
    """Build the IndexerService, open (replay) collections, register readiness and the in-process client."""
    embedder = getattr(app.state, "embedder_client", None)
    own_embedder = False
    if embedder is None:
        url = getattr(settings, "embedder_url", None)
        if not url:
            raise RuntimeError(
                "indexer role needs the embedder role in the same process or DOWSE_EMBEDDER_URL"
            )
        from embedder.http_client import HttpEmbedderClient

        embedder = HttpEmbedderClient(
            url, timeout_s=getattr(settings, "embedder_timeout_s", 60.0), token=service_token(settings)
        )
        own_embedder = True
    svc = IndexerService(
        Path(settings.data_dir),
        embedder,
        hnsw_threshold=getattr(settings, "hnsw_threshold", 50_000),
        max_batch_docs=getattr(settings, "max_batch_docs", 1000),
        max_doc_chars=getattr(settings, "max_doc_chars", 1_000_000),
        snapshot_every=getattr(settings, "snapshot_every", 20_000),
        rotation_min_chunks=getattr(settings, "rotation_min_chunks", 1000),
        job_roots=getattr(settings, "job_roots", None),
    )
    app.state.indexer_service = svc
    app.state.indexer_client = InProcessIndexerClient(svc)
    app.state.indexer_own_embedder = embedder if own_embedder else None
    app.state.ready_checks.append(("indexer", lambda: svc.ready))
    await svc.open()
    demo = getattr(settings, "demo_corpus", None)
    app.state.indexer_demo_task = (
        asyncio.create_task(_demo(svc, Path(demo), getattr(settings, "model", "minilm"))) if demo else None
    )


async def _demo(svc: IndexerService, corpus: Path, model: str) -> None:
    """Index a BEIR corpus into collection 'demo' once the embedder answers; resumes a partial ingest."""
    try:  # embedder still loading / unreachable: retry until it answers
        await retry_transient(
            lambda: svc.create_collection(DEMO_COLLECTION, model=model, exist_ok=True),
            "demo collection",
            transient=("not_ready", "dependency_failed"),
        )
    except DowseError as exc:
        log.error("demo collection not created: %s", exc.message)
        return
    try:
        job = await svc.start_local_job(DEMO_COLLECTION, corpus)  # the operator's file: no import roots
    except DowseError as exc:
        log.error("demo ingest of %s not started: %s", corpus, exc.message)
        return
    log.info("demo ingest of %s started as job %s", corpus, job["id"])


async def stop(app: FastAPI) -> None:
    """Cancel the demo starter, close the service (snapshots), close an owned HTTP embedder client."""
    task = getattr(app.state, "indexer_demo_task", None)
    if task is not None:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            log.debug("demo task ended")
    svc: IndexerService | None = getattr(app.state, "indexer_service", None)
    if svc is not None:
        await svc.close()
    own = getattr(app.state, "indexer_own_embedder", None)
    if own is not None:
        await own.aclose()
