"""Collection aliases: ``alias -> collection`` kept in ``<data_dir>/aliases.json`` (atomic rewrite).

An alias lets a re-index or re-shard switch collections with no client change: build the new collection,
then point the alias at it. In a sharded deployment shard 0 holds the alias table (every collection has a
shard 0) and the gateways read it from there, so the table lives on shard 0's volume like its collections.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from embedder.errors import NotFound
from indexer.errors import CollectionExists, CollectionNotFound, InvalidCollectionSpec
from indexer.manifest import NAME_RE, atomic_write


def validate_alias(alias: str) -> str:
    """An alias follows the collection-name rule (it is used wherever a collection name is)."""
    if not isinstance(alias, str) or not NAME_RE.match(alias):
        raise InvalidCollectionSpec(
            f"alias must match {NAME_RE.pattern}", field="alias", limit=NAME_RE.pattern
        )
    return alias


class AliasStore:
    """The alias table of one indexer; every change is written to disk before it is visible."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._table: dict[str, str] = {}
        if path.exists():
            raw = json.loads(path.read_text() or "{}")
            self._table = {str(k): str(v) for k, v in raw.items()}

    def resolve(self, name: str) -> str | None:
        """The collection ``name`` points to, or None when it is not an alias."""
        return self._table.get(name)

    def all(self) -> dict[str, str]:
        """A copy of the table."""
        return dict(self._table)

    def aliases_of(self, collection: str) -> list[str]:
        """Aliases pointing at ``collection``."""
        return sorted(a for a, c in self._table.items() if c == collection)

    def put(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection``; returns the previous target (None if new)."""
        with self._lock:
            table = dict(self._table)
            before = table.get(alias)
            table[alias] = collection
            self._write(table)
            return before

    def delete(self, alias: str) -> str | None:
        """Remove ``alias``; returns its target (None if it did not exist)."""
        with self._lock:
            table = dict(self._table)
            before = table.pop(alias, None)
            if before is not None:
                self._write(table)
            return before

    def _write(self, table: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(table, indent=2, sort_keys=True).encode())
        self._table = table


class AliasOps:
    """Alias routes of :class:`~indexer.service.IndexerService` (a mixin over its collection table)."""

    aliases: AliasStore
    _collections: dict[str, Any]

    def resolve_name(self, name: str) -> str:
        """The collection a name stands for: itself if it is a collection, else its alias target."""
        if name in self._collections:
            return name
        return self.aliases.resolve(name) or name

    async def put_alias(self, alias: str, collection: str) -> dict[str, Any]:
        """Point ``alias`` at an existing collection (atomic switch; returns the previous target)."""
        validate_alias(alias)
        if alias in self._collections:
            raise CollectionExists(f"{alias!r} is a collection; an alias needs another name", field="alias")
        if collection not in self._collections:
            raise CollectionNotFound(f"collection {collection!r} does not exist", field="collection")
        before = await asyncio.to_thread(self.aliases.put, alias, collection)
        return {"alias": alias, "collection": collection, "previous": before}

    async def list_aliases(self) -> dict[str, str]:
        """Every alias and its collection."""
        return self.aliases.all()

    async def get_alias(self, alias: str) -> dict[str, Any]:
        """``{"alias", "collection"}`` (404 if there is no such alias)."""
        target = self.aliases.resolve(alias)
        if target is None:
            raise NotFound(f"no alias {alias!r}", field="alias")
        return {"alias": alias, "collection": target}

    async def delete_alias(self, alias: str) -> dict[str, Any]:
        """Remove an alias (404 if there is none of that name)."""
        before = await asyncio.to_thread(self.aliases.delete, alias)
        if before is None:
            raise NotFound(f"no alias {alias!r}", field="alias")
        return {"deleted": alias, "collection": before}
