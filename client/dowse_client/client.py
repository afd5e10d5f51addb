"""``DowseClient``: the synchronous client (one ``httpx.Client``, connection pooling, retries)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from dowse_client import _core as c
from dowse_client import errors
from dowse_client import types as t
from dowse_client._base import (
    RETRYABLE_TRANSPORT,
    _Settings,
    error_for,
    log_write_failure,
    needs_write,
    parse_ok,
    should_retry,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")


class DowseClient(_Settings):
    """Synchronous Dowse client: search, documents, collections, jobs, embeddings, rerank, cache.

    ``base_url`` defaults to ``$DOWSE_URL`` then ``http://127.0.0.1:8000``; ``api_key`` to
    ``$DOWSE_API_KEY``. 429 / 503 answers and refused connections are retried ``max_retries`` times with
    exponential backoff, or after the server's ``Retry-After``. Errors raise :mod:`dowse_client.errors`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        headers: dict[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                         backoff_s=backoff_s, max_backoff_s=max_backoff_s, headers=headers)  # fmt: skip
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self.timeout)
        self._http.base_url = httpx.URL(self.base_url)
        self._http.headers.update(self.headers)

    def __enter__(self) -> DowseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (only if this client created it)."""
        if self._owns_http:
            self._http.close()

    def send(self, call: c.Call[T]) -> T:
        """Send one call with the retry policy; parse its answer or raise its typed error."""
        attempt = 0
        while True:
            try:
                resp = self._http.request(call.method, call.path, json=call.json, params=call.params)
            except RETRYABLE_TRANSPORT as exc:
                if attempt >= self.retry.max_retries:
                    raise errors.TransportError(f"{call.method} {call.path}: {exc}") from exc
                time.sleep(self.retry.delay(attempt, None))
                attempt += 1
                continue
            except httpx.TransportError as exc:
                raise errors.TransportError(f"{call.method} {call.path}: {exc}") from exc
            if resp.status_code < 400:
                return parse_ok(call.parse, resp)
            wait = should_retry(resp, attempt, self.retry)
            if wait is None:
                raise error_for(resp)
            time.sleep(wait)
            attempt += 1

    # ---- search, embeddings, rerank ---------------------------------------------------------------
    def search(self, collection: str, query: str, **options: Unpack[t.SearchOptions]) -> t.SearchResult:
        """Hybrid / BM25 / dense search, optionally reranked (``POST /v1/search``)."""
        return self.send(c.search(collection, query, **options))

    def embed(self, texts: str | Sequence[str], **options: Any) -> t.Embeddings:
        """Vectors for ``texts`` (options: model, dimensions, input_type, prompt_name, instruction, ...)."""
        return self.send(c.embed(texts, **options))

    def rerank(self, query: str, documents: Sequence[str], **options: Any) -> list[t.RerankResult]:
        """Cross-encoder scores, best first (options: top_n, model, return_documents, truncate)."""
        return self.send(c.rerank(query, documents, **options))

    # ---- collections and documents ----------------------------------------------------------------
    def create_collection(self, name: str, **options: Any) -> t.Collection:
        """Create a collection (options: model, dims, metric, index, analyzer, chunk_tokens, exist_ok)."""
        return self.send(c.create_collection(name, **options))

    def list_collections(self) -> list[t.Collection]:
        """Every collection with its manifest and stats."""
        return self.send(c.list_collections())

    def get_collection(self, name: str) -> t.Collection:
        """One collection's manifest and stats."""
        return self.send(c.get_collection(name))

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its files."""
        self.send(c.delete_collection(name))

    def upsert(self, collection: str, documents: Sequence[t.Document | dict[str, Any]],
               **options: Any) -> t.UpsertResult:  # fmt: skip
        """Insert or replace documents in one all-or-nothing batch."""
        return self.send(c.upsert(collection, documents, **options))

    def get_documents(self, collection: str, ids: Sequence[str]) -> list[t.Document]:
        """Stored documents in ``ids`` order (missing ids skipped)."""
        return self.send(c.get_documents(collection, ids))

    def delete_documents(self, collection: str, ids: Sequence[str]) -> int:
        """Delete documents by id; returns how many existed."""
        return self.send(c.delete_documents(collection, ids))

    # ---- jobs -------------------------------------------------------------------------------------
    def start_job(self, collection: str, path: str, format: str | None = None) -> t.Job:
        """Start a background ingest of a file on the server (JSONL / CSV / Parquet)."""
        return self.send(c.start_job(collection, path, format))

    def get_job(self, collection: str, job_id: str) -> t.Job:
        """One job's progress."""
        return self.send(c.get_job(collection, job_id))

    def list_jobs(self, collection: str) -> list[t.Job]:
        """A collection's jobs, newest first."""
        return self.send(c.list_jobs(collection))

    def iter_job(self, collection: str, job_id: str, *, poll_s: float = 1.0,
                 timeout_s: float | None = None) -> Iterator[t.Job]:  # fmt: skip
        """Yield the job's progress every ``poll_s`` until it finishes (the last one yielded is final)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(collection, job_id)
            yield job
            if job.finished:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
            time.sleep(poll_s)

    def wait_job(self, collection: str, job_id: str, **kw: Any) -> t.Job:
        """Block until the job finishes; returns its final state."""
        job = None
        for job in self.iter_job(collection, job_id, **kw):  # noqa: B007
            pass
        assert job is not None
        return job

    # ---- semantic cache ---------------------------------------------------------------------------
    def cache_lookup(self, namespace: str, prompt: str, **options: Any) -> t.CacheLookup:
        """Look a prompt up (options: scope, policy, max_error, threshold)."""
        return self.send(c.cache_lookup(namespace, prompt, **options))

    def cache_store(self, namespace: str, prompt: str, response: str, **options: Any) -> t.CacheStore:
        """Store a prompt/response pair (options: scope, metadata, ttl_s)."""
        return self.send(c.cache_store(namespace, prompt, response, **options))

    def cache_feedback(self, namespace: str, lookup_id: str, response: str) -> t.CacheFeedback:
        """Report the fresh response for an explored (or missed) lookup."""
        return self.send(c.cache_feedback(namespace, lookup_id, response))

    def cache_stats(self, namespace: str | None = None) -> dict[str, Any]:
        """Entries, lookups and exploit / explore / miss counts."""
        return self.send(c.cache_stats(namespace))

    def cache_delete_namespace(self, namespace: str) -> int:
        """Delete a namespace's entries and statistics; returns the entry count."""
        return self.send(c.cache_delete_namespace(namespace))

    def get_or_call(self, namespace: str, prompt: str, fn: Callable[[], str], *,
                    scope: str | dict[str, Any] | None = None, **options: Any) -> t.CachedAnswer:  # fmt: skip
        """Serve ``prompt`` from the cache, or call ``fn`` and teach the cache with its answer.

        exploit: the cached response, ``fn`` not called. explore / miss: ``fn()`` is called and its answer
        sent as feedback on the lookup (the server judges the cached answer and stores the fresh one as
        needed). A failed write is logged; the fresh answer is returned either way."""
        lookup = self.cache_lookup(namespace, prompt, scope=scope, **options)
        if lookup.decision == "exploit" and lookup.response is not None:
            return t.CachedAnswer(lookup.response, True, lookup)
        fresh = fn()
        fb = None
        if needs_write(lookup):
            try:
                fb = self.cache_feedback(namespace, lookup.lookup_id, fresh)
            except errors.NotFound:  # the lookup record expired: store the pair instead
                self._store_quietly(namespace, prompt, fresh, scope)
            except errors.DowseError as exc:
                log_write_failure(exc)
        return t.CachedAnswer(fresh, False, lookup, fb)

    def _store_quietly(self, namespace: str, prompt: str, response: str, scope: Any) -> None:
        try:
            self.cache_store(namespace, prompt, response, scope=scope)
        except errors.DowseError as exc:
            log_write_failure(exc)

    # ---- ops --------------------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        """``/ready``'s components (raises NotReady while starting; not retried past max_retries)."""
        return self.send(c.ready())
