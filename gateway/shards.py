"""Sharded collections behind the gateway: shard map, aliases, scatter-gather search and exact merges.

A collection of N shards lives on the first N indexers of the shard map (``DOWSE_INDEXER_URL``, one URL
per shard); document ``id`` lives on shard ``indexer.sharding.shard_of(id, N)``. Every shard is an
ordinary indexer that knows only its own part (its manifest says ``shard``/``shards``).

Search asks every shard for the top ``k`` in parallel and merges by score. Dense merge is exact: a
document's score does not depend on the other documents, so the global top-k is the top-k of the union
of each shard's top-k. BM25 takes two rounds: the shards' term statistics are summed first, then each
shard scores with the collection-wide idf (``LexicalIndex.search(stats=...)``).

A shard that fails or passes ``timeout_s`` is left out and named in ``PartialHits.failed_shards``; only
when every shard fails does the call raise. User errors (a bad filter) are the same on every shard and
propagate as they are.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from embedder.errors import Conflict, DependencyFailed, DowseError, InvalidInput, NotFound, TooLarge
from indexer.client import Hit, PartialHits, ShardFailure
from indexer.sharding import split_ids

log = logging.getLogger(__name__)
T = TypeVar("T")
# The same answer would come from every shard: the caller's mistake, not a shard failure.
USER_ERRORS = (InvalidInput, TooLarge, Conflict)


def describe(exc: BaseException, timeout_s: float | None = None) -> str:
    """A short reason for ``failed_shards`` (never a raw traceback)."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"timed out after {timeout_s:.1f} s" if timeout_s else "timed out"
    if isinstance(exc, DowseError):
        return exc.message
    return type(exc).__name__


