"""Batch index jobs on Ray Data (``dowse index PATH -c C --engine ray [--address ADDR]``).

Pipeline: the file becomes a streamed Ray dataset (JSONL as text lines, Parquet / CSV natively) ->
``map_batches`` onto a pool of actors, each holding one ONNX session (one actor per GPU when Ray sees GPUs,
else one per CPU slot): parse, validate, chunk with the collection's chunker, embed with the collection's
model, prompt and dims -> this process writes each batch through the collection's write path (one SQLite
transaction, then FAISS and BM25: the same crash-safe commit as every upsert), skipping ids already stored.
Ray retries the tasks of a dead worker; a document delivered twice is written once (the id check), so a
job ends with exactly one copy of every document. Progress goes to the caller's callback and to the
collection's job table (``GET /v1/collections/C/jobs``), like a local job.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.errors import DowseError
from indexer.chunking import Chunker, offsets_for_model, passage_text
from indexer.errors import ManifestMismatch
from indexer.ingest import Progress, count_records, detect_format, to_document
from indexer.store import PreparedDoc
from indexer.validate import validate_document

if TYPE_CHECKING:
    from indexer.collection import Collection

log = logging.getLogger(__name__)
_COLUMNS = ("id", "title", "text", "metadata", "chunks", "emb", "error", "skip")


@dataclass
class RayOptions:
    """How the Ray job runs."""

    address: str | None = None  # None: start a local Ray instance (or join RAY_ADDRESS)
    workers: int | None = None  # embedding actors; None: one per GPU, else one per CPU slot left
    threads_per_actor: int = 1  # ONNX intra-op threads of each actor
    precision: str = "int8"
    model_cache: Path | None = None
    embed_batch: int = 64


class EmbedActor:
    """Ray Data UDF: one ONNX session per actor; parses, validates, chunks and embeds a batch of records."""

    def __init__(self, spec: dict[str, Any], skip: Any = None) -> None:
        from embedder.service import EmbeddingService

        self.spec = spec
        self.service = EmbeddingService(
            Path(spec["model_cache"]),
            [],
            default_model=spec["model"],
            precision=spec["precision"],
            intra_op_threads=spec["threads"],
            device=spec["device"],
            batching=False,
            auto_export=False,
        )
        self.service.start_blocking()
        self.chunker = Chunker(spec["chunk_tokens"], spec["chunk_overlap"], offsets_for_model(spec["model"]))
        self.skip: set[str] = set(skip) if skip is not None else set()

    def __call__(self, batch: Any) -> Any:
        """pyarrow batch of records -> pyarrow table of prepared documents (or errors / skips)."""
        import pyarrow as pa

        out: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
        todo: list[tuple[dict[str, Any], list[Any]]] = []
        for doc in parse_rows(batch.to_pylist(), self.spec["format"], self.spec["max_doc_chars"]):
            if "error" in doc:
                self._emit(out, doc)
            elif doc["id"] in self.skip:
                self._emit(out, {"id": doc["id"], "skip": True})
            else:
                todo.append((doc, self.chunker.split(doc.get("title") or "", doc["text"])))
        texts = [passage_text(d.get("title") or "", c.text) for d, chunks in todo for c in chunks]
        vecs = self._embed(texts)
        pos = 0
        for doc, chunks in todo:
            emb = vecs[pos : pos + len(chunks)]
            pos += len(chunks)
            self._emit(
                out,
                {
                    "id": doc["id"],
                    "title": doc.get("title") or "",
                    "text": doc["text"],
                    "metadata": json.dumps(doc.get("metadata") or {}, allow_nan=False, ensure_ascii=False),
                    "chunks": json.dumps([[c.chunk_no, c.start, c.end] for c in chunks]),
                    "emb": np.ascontiguousarray(emb, dtype=np.float32).tobytes(),
                },
            )
        return pa.table(out)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Like IndexerService._embed: length-sorted groups of ``embed_batch``, one call each."""
        dims = self.spec["dims"]
        if not texts:
            return np.zeros((0, dims), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), dims), np.float32)
        step = self.spec["embed_batch"]
        for i in range(0, len(texts), step):
            idx = order[i : i + step]
            out[idx] = self.service.encode(
                [texts[j] for j in idx], prompt_name=self.spec["prompt"], dimensions=dims, batch_size=step
            )
        return out

    @staticmethod
    def _emit(out: dict[str, list[Any]], row: dict[str, Any]) -> None:
        defaults = {"title": "", "text": "", "metadata": "{}", "chunks": "[]", "emb": b"", "error": ""}
        for c in _COLUMNS:
            out[c].append(row.get(c, defaults.get(c, False)))


def parse_rows(rows: list[dict[str, Any]], fmt: str, max_doc_chars: int) -> list[dict[str, Any]]:
    """Dataset rows -> validated documents, or ``{"id", "error"}`` for a record that cannot be indexed."""
    out: list[dict[str, Any]] = []
    for row in rows:
        rec: dict[str, Any] | str = row
        if fmt == "jsonl":
            try:
                loaded = json.loads(row["text"])
                rec = loaded if isinstance(loaded, dict) else "not a JSON object"
            except json.JSONDecodeError as exc:
                rec = f"invalid JSON ({exc.msg})"
        if isinstance(rec, str):
            out.append({"id": "", "error": rec})
            continue
        doc = to_document(rec)
        try:
            validate_document(doc, str(doc.get("id")), max_doc_chars)
        except DowseError as exc:
            out.append({"id": str(doc.get("id") or ""), "error": exc.message})
            continue
        out.append(doc)
    return out


