"""Which shard holds a document: a stable hash of its id, the same in every process and release.

``shard_of(id, n) = int.from_bytes(blake2b(id.encode("utf-8"), digest_size=8).digest(), "big") % n``

blake2b is in the Python standard library (no seed, unlike ``hash()``), so the gateway, the indexer that
checks a write landed on the right shard, and any batch job agree on the placement without talking to each
other. The shard count of a collection is fixed at creation: changing ``n`` moves almost every document,
so growing means re-indexing into a new collection and switching an alias.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
MAX_SHARDS = 256


def shard_of(doc_id: str, shards: int) -> int:
    """The shard (0..shards-1) that holds ``doc_id``."""
    if shards <= 1:
        return 0
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def split_ids(ids: Iterable[str], shards: int) -> dict[int, list[str]]:
    """Ids grouped by shard, each group in request order (shards without ids are absent)."""
    out: dict[int, list[str]] = {}
    for i in ids:
        out.setdefault(shard_of(i, shards), []).append(i)
    return out


def split_docs(docs: Sequence[dict[str, Any]], shards: int) -> dict[int, list[dict[str, Any]]]:
    """Documents (dicts with an ``id``) grouped by shard, each group in request order."""
    out: dict[int, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(shard_of(str(d["id"]), shards), []).append(d)
    return out
