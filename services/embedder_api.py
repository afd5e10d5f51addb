"""HTTP routes of the embedder role (mounted by services.app.create_app).

OpenAI ``/v1/embeddings``, TEI ``/embed`` and ``/rerank``, Cohere ``/v1/rerank`` and ``/v2/rerank``,
``/info``. Input checks live in the core (``EmbeddingService``) so that in-process and HTTP callers get the
same errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from embedder.batching import check_priority
from embedder.errors import DowseError, InvalidInput
from embedder.http_client import PRIORITY_HEADER
from embedder.inprocess import InProcessEmbedderClient
from embedder.service import EmbeddingService
from services.errors import status_for

log = logging.getLogger(__name__)

REQUESTS = Counter("dowse_embedder_requests_total", "Embedder HTTP requests", ["endpoint", "status"])
LATENCY = Histogram(
    "dowse_embedder_request_seconds",
    "Embedder HTTP request latency",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)


class _MeteredRoute(APIRoute):
    """Counts requests by status and observes latency, including errors raised inside the handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        path = self.path

        async def metered(request: Request) -> Response:
            t0 = time.perf_counter()
            status = 500
            try:
                resp = await handler(request)
                status = resp.status_code
                return resp
            except DowseError as exc:
                status = status_for(exc)
                raise
            except RequestValidationError as exc:  # mirrors services.errors: bad JSON 400, else 422
                first = exc.errors()[0] if exc.errors() else {}
                status = 400 if first.get("type") in ("json_invalid", "json_type") else 422
                raise
            finally:
                REQUESTS.labels(path, str(status)).inc()
                LATENCY.labels(path).observe(time.perf_counter() - t0)

        return metered


router = APIRouter(tags=["embedder"], route_class=_MeteredRoute)

_PRIORITY_DOC = (
    "interactive (served first) | batch (micro-batches behind interactive work); "
    "default: interactive when the request fits in one micro-batch, else batch"
)
_HEADER_DOC = f"{PRIORITY_HEADER}: interactive | batch (the body field wins where a route has one)"
_INPUT_TYPES = {"search_query": "query", "search_document": "passage", "query": "query", "passage": "passage"}


class EmbeddingsRequest(BaseModel):
    """OpenAI-compatible embeddings request, plus Dowse extensions (prompt_name, input_type, ...)."""

    input: Any = Field(..., description="a string or a list of strings")
    model: str | None = Field(None, description="preset name; default: the service's default model")
    dimensions: int | None = Field(None, description="Matryoshka-style: truncate then re-normalise")
    encoding_format: Literal["float", "base64"] = "float"
    prompt_name: str | None = Field(None, description="query | passage | a model-defined prompt")
    input_type: Literal["search_query", "search_document"] | None = None
    instruction: str | None = Field(None, description="prefix used verbatim instead of the model's prompt")
    truncate: bool = Field(True, description="cut inputs at the model's max length; false: 413 if over")
    user: str | None = None
    priority: Any = Field(None, description=_PRIORITY_DOC)
    collection: str | None = Field(
        None,
        description="rotate with this collection's PCA rotation, then keep `dimensions` (default: the "
        "collection's dims); needs the indexer role in the same process and search scope on it",
    )


class TeiEmbedRequest(BaseModel):
    """Text Embeddings Inference ``/embed`` request."""

    inputs: Any = Field(..., description="a string or a list of strings")
    normalize: bool = True
    truncate: bool = False
    prompt_name: str | None = None
    dimensions: int | None = None
    model: str | None = None


class TeiRerankRequest(BaseModel):
    """Text Embeddings Inference ``/rerank`` request."""

    query: Any
    texts: Any
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False
    model: str | None = None


class CohereRerankRequest(BaseModel):
    """Cohere/Jina ``/v1/rerank`` request; documents are strings or ``{"text": ...}`` objects."""

    query: Any
    documents: Any
    top_n: int | None = Field(None, description=">= 1; default: all documents")
    return_documents: bool = False
    model: str | None = None
    truncate: bool = True
    priority: Any = Field(None, description=_PRIORITY_DOC)