def dataset(ray_data: Any, path: Path, fmt: str) -> Any:
    if fmt == "jsonl":
        return ray_data.read_text(str(path))
    if fmt == "parquet":
        return ray_data.read_parquet(str(path))
    return ray_data.read_csv(str(path))


def plan(ray: Any, opts: RayOptions) -> tuple[int, dict[str, Any], str]:
    """Actor count, per-actor resources, and device: one actor per GPU, else per CPU slot (one for reads)."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        return opts.workers or gpus, {"num_gpus": 1}, "cuda"
    return opts.workers or max(1, int(res.get("CPU", 1)) - 1), {"num_cpus": 1}, "cpu"


def _stored_ids(coll: Collection) -> list[str]:
    with coll.store.reader() as conn:
        return [r[0] for r in conn.execute("SELECT id FROM docs")]


def run_ray_ingest(
    coll: Collection,
    path: Path,
    fmt: str | None,
    *,
    options: RayOptions,
    batch_size: int = 64,
    max_doc_chars: int = 1_000_000,
    revision: str | None = None,
    progress: Progress | None = None,
    on_progress: Any = None,
) -> Progress:
    """Index ``path`` into the open collection ``coll`` with a Ray Data pipeline (blocking)."""
    import ray
    import ray.data

    fmt = detect_format(path, fmt)
    prog = progress or Progress()
    if prog.total is None:
        prog.total = count_records(path, fmt)
    man = coll.manifest
    if revision and man.revision and revision != man.revision:
        raise ManifestMismatch(
            f"the models here are revision {revision!r}; {man.name!r} pins {man.revision!r}",
            field="model",
            limit=man.revision,
        )
    now = time.time()
    job: dict[str, Any] = {"id": "ray-" + uuid.uuid4().hex[:8], "path": str(path), "format": fmt}
    job.update(status="running", total=prog.total, done=0, skipped=0, failed=0, errors=[])
    job.update(created_at=now, updated_at=now)
    coll.store.job_put(job)
    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address, log_to_driver=False, include_dashboard=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        n_actors, resources, device = plan(ray, options)
        spec = {
            "model_cache": str(options.model_cache),
            "model": man.model,
            "precision": options.precision,
            "threads": options.threads_per_actor,
            "device": device,
            "format": fmt,
            "chunk_tokens": man.chunk_tokens,
            "chunk_overlap": man.chunk_overlap,
            "prompt": man.prompt,
            "dims": man.dims,
            "embed_batch": options.embed_batch,
            "max_doc_chars": max_doc_chars,
        }
        stored = _stored_ids(coll)
        ds = dataset(ray.data, path, fmt).map_batches(
            EmbedActor,
            fn_constructor_kwargs={"spec": spec, "skip": stored or None},
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            **resources,
        )
        log.info("ray index %s -> %s: %d actors on %s", path.name, coll.name, n_actors, device)
        _drain(coll, ds, batch_size, prog, job, on_progress)
        job["status"] = "completed"
    except BaseException as exc:
        job["status"] = "failed" if isinstance(exc, Exception) else "interrupted"
        job["errors"] = [*prog.errors, f"{type(exc).__name__}: {exc}"][-100:]
        raise
    finally:
        job.update(done=prog.done, skipped=prog.skipped, failed=prog.failed, updated_at=time.time())
        if coll.ready:
            coll.store.job_put(job)
        if started:
            ray.shutdown()
    return prog


def _drain(coll: Collection, ds: Any, batch_size: int, prog: Progress, job: dict[str, Any], cb: Any) -> None:
    """Write the embedded batches as they stream in; each is one transaction."""
    written: set[str] = set()
    last = 0.0
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        prepared: list[PreparedDoc] = []
        rows = batch.to_pylist()
        have = coll.store.existing_ids([r["id"] for r in rows if not r["error"] and not r["skip"]])
        for r in rows:
            if r["error"]:
                prog.error(f"record {r['id'] or '?'}: {r['error']}")
            elif r["skip"] or r["id"] in written or r["id"] in have:
                # stored before this run (resume), or a retried task delivered it again
                prog.skipped += 1 if r["id"] not in written else 0
            else:
                emb = np.frombuffer(r["emb"], dtype=np.float32).reshape(-1, coll.manifest.dims)
                chunks = [tuple(c) for c in json.loads(r["chunks"])]
                prepared.append(PreparedDoc(r["id"], r["title"], r["text"], r["metadata"], chunks, emb))  # type: ignore[arg-type]
                written.add(r["id"])
        if prepared:
            coll.write(prepared)
            prog.done += len(prepared)
        if cb is not None:
            cb(prog)
        if time.monotonic() - last > 1.0:
            last = time.monotonic()
            job.update(done=prog.done, skipped=prog.skipped, failed=prog.failed, updated_at=time.time())
            job["errors"] = list(prog.errors)
            coll.store.job_put(job)
