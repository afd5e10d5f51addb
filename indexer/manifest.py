"""Collection manifest: pins model, revision, prompts, dims, metric, index spec and schema version."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from indexer.errors import InvalidCollectionSpec

SCHEMA_VERSION = 1
# \A...\Z (``$`` accepted "name\n"): strict with match() and fullmatch() alike
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf-pq")
CODES = (None, "sq8", "binary")
METRICS = ("cosine", "ip", "l2")
ANALYZERS = ("en_stem", "default")


@dataclass
class IndexSpec:
    """Dense index configuration; ``auto`` = flat until ``hnsw_threshold`` chunks, then HNSW."""

    type: str = "auto"
    M: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    nlist: int = 1024
    pq_m: int = 48
    nprobe: int = 16
    code: str | None = None  # sq8 | binary: compressed codes, rescored with full-precision vectors
    rescore: int = 0  # candidates = k * rescore with a code or PQ; 0 = auto (sq8 4, binary 10, ivf-pq 8)

    @classmethod
    def parse(cls, raw: dict[str, Any] | str | None) -> IndexSpec:
        """Validate a user-given index spec (dict or bare type name)."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            raw = {"type": raw}
        if not isinstance(raw, dict):
            raise InvalidCollectionSpec("index must be an object", field="index")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidCollectionSpec(
                f"unknown index option(s) {unknown}", field="index", limit=sorted(known)
            )
        spec = cls(**raw)
        if spec.type not in INDEX_TYPES:
            raise InvalidCollectionSpec(
                f"index.type {spec.type!r} is not one of {list(INDEX_TYPES)}",
                field="index.type",
                limit=list(INDEX_TYPES),
            )
        if spec.code not in CODES:
            raise InvalidCollectionSpec(
                f"index.code {spec.code!r} is not one of sq8|binary|null",
                field="index.code",
                limit=["sq8", "binary", None],
            )
        if spec.code is not None and spec.type == "ivf-pq":
            raise InvalidCollectionSpec(
                "index.code applies to flat/hnsw/auto, not ivf-pq", field="index.code"
            )
        for name, lo, hi in (
            ("M", 4, 128),
            ("ef_construction", 8, 2048),
            ("ef_search", 1, 4096),
            ("nlist", 1, 65536),
            ("pq_m", 1, 512),
            ("nprobe", 1, 65536),
            ("rescore", 0, 100),
        ):
            val = getattr(spec, name)
            if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
                raise InvalidCollectionSpec(
                    f"index.{name} must be an integer in [{lo}, {hi}]", field=f"index.{name}", limit=[lo, hi]
                )
        return spec


@dataclass
class Manifest:
    """What a collection stores and how; written once at create, read on open."""

    name: str
    model: str
    revision: str
    dims: int
    model_dim: int
    metric: str = "cosine"
    prompt: str = "passage"
    query_prompt: str = "query"
    index: IndexSpec = field(default_factory=IndexSpec)
    analyzer: str = "en_stem"
    chunk_tokens: int = 256
    chunk_overlap: int = 32
    shards: int = 1  # shard count of the collection, fixed at creation (indexer.sharding.shard_of)
    shard: int = 0  # which of them this indexer holds
    # dims < model_dim: store full-dim vectors, fit a per-collection PCA rotation (indexer.rotation), index
    # the rotated leading ``dims`` and funnel-rescore with full dims. False on manifests written before it.
    rotate: bool = False
    rotation_version: int = 0  # the rotation-<version>.npz that serves; 0 = not fitted yet (full dims)
    schema_version: int = SCHEMA_VERSION
    created_at: float = field(default_factory=time.time)

    @property
    def store_dims(self) -> int:
        """Dims of the vectors SQLite stores (and queries carry): the model's when rotating."""
        return self.model_dim if self.rotate else self.dims

    @property
    def index_dims(self) -> int:
        """Dims of the vectors FAISS holds: full until a rotation is fitted."""
        return self.dims if not self.rotate or self.rotation_version else self.model_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """Inverse of :meth:`to_dict`."""
        data = dict(raw)
        data["index"] = IndexSpec(**data.get("index", {}))
        return cls(**data)

    def save(self, path: Path) -> None:
        """Write atomically (tmp + fsync + rename)."""
        atomic_write(path, json.dumps(self.to_dict(), indent=2).encode())

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read a manifest file."""
        return cls.from_dict(json.loads(path.read_text()))


def validate_name(name: str) -> str:
    """A collection name is 1-64 chars of letters, digits, ``_.-`` (no leading punctuation)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidCollectionSpec(
            "collection name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}", field="name", limit=NAME_RE.pattern
        )
    return name


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
