"""The playground at ``/ui`` (mounted by the gateway role): its static files, relevance judgements and
the evaluation result files it shows.

Routes: ``GET /`` and ``GET /ui`` redirect to ``/ui/``; ``GET /ui/{file}`` serves ``services/ui/``;
``POST /v1/judgements`` and ``GET /v1/judgements/{collection}`` keep the per-collection qrels
(``services.judgements``); ``GET /v1/eval/results`` lists, and ``GET /v1/eval/results/{source}/{name}``
serves, the tables, JSON and plots in ``bench/results`` and ``<data_dir>/results``.
The page itself needs no key; every API call it makes carries the key the user typed, if any.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from embedder.errors import InvalidInput, NotFound, NotReady
from indexer.manifest import NAME_RE
from services.judgements import MAX_DOC_ID, MAX_QUERY, QrelsBook

router = APIRouter()
UI_DIR = Path(__file__).resolve().parent / "ui"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
RESULT_TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".csv": "text/csv; charset=utf-8",
}
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# Everything the page loads or calls is on this origin; the browser enforces it too.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
MAX_LISTED = 200


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """The playground is the front page."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui", include_in_schema=False)
async def ui_redirect() -> RedirectResponse:
    """``/ui`` -> ``/ui/`` so relative asset paths resolve."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/{name:path}", include_in_schema=False)
async def ui_file(name: str) -> Response:
    """A static file of the playground (``index.html`` for ``/ui/``)."""
    name = name or "index.html"
    path = (UI_DIR / name).resolve()
    if not path.is_relative_to(UI_DIR) or not path.is_file() or path.suffix not in STATIC_TYPES:
        raise NotFound(f"no file {name!r} in the playground", field="path")
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers=headers)


class JudgementIn(BaseModel):
    """One relevance judgement: 1 relevant, 0 not relevant, null withdraws it."""

    model_config = ConfigDict(extra="forbid")
    collection: str = Field(min_length=1, max_length=64)
    # `query` length is checked by QrelsBook (field "query"), see services/gateway_api.py for why
    query: str = Field(description=f"1..{MAX_QUERY} characters")
    doc_id: str = Field(min_length=1, max_length=MAX_DOC_ID)
    relevance: int | None = Field(ge=0, le=3, description="graded relevance 0..3; null withdraws")


def _book(request: Request) -> QrelsBook:
    book: QrelsBook | None = getattr(request.app.state, "qrels_book", None)
    if book is None:
        raise NotReady("judgements are not started", field="judgements")
    return book


async def _check_collection(request: Request, name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(f"collection name must match {NAME_RE.pattern}", field="collection")
    indexer = getattr(request.app.state, "indexer_client", None)
    if indexer is not None:
        await indexer.collection_info(name)  # NotFound (404) for an unknown collection


@router.post("/v1/judgements", tags=["playground"])
async def judge(body: JudgementIn, request: Request) -> dict[str, Any]:
    """Record a relevance judgement in the collection's qrels (BEIR layout, usable by ``dowse eval``)."""
    await _check_collection(request, body.collection)
    return await _book(request).judge(body.collection, body.query, body.doc_id, body.relevance)


@router.get("/v1/judgements/{collection}", tags=["playground"])
async def judgements(collection: str, request: Request, query: str | None = None) -> dict[str, Any]:
    """The collection's judged queries (or one query's judgements) and the qrels file's path."""
    if not NAME_RE.fullmatch(collection):
        raise InvalidInput(f"collection name must match {NAME_RE.pattern}", field="collection")
    return await _book(request).for_query(collection, query)


def _sources(request: Request) -> list[Path]:
    return list(getattr(request.app.state, "results_dirs", []))


@router.get("/v1/eval/results", tags=["playground"])
async def results(request: Request) -> dict[str, Any]:
    """Result files (Markdown, JSON, PNG, CSV) of ``dowse eval`` and the benches, newest first."""
    files: list[dict[str, Any]] = []
    for i, folder in enumerate(_sources(request)):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_file() and p.suffix in RESULT_TYPES and FILE_RE.fullmatch(p.name):
                st = p.stat()
                files.append(
                    {
                        "source": f"r{i}",
                        "folder": str(folder),
                        "name": p.name,
                        "stem": p.stem,
                        "kind": p.suffix[1:],
                        "bytes": st.st_size,
                        "modified": st.st_mtime,
                    }
                )
    files.sort(key=lambda f: (-f["modified"], f["name"]))
    return {"folders": [str(p) for p in _sources(request)], "files": files[:MAX_LISTED]}


@router.get("/v1/eval/results/{source}/{name}", tags=["playground"])
async def result_file(source: str, name: str, request: Request) -> Response:
    """One result file, read-only."""
    sources = _sources(request)
    m = re.fullmatch(r"r(\d{1,2})", source)
    if m is None or int(m.group(1)) >= len(sources):
        raise NotFound(f"no results folder {source!r}", field="source")
    folder = sources[int(m.group(1))]
    path = folder / name
    if not FILE_RE.fullmatch(name) or path.suffix not in RESULT_TYPES or not path.is_file():
        raise NotFound(f"no result file {name!r}", field="name")
    return FileResponse(path, media_type=RESULT_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


async def start(app: FastAPI, settings: Any) -> None:
    """Open the judgements folder and note where result files live."""
    data_dir = Path(getattr(settings, "data_dir", "./data"))
    app.state.qrels_book = QrelsBook(data_dir / "judgements")
    dirs = getattr(settings, "results_dirs", None)
    default = [Path("bench/results"), data_dir / "results"]
    app.state.results_dirs = [Path(p) for p in dirs] if dirs else default


async def stop(app: FastAPI) -> None:
    """Nothing to close."""
    app.state.qrels_book = None
