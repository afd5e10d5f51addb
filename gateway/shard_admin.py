"""Writes and administration of sharded collections through the gateway.

Upserts and deletes are split by ``shard_of(id, N)``; each shard's part is one transaction on that shard.
The answer lists exactly the ids whose shard acknowledged them. When a part fails, the call raises with
``result`` attached (acknowledged ids, failed shards and their ids): a shard that is down or failing
gives ``ShardUnavailable`` (HTTP 503 naming the shard), a shard that refused the part (e.g. 409, model
mismatch) gives that refusal. Writes are idempotent by id, so retrying the whole request is safe.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from embedder.errors import DowseError, InvalidInput, NotFound
from gateway.errors import ShardUnavailable
from gateway.shards import USER_ERRORS, ShardedIndexerClient, describe, settle
from indexer.errors import CollectionExists
from indexer.manifest import validate_name
from indexer.sharding import shard_of, split_ids
from indexer.validate import check_ids, validate_batch

COUNTS = ("documents", "chunks", "dense_vectors", "lexical_documents")


def _q(name: str) -> str:
    return quote(name, safe="")


def write_outcome(
    groups: dict[int, list[str]], results: dict[int, Any], timeout_s: float
) -> tuple[list[int], list[dict[str, Any]], BaseException | None]:
    """(acknowledged shards, failed shards with their ids and reasons, the error to raise or None).

    An outage (dead, failing, timed-out shard) outranks a refusal (4xx): the client should retry."""
    ok: list[int] = []
    failed: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    for shard in sorted(groups):
        res = results[shard]
        if isinstance(res, BaseException):
            if not isinstance(res, Exception):
                raise res
            failed.append({"shard": shard, "reason": describe(res, timeout_s), "ids": groups[shard]})
            errors.append(res)
        else:
            ok.append(shard)
    worst = next((e for e in errors if _outage(e)), errors[0] if errors else None)
    return ok, failed, worst


def _outage(exc: BaseException | None) -> bool:
    return exc is not None and not isinstance(exc, USER_ERRORS)


def raise_partial(
    what: str, failed: list[dict[str, Any]], worst: BaseException, result: dict[str, Any]
) -> None:
    """Raise the error of a write that did not reach every shard, with ``result`` attached."""
    names = ", ".join(f"shard {f['shard']} ({f['reason']})" for f in failed)
    if _outage(worst):
        err: DowseError = ShardUnavailable(
            f"{what}: not acknowledged by {names}; the other shards' ids are written (see acknowledged); "
            "retrying the request is safe",
            field=f"shards[{failed[0]['shard']}]",
            result=result,
        )
    else:
        assert isinstance(worst, DowseError)
        err = worst
        err.result = result  # type: ignore[attr-defined]
    raise err


class ShardAdmin:
    """Collections CRUD, documents, aliases and jobs of a sharded deployment (gateway side)."""

    def __init__(
        self,
        client: ShardedIndexerClient,
        *,
        write_timeout_s: float = 300.0,
        max_batch_docs: int = 1000,
        max_doc_chars: int = 1_000_000,
    ) -> None:
        self.client = client
        self.write_timeout_s = write_timeout_s
        self.max_batch_docs = max_batch_docs
        self.max_doc_chars = max_doc_chars

    async def _scatter_write(self, shards: list[int], call: Any) -> dict[int, Any]:
        end = time.monotonic() + self.write_timeout_s
        res = await self.client.scatter(
            max(shards) + 1 if shards else 0,
            lambda i, c: call(i, c) if i in shards else asyncio.sleep(0),
            end,
        )
        return {i: res[i] for i in shards}

    async def _layout(self, name: str) -> tuple[str, int]:
        info = await self.client.layout(name)
        return str(info["name"]), int(info.get("shards") or 1)

    # ---- collections ------------------------------------------------------------------------
    async def create_collection(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the collection on shards 0..N-1 of the map (``shards``: N, default 1)."""
        spec = dict(body)
        n = spec.pop("shards", 1)
        spec.pop("shard", None)
        limit = len(self.client.shards)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
            raise InvalidInput(
                f"shards must be in [1, {limit}] (indexers in the gateway's shard map)",
                field="shards",
                limit=limit,
            )
        name = validate_name(spec.get("name"))  # type: ignore[arg-type]
        if not spec.get("exist_ok"):
            try:
                await asyncio.wait_for(self.client.shards[0].collection_info(name), self.client.timeout_s)
            except NotFound:
                pass
            else:
                raise CollectionExists(f"collection {name!r} already exists", field="name")
        # exist_ok on the shards: a create that failed half-way is finished by running it again
        res = await self._scatter_write(
            list(range(n)),
            lambda i, c: c.request(
                "POST", "/v1/collections", {**spec, "shards": n, "shard": i, "exist_ok": True}, write=True
            ),
        )
        groups: dict[int, list[str]] = {i: [] for i in range(n)}
        created, failed, worst = write_outcome(groups, res, self.write_timeout_s)
        self.client.forget(name)
        if worst is not None:
            for f in failed:
                f.pop("ids", None)
            result = {"created_shards": created, "failed_shards": failed, "partial": True}
            raise_partial(f"create {name!r} (retry with exist_ok: true)", failed, worst, result)
        info = dict(res[0])
        info.pop("shard", None)
        return info

    async def list_collections(self) -> dict[str, Any]:
        """Collections of every shard, stats summed per collection."""
        n = len(self.client.shards)
        res = await self.client.scatter(n, lambda _i, c: c.request("GET", "/v1/collections"))
        ok, failed = settle(res, self.client.timeout_s)
        merged: dict[str, dict[str, Any]] = {}
        for part in ok.values():
            for info in part.get("collections", []):
                have = merged.setdefault(info["name"], {**info, "stats": dict.fromkeys(COUNTS, 0)})
                if int(info.get("shard") or 0) == 0:
                    have.update({k: v for k, v in info.items() if k != "stats"})
                for key in COUNTS:
                    have["stats"][key] += int((info.get("stats") or {}).get(key) or 0)
        out = []
        for info in merged.values():
            info.pop("shard", None)
            out.append(info)
        failures = [f.to_dict() for f in failed]
        return {"collections": out, "partial": bool(failures), "failed_shards": failures}

    async def collection_info(self, name: str) -> dict[str, Any]:
        """Manifest, summed stats, and each shard's own stats (their counts should agree per shard)."""
        real, n = await self._layout(name)
        res = await self.client.scatter(n, lambda _i, c: c.collection_info(real))
        ok, failed = settle(res, self.client.timeout_s)
        info = {k: v for k, v in (await self.client.layout(real)).items() if k not in ("stats", "shard")}
        per = [{"shard": i, **(ok[i].get("stats") or {})} for i in sorted(ok)]
        info["stats"] = {k: sum(int(p.get(k) or 0) for p in per) for k in COUNTS}
        info["shard_stats"] = per
        info["partial"] = bool(failed)
        info["failed_shards"] = [f.to_dict() for f in failed]
        return info

    async def delete_collection(self, name: str) -> dict[str, Any]:
        """Delete on shard 0 first (it refuses while an alias points here), then on the others."""
        real = await self.client.resolve(name)
        path = f"/v1/collections/{_q(real)}"
        res = await self._scatter_write([0], lambda _i, c: c.request("DELETE", path, write=True))
        if isinstance(res[0], USER_ERRORS):
            raise res[0]
        if len(self.client.shards) > 1:
            res.update(
                await self._scatter_write(
                    list(range(1, len(self.client.shards))),
                    lambda _i, c: c.request("DELETE", path, write=True),
                )
            )
        self.client.forget(real)
        if all(isinstance(r, NotFound) for r in res.values()):
            raise NotFound(f"collection {real!r} does not exist", field="collection")
        # a shard without the collection (fewer shards, or deleted by an earlier try) is fine
        groups: dict[int, list[str]] = {i: [] for i, r in res.items() if not isinstance(r, NotFound)}
        _ok, failed, worst = write_outcome(groups, res, self.write_timeout_s)
        result = {"deleted": real, "partial": bool(failed), "failed_shards": failed}
        if worst is not None:
            for f in failed:
                f.pop("ids", None)
            raise_partial(f"delete {real!r} (retry to finish)", failed, worst, result)
        return result

    # ---- documents --------------------------------------------------------------------------
    async def upsert(
        self, name: str, docs: list[dict[str, Any]], *, model: str | None = None, dims: int | None = None
    ) -> dict[str, Any]:
        """Split by shard, write each part in one transaction on its shard; say which ids are written."""
        validate_batch(docs, self.max_batch_docs, self.max_doc_chars)
        real, n = await self._layout(name)
        parts: dict[int, list[dict[str, Any]]] = {}
        for d in docs:
            parts.setdefault(shard_of(d["id"], n), []).append(d)
        path = f"/v1/collections/{_q(real)}/documents"

        def body(i: int) -> dict[str, Any]:
            return {"documents": parts[i], "model": model, "dims": dims}

        res = await self._scatter_write(
            sorted(parts), lambda i, c: c.request("POST", path, body(i), write=True)
        )
        groups = {i: [d["id"] for d in part] for i, part in parts.items()}
        ok, failed, worst = write_outcome(groups, res, self.write_timeout_s)
        acked = set(ok)
        result = {
            "upserted": sum(int(res[i].get("upserted") or 0) for i in ok),
            "chunks": sum(int(res[i].get("chunks") or 0) for i in ok),
            "acknowledged": [d["id"] for d in docs if shard_of(d["id"], n) in acked],
            "shards": [{"shard": i, **{k: res[i].get(k) for k in ("upserted", "chunks", "seq")}} for i in ok],
            "partial": bool(failed),
            "failed_shards": failed,
        }
        if worst is not None:
            raise_partial(f"upsert into {real!r}", failed, worst, result)
        return result

    async def delete_documents(self, name: str, ids: list[str]) -> dict[str, Any]:
        """Delete by id on each id's shard; say which ids' deletions are acknowledged."""
        check_ids(ids, self.max_batch_docs)
        real, n = await self._layout(name)
        groups = split_ids(ids, n)
        path = f"/v1/collections/{_q(real)}/documents/delete"
        res = await self._scatter_write(
            sorted(groups), lambda i, c: c.request("POST", path, {"ids": groups[i]}, write=True)
        )
        ok, failed, worst = write_outcome(groups, res, self.write_timeout_s)
        acked = set(ok)
        result = {
            "deleted": sum(int(res[i].get("deleted") or 0) for i in ok),
            "acknowledged": [i for i in ids if shard_of(i, n) in acked],
            "partial": bool(failed),
            "failed_shards": failed,
        }
        if worst is not None:
            raise_partial(f"delete from {real!r}", failed, worst, result)
        return result

    async def get_document(self, name: str, doc_id: str) -> dict[str, Any]:
        """One document from its shard (404 if absent, 503 naming the shard if it is down)."""
        real, n = await self._layout(name)
        shard = shard_of(doc_id, n)
        try:
            docs = await asyncio.wait_for(
                self.client.shards[shard].get_documents(real, [doc_id]), self.client.timeout_s
            )
        except USER_ERRORS:
            raise
        except NotFound:
            raise
        except Exception as exc:
            raise ShardUnavailable(
                f"shard {shard} holding {doc_id!r} did not answer: {describe(exc, self.client.timeout_s)}",
                field=f"shards[{shard}]",
            ) from exc
        if not docs:
            raise NotFound(f"no document {doc_id!r} in collection {real!r}", field="id")
        doc: dict[str, Any] = docs[0]
        return doc

    # ---- aliases and jobs -------------------------------------------------------------------
    async def put_alias(self, alias: str, collection: str) -> dict[str, Any]:
        """Point ``alias`` at ``collection`` (the table lives on shard 0)."""
        out: dict[str, Any] = await self.client.shards[0].request(
            "PUT", f"/v1/aliases/{_q(alias)}", {"collection": collection}, write=True
        )
        self.client.forget(collection)
        return out

    async def list_aliases(self) -> dict[str, Any]:
        """The alias table (read fresh from shard 0)."""
        out: dict[str, Any] = await self.client.shards[0].request("GET", "/v1/aliases")
        return out

    async def get_alias(self, alias: str) -> dict[str, Any]:
        """``{"alias", "collection"}`` (read fresh from shard 0)."""
        out: dict[str, Any] = await self.client.shards[0].request("GET", f"/v1/aliases/{_q(alias)}")
        return out

    async def delete_alias(self, alias: str) -> dict[str, Any]:
        """Remove an alias."""
        out: dict[str, Any] = await self.client.shards[0].request(
            "DELETE", f"/v1/aliases/{_q(alias)}", write=True
        )
        self.client.forget(alias)
        return out

    async def start_job(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A server-side ingest job (one-shard collections: it runs on that indexer)."""
        real, n = await self._layout(name)
        if n > 1:
            raise InvalidInput(
                f"collection {real!r} has {n} shards: a server-side job writes to one indexer; "
                "POST documents in batches through the gateway (they are routed per shard)",
                field="collection",
            )
        out: dict[str, Any] = await self.client.shards[0].request(
            "POST", f"/v1/collections/{_q(real)}/jobs", body, write=True
        )
        return out

    async def list_jobs(self, name: str) -> dict[str, Any]:
        """Jobs of every shard of the collection, each marked with its shard."""
        real, n = await self._layout(name)
        res = await self.client.scatter(n, lambda _i, c: c.request("GET", f"/v1/collections/{_q(real)}/jobs"))
        ok, failed = settle(res, self.client.timeout_s)
        jobs = [{**j, "shard": i} for i in sorted(ok) for j in ok[i].get("jobs", [])]
        return {"jobs": jobs, "partial": bool(failed), "failed_shards": [f.to_dict() for f in failed]}

    async def get_job(self, name: str, job_id: str) -> dict[str, Any]:
        """One job, from whichever shard ran it."""
        real, n = await self._layout(name)
        path = f"/v1/collections/{_q(real)}/jobs/{_q(job_id)}"
        res = await self.client.scatter(n, lambda _i, c: c.request("GET", path))
        for r in res:
            if not isinstance(r, BaseException):
                found: dict[str, Any] = r
                return found
        settle(res, self.client.timeout_s)  # raises: NotFound everywhere, or no shard answered
        raise NotFound(f"no job {job_id!r}", field="job_id")  # pragma: no cover - settle raised