def merge_hits(lists: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """The ``k`` best hits of several shards' lists (each best first): score descending, then id."""
    return heapq.nsmallest(k, (h for lst in lists for h in lst), key=lambda h: (-h.score, h.id))


def sum_term_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collection-wide BM25 statistics: ``num_docs`` and each term's document frequency, summed."""
    df: dict[str, int] = {}
    for p in parts:
        for term, n in (p.get("df") or {}).items():
            df[term] = df.get(term, 0) + int(n)
    return {"num_docs": sum(int(p.get("num_docs") or 0) for p in parts), "df": df}


def settle(results: Sequence[T | BaseException], timeout_s: float) -> tuple[dict[int, T], list[ShardFailure]]:
    """Split per-shard outcomes into answers and failures; raise when no shard answered.

    User errors propagate; a collection missing on every shard is ``NotFound``; otherwise a shard that
    raised is a failure (named by index, with its reason)."""
    ok: dict[int, T] = {}
    failed: list[ShardFailure] = []
    missing: list[NotFound] = []
    for i, res in enumerate(results):
        if isinstance(res, USER_ERRORS):
            raise res
        if isinstance(res, BaseException):
            if not isinstance(res, Exception):
                raise res  # cancellation
            if isinstance(res, NotFound):
                missing.append(res)
            failed.append(ShardFailure(i, describe(res, timeout_s)))
        else:
            ok[i] = res
    if not ok:
        if missing and len(missing) == len(results):
            raise missing[0]
        detail = "; ".join(f"shard {f.shard}: {f.reason}" for f in failed)
        raise DependencyFailed(f"no shard answered ({detail})", field="indexer")
    return ok, failed


class ShardedIndexerClient:
    """``IndexerClient`` over a shard map of indexer clients (index = shard number)."""

    def __init__(
        self,
        shards: Sequence[Any],
        *,
        timeout_s: float = 3.0,
        global_bm25: bool = True,
        alias_ttl_s: float = 1.0,
        layout_ttl_s: float = 5.0,
    ) -> None:
        if not shards:
            raise ValueError("a shard map needs at least one indexer")
        self.shards = list(shards)
        self.timeout_s = timeout_s
        self.global_bm25 = global_bm25
        self.alias_ttl_s = alias_ttl_s
        self.layout_ttl_s = layout_ttl_s
        self._aliases: tuple[float, dict[str, str]] = (-1e18, {})
        self._alias_task: asyncio.Task[None] | None = None
        self._layouts: dict[str, tuple[float, dict[str, Any]]] = {}

    def url(self, shard: int) -> str:
        """Where shard ``shard`` lives (for messages)."""
        return str(getattr(self.shards[shard], "base_url", f"shard {shard}"))

    # ---- aliases and layout -----------------------------------------------------------------
    async def aliases(self, fresh: bool = False) -> dict[str, str]:
        """Alias table from shard 0, cached ``alias_ttl_s``.

        Past the TTL the cached table answers while one background refresh runs (a hung shard 0 must not
        stall every search); ``fresh`` (or no table yet) waits for shard 0."""
        at, table = self._aliases
        if fresh or at < 0:
            await self._refresh_aliases()
            return self._aliases[1]
        if time.monotonic() - at >= self.alias_ttl_s and (
            self._alias_task is None or self._alias_task.done()
        ):
            self._alias_task = asyncio.create_task(self._refresh_aliases())
        return table

    async def _refresh_aliases(self) -> None:
        try:
            body = await asyncio.wait_for(self.shards[0].request("GET", "/v1/aliases"), self.timeout_s)
            table = {str(a): str(c) for a, c in (body.get("aliases") or {}).items()}
            self._aliases = (time.monotonic(), table)
        except Exception as exc:  # shard 0 down: keep resolving with what we knew
            log.warning("alias table unavailable (%s); using the cached one", describe(exc, self.timeout_s))

    async def resolve(self, name: str) -> str:
        """The collection behind ``name`` (itself when it is no alias)."""
        return (await self.aliases()).get(name, name)

    async def layout(self, name: str, _retry: bool = True) -> dict[str, Any]:
        """Manifest of the collection behind ``name`` (alias resolved), from the first shard that answers."""
        real = await self.resolve(name)
        cached = self._layouts.get(real)
        if cached is not None and time.monotonic() - cached[0] < self.layout_ttl_s:
            return cached[1]
        errors: list[tuple[int, BaseException]] = []
        for i, client in enumerate(self.shards):
            try:
                info: dict[str, Any] = await asyncio.wait_for(client.collection_info(real), self.timeout_s)
            except NotFound as exc:
                if i > 0:  # e.g. a 1-shard collection while shard 0 is down
                    errors.append((i, exc))
                    continue
                # shard 0 holds a part of every collection: the name is unknown, unless it is an alias
                # younger than our cached table
                if _retry and (await self.aliases(fresh=True)).get(name, name) != real:
                    return await self.layout(name, _retry=False)
                raise
            except Exception as exc:
                errors.append((i, exc))
            else:
                n = int(info.get("shards") or 1)
                if n > len(self.shards):
                    raise DependencyFailed(
                        f"collection {real!r} has {n} shards; the gateway's shard map lists "
                        f"{len(self.shards)} indexers",
                        field="indexer",
                    )
                self._layouts[real] = (time.monotonic(), info)
                return info
        if cached is not None:  # no shard answered: the manifest we had is still the best guess
            return cached[1]
        detail = "; ".join(f"shard {i}: {describe(e, self.timeout_s)}" for i, e in errors)
        raise DependencyFailed(f"collection {real!r}: no shard answered ({detail})", field="indexer")

    def forget(self, name: str) -> None:
        """Drop cached layout and aliases (after a create, delete or alias change)."""
        self._layouts.pop(name, None)
        self._aliases = (-1e18, self._aliases[1])

    async def scatter(
        self, n: int, call: Callable[[int, Any], Awaitable[T]], deadline: float | None = None
    ) -> list[T | BaseException]:
        """``call(i, client)`` on shards 0..n-1 in parallel, each bounded by the deadline."""
        end = deadline if deadline is not None else time.monotonic() + self.timeout_s

        async def one(i: int) -> T:
            return await asyncio.wait_for(call(i, self.shards[i]), max(end - time.monotonic(), 0.001))

        return list(await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True))

    # ---- IndexerClient ----------------------------------------------------------------------
    async def collection_info(self, name: str) -> dict[str, Any]:
        """The manifest (``name`` is the real collection when called with an alias)."""
        return await self.layout(name)

    async def search_dense(
        self,
        name: str,
        vector: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> PartialHits:
        """Every shard's top-k by vector similarity, merged: the exact top-k of the collection."""
        info = await self.layout(name)
        real, n = str(info["name"]), int(info.get("shards") or 1)
        res = await self.scatter(n, lambda _i, c: c.search_dense(real, vector, k, filters, texts))
        ok, failed = settle(res, self.timeout_s)
        return PartialHits(merge_hits(list(ok.values()), k), failed)

    async def search_lexical(
        self,
        name: str,
        query: str,
        k: int,
        filters: dict[str, Any] | None = None,
        texts: int | None = None,
    ) -> PartialHits:
        """Every shard's BM25 top-k with collection-wide idf (two rounds when sharded), merged."""
        info = await self.layout(name)
        real, n = str(info["name"]), int(info.get("shards") or 1)
        end = time.monotonic() + self.timeout_s
        stats: dict[str, Any] | None = None
        failed: list[ShardFailure] = []
        live = list(range(n))
        if n > 1 and self.global_bm25:
            res = await self.scatter(n, lambda _i, c: c.term_stats(real, query), end)
            parts, failed = settle(res, self.timeout_s)
            stats, live = sum_term_stats(list(parts.values())), sorted(parts)

        async def search(i: int, c: Any) -> list[Hit]:
            if i not in live:
                raise _Skipped
            if stats is None:
                hits: list[Hit] = await c.search_lexical(real, query, k, filters, texts)
            else:
                hits = await c.search_lexical(real, query, k, filters, texts, stats)
            return hits

        res2 = await self.scatter(n, search, end)
        res2 = [r for i, r in enumerate(res2) if i in live]
        ok, failed2 = settle(res2, self.timeout_s)
        failed += [ShardFailure(live[f.shard], f.reason) for f in failed2]
        return PartialHits(merge_hits(list(ok.values()), k), sorted(failed, key=lambda f: f.shard))

    async def get_documents_partial(
        self, name: str, ids: list[str]
    ) -> tuple[list[dict[str, Any]], list[ShardFailure]]:
        """Stored documents in ``ids`` order from their shards, and the shards that did not answer."""
        info = await self.layout(name)
        real, n = str(info["name"]), int(info.get("shards") or 1)
        groups = split_ids(ids, n)
        order = sorted(groups)

        async def get(i: int, c: Any) -> list[dict[str, Any]]:
            docs: list[dict[str, Any]] = await c.get_documents(real, groups[i]) if i in groups else []
            return docs

        res = await self.scatter(n, get)
        wanted = [res[i] for i in order]
        if not wanted:
            return [], []
        ok, failed = settle(wanted, self.timeout_s)
        by_id = {str(d["id"]): d for docs in ok.values() for d in docs}
        failures = [ShardFailure(order[f.shard], f.reason) for f in failed]
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id], failures

    async def get_documents(self, name: str, ids: list[str]) -> list[dict[str, Any]]:
        """Stored documents in ``ids`` order (those on unreachable shards are missing)."""
        try:
            docs, _failed = await self.get_documents_partial(name, ids)
        except DependencyFailed:
            return []  # the hits keep their ids and scores; their shards died since the search
        return docs

    async def aclose(self) -> None:
        """Close every shard's connection pool."""
        if self._alias_task is not None:
            self._alias_task.cancel()
        for c in self.shards:
            await c.aclose()


class _Skipped(Exception):
    """A shard already reported failed in the statistics round."""
