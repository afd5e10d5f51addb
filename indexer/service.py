"""IndexerService: collections CRUD, validated batch upserts, dense / lexical search, ingest jobs.

Async facade over blocking :class:`~indexer.collection.Collection` calls (run in worker threads)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedder.client import EmbedderClient
from embedder.errors import Conflict, DependencyFailed, DowseError
from indexer.aliases import AliasOps, AliasStore
from indexer.chunking import Chunker, offsets_for_model, passage_text
from indexer.collection import Collection
from indexer.errors import (
    CollectionExists,
    CollectionNotFound,
    CollectionNotReady,
    InvalidCollectionSpec,
    ManifestMismatch,
)
from indexer.import_roots import import_roots
from indexer.jobs import IngestJobs
from indexer.manifest import ANALYZERS, METRICS, IndexSpec, Manifest, validate_name
from indexer.search_ops import SearchOps
from indexer.sharding import shard_of
from indexer.store import PreparedDoc
from indexer.validate import (
    check_ids,
    check_shards,
    validate_batch,
    validate_document,
)

log = logging.getLogger(__name__)


class IndexerService(IngestJobs, AliasOps, SearchOps):
    """All collections under ``data_dir/collections``; embeds documents through ``embedder``."""

    def __init__(
        self,
        data_dir: Path,
        embedder: EmbedderClient,
        *,
        hnsw_threshold: int = 50_000,
        max_batch_docs: int = 1000,
        max_doc_chars: int = 1_000_000,
        embed_batch: int = 64,
        snapshot_every: int = 20_000,
        rotation_min_chunks: int = 1000,
        job_roots: list[Path] | None = None,
    ) -> None:
        self.root = Path(data_dir) / "collections"
        self.embedder = embedder
        self.hnsw_threshold = hnsw_threshold
        self.max_batch_docs = max_batch_docs
        self.max_doc_chars = max_doc_chars
        self.embed_batch = embed_batch
        self.snapshot_every = snapshot_every
        self.rotation_min_chunks = rotation_min_chunks
        # ingest jobs started through the API read only files under these (imports first)
        self.job_roots = import_roots(Path(data_dir), job_roots)
        self._collections: dict[str, Collection] = {}
        self.aliases = AliasStore(Path(data_dir) / "aliases.json")
        self._chunkers: dict[str, Chunker] = {}
        self._create_lock = asyncio.Lock()
        self._jobs: dict[str, asyncio.Task[Any]] = {}
        self._revision_checked: dict[str, float] = {}
        self.ready = False

    # ---- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Open every collection on disk (snapshot load + SQLite replay), then mark ready."""
        self.root.mkdir(parents=True, exist_ok=True)
        for mpath in sorted(self.root.glob("*/manifest.json")):
            manifest = Manifest.load(mpath)
            coll = self._new_collection(mpath.parent, manifest)
            self._collections[manifest.name] = coll
            await asyncio.to_thread(coll.open)
            await asyncio.to_thread(self._mark_interrupted_jobs, coll)
        self.ready = True

    def _new_collection(self, root: Path, manifest: Manifest) -> Collection:
        return Collection(
            root,
            manifest,
            hnsw_threshold=self.hnsw_threshold,
            snapshot_every=self.snapshot_every,
            rotation_min_chunks=self.rotation_min_chunks,
        )

    @staticmethod
    def _mark_interrupted_jobs(coll: Collection) -> None:
        for job in coll.store.jobs():
            if job["status"] in ("queued", "running"):
                job["status"] = "interrupted"
                job["updated_at"] = time.time()
                coll.store.job_put(job)

    async def close(self) -> None:
        """Cancel jobs, snapshot and close every collection."""
        for task in list(self._jobs.values()):
            task.cancel()
        for task in list(self._jobs.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for coll in list(self._collections.values()):
            await asyncio.to_thread(coll.close)
        self._collections.clear()

    def _get(self, name: str) -> Collection:
        coll = self._collections.get(self.resolve_name(name))
        if coll is None:
            raise CollectionNotFound(f"collection {name!r} does not exist", field="collection")
        if not coll.ready:
            raise CollectionNotReady(f"collection {name!r} is still opening", field="collection")
        return coll

    # ---- collections --------------------------------------------------------------------------
    async def create_collection(
        self,
        name: str,
        *,
        model: str = "minilm",
        dims: int | None = None,
        metric: str = "cosine",
        index: dict[str, Any] | str | None = None,
        analyzer: str = "en_stem",
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        exist_ok: bool = False,
        shards: int = 1,
        shard: int | None = None,
        rotate: bool | None = None,
    ) -> dict[str, Any]:
        """Create a collection pinned to ``model`` (revision, prompts and dims from the embedder).

        ``shards`` > 1: this indexer holds shard ``shard`` of them (the gateway creates every shard).
        ``rotate`` (default: ``dims`` < the model's dim): fit a per-collection PCA rotation, index its
        leading ``dims`` and re-score shortlists at full dims (see :mod:`indexer.rotated`).
        """
        validate_name(name)
        shard = check_shards(shards, shard)
        if self.aliases.resolve(name) is not None:
            raise CollectionExists(f"{name!r} is an alias; a collection needs another name", field="name")
        spec = IndexSpec.parse(index)
        if metric not in METRICS:
            raise InvalidCollectionSpec(
                f"metric must be one of {list(METRICS)}", field="metric", limit=list(METRICS)
            )
        if analyzer not in ANALYZERS:
            raise InvalidCollectionSpec(
                f"analyzer must be one of {list(ANALYZERS)}", field="analyzer", limit=list(ANALYZERS)
            )
        info = await self._model_info(model)
        if info.get("kind", "bi-encoder") != "bi-encoder":
            raise InvalidCollectionSpec(f"model {model!r} is not a bi-encoder", field="model")
        model_dim = int(info["dim"])
        dims = model_dim if dims is None else dims
        if isinstance(dims, bool) or not isinstance(dims, int) or not 8 <= dims <= model_dim:
            raise InvalidCollectionSpec(f"dims must be in [8, {model_dim}]", field="dims", limit=model_dim)
        if spec.code == "binary" and dims % 8:
            raise InvalidCollectionSpec("binary codes need dims divisible by 8", field="dims", limit=8)
        max_len = int(info.get("max_length") or 256)
        chunk_tokens = max_len if chunk_tokens is None else chunk_tokens
        if isinstance(chunk_tokens, bool) or not 32 <= chunk_tokens <= max_len:
            raise InvalidCollectionSpec(
                f"chunk_tokens must be in [32, {max_len}]", field="chunk_tokens", limit=max_len
            )
        chunk_overlap = min(32, chunk_tokens // 4) if chunk_overlap is None else chunk_overlap
        if isinstance(chunk_overlap, bool) or not 0 <= chunk_overlap < chunk_tokens // 2:
            raise InvalidCollectionSpec(
                "chunk_overlap must be in [0, chunk_tokens/2)", field="chunk_overlap", limit=chunk_tokens // 2
            )
        rotate_given = rotate is not None
        if rotate is None:
            rotate = dims < model_dim
        if not isinstance(rotate, bool) or (rotate and dims >= model_dim):
            raise InvalidCollectionSpec(
                "rotate needs dims < the model's dim", field="rotate", limit=model_dim
            )
        prompts = info.get("prompts") or {}
        manifest = Manifest(
            name=name,
            model=str(info.get("name") or model),
            revision=str(info.get("revision") or ""),
            dims=dims,
            model_dim=model_dim,
            metric=metric,
            prompt="passage" if "passage" in prompts or not prompts else "document",
            query_prompt="query",
            index=spec,
            analyzer=analyzer,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            rotate=rotate,
            shards=shards,
            shard=shard,
        )
        async with self._create_lock:
            existing = self._collections.get(name)
            if existing is not None:
                # an unstated rotate matches a collection created before rotations existed (rotate false)
                if exist_ok and _same_config(existing.manifest, manifest, rotate_given):
                    return await self.collection_info(name)
                raise CollectionExists(f"collection {name!r} already exists", field="name")
            root = self.root / name
            if root.exists():  # leftover of a failed create / delete
                shutil.rmtree(root)
            root.mkdir(parents=True)
            manifest.save(root / "manifest.json")
            coll = self._new_collection(root, manifest)
            await asyncio.to_thread(coll.open)
            self._collections[name] = coll
        log.info("created collection %s (%s, %d dims, %s)", name, manifest.model, dims, spec.type)
        return await self.collection_info(name)

    async def list_collections(self) -> list[dict[str, Any]]:
        """Every collection's manifest and stats."""
        return [await self.collection_info(n) for n in sorted(self._collections)]

    async def collection_info(self, name: str) -> dict[str, Any]:
        """Manifest + stats of one collection."""
        coll = self._get(name)
        info = coll.manifest.to_dict()
        info["query_dims"] = coll.manifest.store_dims  # what /search/dense wants (full dims when rotating)
        info["stats"] = await asyncio.to_thread(coll.stats)
        info["search_defaults"] = await asyncio.to_thread(coll.search_defaults)
        return info

    async def put_search_defaults(self, name: str, doc: dict[str, Any]) -> Path:
        """Store the collection's served search defaults (written by ``dowse eval``)."""
        return await asyncio.to_thread(self._get(name).put_search_defaults, doc)

    async def delete_collection(self, name: str) -> dict[str, Any]:
        """Delete a collection and its files (409 while an alias points at it)."""
        coll = self._get(name)
        name = coll.manifest.name
        pointing = self.aliases.aliases_of(name)
        if pointing:
            raise Conflict(
                f"collection {name!r} is the target of alias(es) {pointing}: switch or delete them first",
                field="collection",
            )
        for job_id, task in list(self._jobs.items()):
            if job_id.startswith(f"{name}/"):
                task.cancel()
        async with self._create_lock:
            self._collections.pop(name, None)
            await asyncio.to_thread(coll.destroy)
        return {"deleted": name}

    # ---- documents ----------------------------------------------------------------------------
    def validate_document(self, doc: Any, where: str | int) -> None:
        """Check one ``{id, title, text, metadata}``; raises InvalidDocument / DocumentTooLarge."""
        validate_document(doc, where, self.max_doc_chars)

    def _chunker(self, manifest: Manifest) -> Chunker:
        key = f"{manifest.model}:{manifest.chunk_tokens}:{manifest.chunk_overlap}"
        if key not in self._chunkers:
            self._chunkers[key] = Chunker(
                manifest.chunk_tokens, manifest.chunk_overlap, offsets_for_model(manifest.model)
            )
        return self._chunkers[key]

    async def upsert(
        self, name: str, docs: list[dict[str, Any]], *, model: str | None = None, dims: int | None = None
    ) -> dict[str, Any]:
        """Validate everything, embed, then write the batch in one transaction (all or nothing)."""
        coll = self._get(name)
        man = coll.manifest
        if model is not None and model not in (man.model, name_alias(man.model)):
            raise ManifestMismatch(
                f"collection {name!r} holds vectors of model {man.model!r}, not {model!r}",
                field="model",
                limit=man.model,
            )
        if dims is not None and dims != man.dims:
            raise ManifestMismatch(
                f"collection {name!r} has {man.dims} dims, not {dims}", field="dims", limit=man.dims
            )
        validate_batch(docs, self.max_batch_docs, self.max_doc_chars)
        if man.shards > 1:  # a write that bypassed the gateway's routing would make ids unfindable
            for i, d in enumerate(docs):
                owner = shard_of(d["id"], man.shards)
                if owner != man.shard:
                    raise ManifestMismatch(
                        f"document {d['id']!r} belongs to shard {owner} of {man.shards}, this is shard "
                        f"{man.shard}: write through the gateway",
                        field=f"documents[{i}].id",
                        limit=owner,
                    )
        await self._check_revision(man)
        chunker = self._chunker(man)
        plans = await asyncio.to_thread(
            lambda: [chunker.split(d.get("title") or "", d["text"]) for d in docs]
        )
        texts = [
            passage_text(d.get("title") or "", c.text)
            for d, chunks in zip(docs, plans, strict=True)
            for c in chunks
        ]
        vectors = await self._embed(man, texts)
        prepared: list[PreparedDoc] = []
        pos = 0
        for d, chunks in zip(docs, plans, strict=True):
            emb = vectors[pos : pos + len(chunks)]
            pos += len(chunks)
            prepared.append(
                PreparedDoc(
                    id=d["id"],
                    title=d.get("title") or "",
                    text=d["text"],
                    metadata=json.dumps(d.get("metadata") or {}, allow_nan=False, ensure_ascii=False),
                    chunks=[(c.chunk_no, c.start, c.end) for c in chunks],
                    embeddings=emb,
                )
            )
        ch = await asyncio.to_thread(coll.write, prepared)
        return {"upserted": len(prepared), "chunks": len(ch.cids), "seq": ch.seq}

    async def _embed(self, man: Manifest, texts: list[str]) -> np.ndarray:
        # length-sorted groups: each embed call pads to its longest text, so similar lengths waste less
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts: list[np.ndarray] = []
        for i in range(0, len(texts), self.embed_batch):
            batch = [texts[j] for j in order[i : i + self.embed_batch]]
            try:
                res = await self.embedder.embed(
                    batch,
                    model=man.model,
                    prompt_name=man.prompt,
                    dimensions=man.store_dims,
                    truncate=True,
                    priority="batch",  # bulk work: micro-batches behind searches' query embeddings
                )
            except DowseError:
                raise
            except Exception as exc:
                log.warning("embedder call failed: %r", exc)
                raise DependencyFailed("embedder failed", field="embedder") from exc
            vec = np.asarray(res.vectors, dtype=np.float32)
            if vec.shape != (len(batch), man.store_dims):
                raise ManifestMismatch(
                    f"embedder returned shape {tuple(vec.shape)}, collection needs {man.store_dims} dims",
                    field="dims",
                    limit=man.store_dims,
                )
            if res.model and name_alias(res.model) != name_alias(man.model):
                raise ManifestMismatch(
                    f"embedder answered with model {res.model!r}, collection pins {man.model!r}",
                    field="model",
                    limit=man.model,
                )
            parts.append(vec)
        if not parts:
            return np.zeros((0, man.store_dims), np.float32)
        out = np.empty((len(texts), man.store_dims), np.float32)
        out[order] = np.concatenate(parts)
        return out

    async def _model_info(self, model: str) -> dict[str, Any]:
        try:
            return await self.embedder.model_info(model)
        except DowseError:
            raise
        except Exception as exc:
            log.warning("embedder call failed: %r", exc)
            raise DependencyFailed("embedder failed", field="embedder") from exc

    async def _check_revision(self, man: Manifest) -> None:
        """Refuse writes when the embedder now serves another revision of the pinned model (cached 60 s)."""
        if time.monotonic() - self._revision_checked.get(man.name, -1e9) < 60:
            return
        info = await self._model_info(man.model)
        rev = str(info.get("revision") or "")
        if man.revision and rev and rev != man.revision:
            raise ManifestMismatch(
                f"embedder serves {man.model!r} revision {rev!r}; {man.name!r} pins {man.revision!r}",
                field="model",
                limit=man.revision,
            )
        self._revision_checked[man.name] = time.monotonic()

    async def delete(self, name: str, ids: list[str]) -> dict[str, Any]:
        """Delete documents by id (unknown ids ignored), one transaction."""
        coll = self._get(name)
        check_ids(ids, self.max_batch_docs)
        ch = await asyncio.to_thread(coll.write, [], list(dict.fromkeys(ids)))
        return {"deleted": len(ch.removed_dnos), "seq": ch.seq}

    async def get_documents(self, name: str, ids: list[str]) -> list[dict[str, Any]]:
        """Stored documents in ``ids`` order (missing skipped)."""
        coll = self._get(name)
        check_ids(ids, self.max_batch_docs)
        return await asyncio.to_thread(coll.get_documents, ids)


def name_alias(model: str) -> str:
    """Canonical preset name (``all-MiniLM-L6-v2`` -> ``minilm``) for comparisons."""
    try:
        from embedder.registry import canonical_name

        return canonical_name(model)
    except ImportError:  # pragma: no cover - registry is part of this distribution
        return model.lower()


def _same_config(a: Manifest, b: Manifest, rotate: bool = True) -> bool:
    keys = (
        "model",
        "revision",
        "dims",
        "metric",
        "index",
        "analyzer",
        "chunk_tokens",
        "chunk_overlap",
        "shards",
        "shard",
        *(("rotate",) if rotate else ()),
    )
    return all(getattr(a, k) == getattr(b, k) for k in keys)