def _service(request: Request) -> EmbeddingService:
    return request.app.state.embedding_service  # type: ignore[no-any-return]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _prompt(prompt_name: str | None, input_type: str | None) -> str | None:
    if prompt_name is not None:
        return prompt_name
    return _INPUT_TYPES[input_type] if input_type else None


@contextlib.contextmanager
def _renamed(field: str, new: str) -> Any:
    """Report core errors on ``field`` under the name this API uses (``input`` -> ``inputs``)."""
    try:
        yield
    except DowseError as exc:
        if exc.field is not None and exc.field.startswith(field) and not exc.field.startswith(new):
            exc.field = new + exc.field[len(field) :]
            exc.message = exc.message.replace(field, new, 1)
        raise


def _priority(field: Any, header: str | None) -> str | None:
    """The request's priority: the body field, else the ``X-Dowse-Priority`` header, else None (by size)."""
    if field is not None:
        return check_priority(field, "priority")
    if header is not None:
        return check_priority(header.strip().lower(), PRIORITY_HEADER)
    return None


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@router.post("/v1/embeddings")
async def openai_embeddings(
    body: EmbeddingsRequest,
    request: Request,
    x_dowse_priority: str | None = Header(None, description=_HEADER_DOC),
) -> dict[str, Any]:
    """OpenAI-shape embeddings (float or base64 float32 little-endian)."""
    svc = _service(request)
    priority = _priority(body.priority, x_dowse_priority)
    model, rotate_to = body.model, None
    if body.collection is not None:
        model, rotate_to = await _collection_target(request, body.collection, body.model, body.dimensions)
    res = await svc.embed(
        _as_list(body.input),
        model=model,
        prompt_name=_prompt(body.prompt_name, body.input_type),
        instruction=body.instruction,
        dimensions=body.dimensions if rotate_to is None else None,
        truncate=body.truncate,
        priority=priority,
    )
    vecs = res.vectors
    if rotate_to is not None and body.collection is not None:
        indexer = request.app.state.indexer_service
        vecs = await indexer.rotate_vectors(body.collection, np.asarray(vecs, np.float32), rotate_to)
    data = []
    for i, (vec, n) in enumerate(zip(vecs, res.token_counts, strict=True)):
        emb: Any = (
            base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
            if body.encoding_format == "base64"
            else vec.tolist()
        )
        data.append({"object": "embedding", "index": i, "embedding": emb, "tokens": n})
    total = int(sum(res.token_counts))
    return {
        "object": "list",
        "data": data,
        "model": res.model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


async def _collection_target(
    request: Request, name: str, model: str | None, dimensions: int | None
) -> tuple[str, int]:
    """(the collection's model, dims to keep after its rotation) for ``/v1/embeddings`` + ``collection``."""
    from indexer.errors import CollectionNotFound, ManifestMismatch
    from indexer.service import name_alias
    from services.auth import allowed

    indexer = getattr(request.app.state, "indexer_service", None)
    if indexer is None:
        raise InvalidInput(
            "collection rotations are served where the indexer role runs in the same process",
            field="collection",
        )
    if not allowed(request, "search", name):  # out of scope answers like a missing collection
        raise CollectionNotFound(f"collection {name!r} does not exist", field="collection")
    info = await indexer.collection_info(name)
    if model is not None and name_alias(model) != name_alias(info["model"]):
        raise ManifestMismatch(
            f"collection {name!r} holds vectors of model {info['model']!r}, not {model!r}",
            field="model",
            limit=info["model"],
        )
    dims = info["dims"] if dimensions is None else dimensions
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= info["model_dim"]:
        raise InvalidInput(
            f"dimensions must be an integer in 1..{info['model_dim']}",
            field="dimensions",
            limit=info["model_dim"],
        )
    return str(info["model"]), dims


@router.post("/embed")
async def tei_embed(
    body: TeiEmbedRequest,
    request: Request,
    x_dowse_priority: str | None = Header(None, description=_HEADER_DOC),
) -> list[list[float]]:
    """TEI-shape embeddings: a list of vectors (priority from ``X-Dowse-Priority``)."""
    priority = _priority(None, x_dowse_priority)
    if not body.normalize:
        raise InvalidInput("only normalised embeddings are served", field="normalize", limit=True)
    with _renamed("input", "inputs"):
        res = await _service(request).embed(
            _as_list(body.inputs),
            model=body.model,
            prompt_name=body.prompt_name,
            dimensions=body.dimensions,
            truncate=body.truncate,
            priority=priority,
        )
    return res.vectors.tolist()  # type: ignore[no-any-return]


@router.post("/rerank")
async def tei_rerank(
    body: TeiRerankRequest,
    request: Request,
    x_dowse_priority: str | None = Header(None, description=_HEADER_DOC),
) -> list[dict[str, Any]]:
    """TEI-shape rerank: ``[{"index", "score", "text"?}]`` by descending score (sigmoid unless raw)."""
    priority = _priority(None, x_dowse_priority)
    with _renamed("documents", "texts"):
        scores = await _service(request).rerank(
            body.query, body.texts, model=body.model, truncate=body.truncate, priority=priority
        )
    out = []
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        row: dict[str, Any] = {"index": i, "score": scores[i] if body.raw_scores else _sigmoid(scores[i])}
        if body.return_text:
            row["text"] = body.texts[i]
        out.append(row)
    return out


class CohereV2RerankRequest(BaseModel):
    """Cohere v2 ``/v2/rerank`` request (``cohere.ClientV2``): documents are strings."""

    model: str | None = Field(None, description="cross-encoder preset; default: the service's")
    query: Any
    documents: Any
    top_n: int | None = Field(None, description=">= 1; default: all documents")
    max_tokens_per_doc: int | None = Field(
        None, description="accepted when >= the model's pair length (pairs are cut there anyway)"
    )
    priority: Any = Field(None, description=_PRIORITY_DOC)


def _doc_texts(docs: Any) -> Any:
    """Strings, or ``{"text": ...}`` objects (Cohere v1 / Jina), as strings; other shapes pass to the core."""
    if not isinstance(docs, list):
        return docs
    texts = []
    for i, d in enumerate(docs):
        if isinstance(d, dict):
            if not isinstance(d.get("text"), str):
                raise InvalidInput(
                    f"documents[{i}] needs a string 'text'", field=f"documents[{i}].text", limit="str"
                )
            texts.append(d["text"])
        else:
            texts.append(d)
    return texts


async def _ranked(
    svc: EmbeddingService,
    query: Any,
    docs: Any,
    top_n: int | None,
    model: str | None,
    truncate: bool,
    priority: str | None = None,
) -> tuple[list[int], list[float], str]:
    """Cross-encoder logits, the best ``top_n`` indices by score, and the model's name."""
    if top_n is not None and top_n < 1:
        raise InvalidInput("top_n must be >= 1", field="top_n", limit=1)
    scores = await svc.rerank(query, docs, model=model, truncate=truncate, priority=priority)
    order = sorted(range(len(scores)), key=lambda k: -scores[k])[: top_n or len(scores)]
    return order, scores, svc.model_info(model or _cross_name(svc))["name"]


@router.post("/v1/rerank")
async def cohere_rerank(
    body: CohereRerankRequest,
    request: Request,
    x_dowse_priority: str | None = Header(None, description=_HEADER_DOC),
) -> dict[str, Any]:
    """Cohere-shape rerank: top_n results with relevance_score = sigmoid(logit)."""
    priority = _priority(body.priority, x_dowse_priority)
    docs = _doc_texts(body.documents)
    svc = _service(request)
    order, scores, name = await _ranked(
        svc, body.query, docs, body.top_n, body.model, body.truncate, priority
    )
    results = []
    for i in order:
        row: dict[str, Any] = {"index": i, "relevance_score": _sigmoid(scores[i]), "logit": scores[i]}
        if body.return_documents:
            row["document"] = {"text": docs[i]}
        results.append(row)
    return {"id": uuid.uuid4().hex, "results": results, "model": name}


@router.post("/v2/rerank")
async def cohere_v2_rerank(
    body: CohereV2RerankRequest,
    request: Request,
    x_dowse_priority: str | None = Header(None, description=_HEADER_DOC),
) -> dict[str, Any]:
    """Cohere v2 rerank (``cohere.ClientV2``): ``{"id", "results": [{"index", "relevance_score"}]}``."""
    priority = _priority(body.priority, x_dowse_priority)
    svc = _service(request)
    if body.max_tokens_per_doc is not None:
        cap = int(svc.rerank_max_length or 0)
        if body.max_tokens_per_doc < cap:
            raise InvalidInput(
                f"max_tokens_per_doc below {cap} is not supported: query and document pairs are cut at {cap}",
                field="max_tokens_per_doc",
                limit=cap,
            )
    docs = _doc_texts(body.documents)
    order, scores, name = await _ranked(svc, body.query, docs, body.top_n, body.model, True, priority)
    results = [{"index": i, "relevance_score": _sigmoid(scores[i])} for i in order]
    return {
        "id": uuid.uuid4().hex,
        "results": results,
        "model": name,
        "meta": {"api_version": {"version": "2"}},
    }


def _cross_name(svc: EmbeddingService) -> str:
    for name in svc.loaded():
        if svc.model_info(name)["kind"] == "cross-encoder":
            return name
    return svc.default_model


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    """Loaded models, limits and batching settings (TEI-like)."""
    svc = _service(request)
    models = [svc.model_info(n) for n in svc.loaded()]
    return {
        "model_id": svc.default_model,
        "ready": svc.ready,
        "load_error": svc.load_error,
        "loaded": svc.loaded(),
        "configured": svc.model_names,
        "models": models,
        "precision": svc.precision,
        "device": svc.device,
        "batching": svc.batching,
        "max_client_batch_size": svc.max_client_batch,
        "max_batch_size": svc.max_batch_size,
        "max_batch_tokens": svc.max_batch_tokens,
        "max_wait_ms": svc.max_wait_ms,
        "max_queue": svc.max_queue,
        "limits": svc.limits(),
    }


async def start(app: FastAPI, settings: Any) -> None:
    """Build the EmbeddingService and load its models in the background (/ready is 503 until done)."""
    svc = EmbeddingService(
        settings.model_cache_dir(),
        list(settings.extra_models),
        default_model=settings.model,
        precision=settings.precision,
        device=settings.device,
        intra_op_threads=settings.intra_op_threads,
        batching=settings.batching,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        max_client_batch=settings.max_client_batch,
        auto_export=settings.auto_export,
        rerank_max_length=settings.rerank_max_length,
        micro_batch_tokens=settings.micro_batch_tokens,
        max_batch_queue=settings.max_batch_queue,
        max_request_tokens=settings.max_request_tokens,
        max_rerank_docs=settings.max_rerank_docs,
        max_rerank_tokens=settings.max_rerank_tokens,
    )
    app.state.embedding_service = svc
    app.state.embedder_client = InProcessEmbedderClient(svc)
    app.state.ready_checks.append(("embedder", lambda: svc.ready))

    async def _load() -> None:
        with contextlib.suppress(Exception):  # logged by start(); /ready stays 503 and /info shows it
            await svc.start()

    app.state.embedder_load_task = asyncio.get_running_loop().create_task(_load(), name="embedder-load")


async def stop(app: FastAPI) -> None:
    """Cancel loading if still running and stop the service."""
    task = getattr(app.state, "embedder_load_task", None)
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    svc = getattr(app.state, "embedding_service", None)
    if svc is not None:
        await svc.stop()
