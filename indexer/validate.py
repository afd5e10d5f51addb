"""Input checks of the indexer: documents, batches, k, ids (4xx errors that name the field and the limit)."""

from __future__ import annotations

import json
from typing import Any

from embedder.errors import InvalidInput
from indexer.errors import DocumentTooLarge, InvalidCollectionSpec, InvalidDocument
from indexer.sharding import MAX_SHARDS

MAX_K = 1000
MAX_ID_CHARS = 512
MAX_TITLE_CHARS = 4096
MAX_METADATA_BYTES = 65_536
MAX_QUERY_CHARS = 10_000
MAX_METADATA_DEPTH = 32  # levels of objects/lists inside metadata (deeper ones broke every later read)
INT64_MAX = 2**63 - 1


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value (a scalar is 0), counted iteratively; stops once past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def validate_document(doc: Any, where: str | int, max_doc_chars: int) -> None:
    """Check one ``{id, title, text, metadata}``; raises InvalidDocument / DocumentTooLarge."""
    f = f"documents[{where}]"
    if not isinstance(doc, dict):
        raise InvalidDocument(f"{f} must be an object", field=f)
    doc_id = doc.get("id")
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise InvalidDocument(f"{f}.id must be a non-empty string", field=f"{f}.id")
    if len(doc_id) > MAX_ID_CHARS or any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in doc_id):
        raise InvalidDocument(
            f"{f}.id: at most {MAX_ID_CHARS} printable characters", field=f"{f}.id", limit=MAX_ID_CHARS
        )
    text = doc.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidDocument(f"{f}.text must be a non-empty string", field=f"{f}.text")
    if not _encodable(text):
        raise InvalidDocument(f"{f}.text is not valid Unicode (lone surrogate)", field=f"{f}.text")
    if len(text) > max_doc_chars:
        raise DocumentTooLarge(
            f"{f}.text has {len(text)} characters, over the limit",
            field=f"{f}.text",
            limit=max_doc_chars,
        )
    title = doc.get("title") or ""
    if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
        raise InvalidDocument(
            f"{f}.title must be a string of at most {MAX_TITLE_CHARS} characters",
            field=f"{f}.title",
            limit=MAX_TITLE_CHARS,
        )
    if not _encodable(title):
        raise InvalidDocument(f"{f}.title is not valid Unicode (lone surrogate)", field=f"{f}.title")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise InvalidDocument(f"{f}.metadata must be a JSON object", field=f"{f}.metadata")
    if json_depth(meta, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
        raise InvalidDocument(
            f"{f}.metadata is nested more than {MAX_METADATA_DEPTH} levels deep",
            field=f"{f}.metadata",
            limit=MAX_METADATA_DEPTH,
        )
    try:
        raw = json.dumps(meta, allow_nan=False, ensure_ascii=False)
        raw.encode()
    except (TypeError, ValueError, RecursionError):  # NaN, non-JSON values, lone surrogates
        raise InvalidDocument(
            f"{f}.metadata is not JSON of finite numbers and valid Unicode", field=f"{f}.metadata"
        ) from None
    if len(raw.encode()) > MAX_METADATA_BYTES:
        raise DocumentTooLarge(
            f"{f}.metadata is over {MAX_METADATA_BYTES} bytes",
            field=f"{f}.metadata",
            limit=MAX_METADATA_BYTES,
        )


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_batch(docs: Any, max_batch_docs: int, max_doc_chars: int) -> None:
    """Check a batch: a non-empty list within the limit, every document valid, no id twice."""
    if not isinstance(docs, list) or not docs:
        raise InvalidDocument("documents must be a non-empty list", field="documents")
    if len(docs) > max_batch_docs:
        raise DocumentTooLarge(
            f"{len(docs)} documents in one batch, over the limit",
            field="documents",
            limit=max_batch_docs,
        )
    seen: dict[str, int] = {}
    for i, doc in enumerate(docs):
        validate_document(doc, i, max_doc_chars)
        if doc["id"] in seen:
            raise InvalidDocument(
                f"documents[{i}].id {doc['id']!r} duplicates documents[{seen[doc['id']]}].id",
                field=f"documents[{i}].id",
            )
        seen[doc["id"]] = i


def check_k(k: Any) -> None:
    """``k`` is an int in [1, MAX_K]."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer in [1, {MAX_K}]", field="k", limit=MAX_K)


def check_texts(texts: Any) -> None:
    """``texts`` is a non-negative int or None."""
    if texts is not None and (isinstance(texts, bool) or not isinstance(texts, int) or texts < 0):
        raise InvalidInput("texts must be a non-negative integer or null", field="texts")


def check_ids(ids: Any, limit: int) -> None:
    """``ids`` is a list of at most ``limit`` strings."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput("ids must be a list of strings", field="ids")
    if len(ids) > limit:
        raise DocumentTooLarge(f"at most {limit} ids per request", field="ids", limit=limit)


def check_shards(shards: Any, shard: Any) -> int:
    """Validate ``shards`` / ``shard``; returns the shard index (0 for an unsharded collection)."""
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise InvalidCollectionSpec(f"shards must be in [1, {MAX_SHARDS}]", field="shards", limit=MAX_SHARDS)
    if shard is None:
        if shards > 1:
            raise InvalidCollectionSpec(
                f"this indexer is one shard: a collection of {shards} shards is created through a gateway "
                f"whose shard map (DOWSE_INDEXER_URL) lists at least {shards} indexers",
                field="shards",
                limit=1,
            )
        return 0
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
        raise InvalidCollectionSpec(f"shard must be in [0, {shards - 1}]", field="shard", limit=shards - 1)
    return shard


def check_stats(stats: Any) -> None:
    """``{"num_docs": int >= 0, "df": {term: int >= 0}}``."""
    ok = isinstance(stats, dict) and isinstance(stats.get("num_docs"), int) and stats["num_docs"] >= 0
    df = stats.get("df") if isinstance(stats, dict) else None
    ok = ok and isinstance(df, dict) and all(isinstance(v, int) and v >= 0 for v in df.values())
    if not ok:
        raise InvalidInput('stats must be {"num_docs": n, "df": {term: n}}', field="stats")
