"""``dowse index PATH -c C --engine ray --indexer-url URL``: the Ray job writing over HTTP.

For a collection that lives behind a server (an indexer, or the gateway in front of indexer shards, which
routes each document to its shard): Ray Data streams the file to a pool of actors that parse and validate
records, drop ids the server already holds (``POST .../documents/get``) and upsert the rest
(``POST .../documents``, one atomic batch per call, retried while the server answers 429 / 502 / 503 / 504
or is unreachable). The server embeds with its embedder tier, so here the actors hold HTTP clients, not
ONNX sessions. Upserts replace by id: a batch re-sent by a retried Ray task leaves one copy of each document.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx

from indexer.ingest import Progress, count_records, detect_format
from indexer.ray_job import RayOptions, dataset, parse_rows

log = logging.getLogger(__name__)
_TRANSIENT = {429, 502, 503, 504}


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class PostActor:
    """Ray Data UDF: validates a batch of records and upserts it through the server's document API."""

    def __init__(
        self, url: str, collection: str, fmt: str, max_doc_chars: int, retry_s: float, api_key: str | None
    ) -> None:
        self.base = f"{url.rstrip('/')}/v1/collections/{collection}"
        self.fmt, self.max_doc_chars, self.retry_s = fmt, max_doc_chars, retry_s
        self.http = httpx.Client(timeout=300.0, headers=_auth(api_key))

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while True:
            try:
                resp = self.http.post(self.base + path, json=body)
                if resp.status_code not in _TRANSIENT:
                    resp.raise_for_status()
                    out: dict[str, Any] = resp.json()
                    return out
                reason = f"HTTP {resp.status_code}"
            except httpx.TransportError as exc:
                reason = type(exc).__name__
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.base}{path}: still failing after {self.retry_s:.0f} s ({reason})")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def __call__(self, batch: Any) -> Any:
        """pyarrow batch of records -> pyarrow table of (id, status written|skipped|error, error)."""
        import pyarrow as pa

        out: dict[str, list[str]] = {"id": [], "status": [], "error": []}

        def emit(doc_id: str, status: str, error: str = "") -> None:
            out["id"].append(doc_id)
            out["status"].append(status)
            out["error"].append(error)

        docs: dict[str, dict[str, Any]] = {}
        for doc in parse_rows(batch.to_pylist(), self.fmt, self.max_doc_chars):
            if "error" in doc:
                emit(doc["id"], "error", doc["error"])
            elif doc["id"] in docs:
                emit(doc["id"], "error", f"duplicate id {doc['id']!r} in the file")
            else:
                docs[doc["id"]] = doc
        if docs:
            stored = {d["id"] for d in self._post("/documents/get", {"ids": list(docs)})["documents"]}
            todo = [d for i, d in docs.items() if i not in stored]
            if todo:
                self._post("/documents", {"documents": todo})
            for i in docs:
                emit(i, "skipped" if i in stored else "written")
        return pa.table(out)


def run_ray_remote(
    url: str,
    collection: str,
    path: Path,
    fmt: str | None,
    *,
    options: RayOptions,
    model: str | None = None,
    batch_size: int = 64,
    max_doc_chars: int = 1_000_000,
    retry_s: float = 600.0,
    progress: Progress | None = None,
    on_progress: Any = None,
    api_key: str | None = None,
) -> Progress:
    """Index ``path`` into ``collection`` on the server at ``url`` with a Ray Data pipeline (blocking).

    ``api_key`` (the CLI passes ``$DOWSE_API_KEY``) is sent as a bearer key: admin, or
    ``write:<collection>`` when the collection exists (creating one needs admin)."""
    import ray
    import ray.data

    fmt = detect_format(path, fmt)
    prog = progress or Progress()
    if prog.total is None:
        prog.total = count_records(path, fmt)
    body: dict[str, Any] = {"name": collection, "exist_ok": True}
    if model:
        body["model"] = model
    base = f"{url.rstrip('/')}/v1/collections"
    exists = httpx.get(f"{base}/{collection}", headers=_auth(api_key), timeout=60.0)
    if exists.status_code == 404:
        httpx.post(base, json=body, headers=_auth(api_key), timeout=60.0).raise_for_status()
    else:
        exists.raise_for_status()
    started = not ray.is_initialized()
    if started:
        ray.init(address=options.address, log_to_driver=False, include_dashboard=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        n = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
        ds = dataset(ray.data, path, fmt).map_batches(
            PostActor,
            fn_constructor_args=(url, collection, fmt, max_doc_chars, retry_s, api_key),
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=n),
            num_cpus=0.5,  # waits on the server most of the time
        )
        log.info("ray index %s -> %s at %s: %d writers", path.name, collection, url, n)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                if row["status"] == "written":
                    prog.done += 1
                elif row["status"] == "skipped":
                    prog.skipped += 1
                else:
                    prog.error(f"record {row['id'] or '?'}: {row['error']}")
            if on_progress is not None:
                on_progress(prog)
    finally:
        if started:
            ray.shutdown()
    return prog
