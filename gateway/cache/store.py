"""Redis layout of the semantic cache: everything durable lives here; the mirror is derived from it.

Keys (prefix ``dowse:cache``; namespaces are isolated by key prefix):

- ``{p}:namespaces``            set of namespace names
- ``{p}:ns:{ns}:e:{id}``         hash: prompt, response, scope, emb (float32 bytes), created, expires, ttl,
                                 meta (JSON), grp (answer group id)
- ``{p}:ns:{ns}:g:{grp}``        hash of an answer group: fit (JSON list), nobs, members, forever
- ``{p}:ns:{ns}:go:{grp}``       list of the group's observations ``"s y"`` (TTL: the longest-lived member
                                 that got feedback; none once a member without TTL did)
- ``{p}:ns:{ns}:gs:{grp}``       set of ``source hash|score bin`` tokens already counted for the group
                                 (one observation per feedback source and bin, see feedback.py)
- ``{p}:ns:{ns}:ids``            sorted set id -> created (eviction order, rebuild listing)
- ``{p}:ns:{ns}:pobs``           list of the namespace's recent observations (pooled prior)
- ``{p}:ns:{ns}:prior``          JSON list: the pooled fit
- ``{p}:ns:{ns}:stats``          hash of counters
- ``{p}:l:{lookup_id}``          hash: a lookup awaiting feedback (TTL)
- ``{p}:stream``                 change stream (put / del / fit / prior / exp / nsdel) that keeps replicas
                                 in sync (``fit`` names the group)

On a Redis Cluster (``Keys(cluster=True)``) a namespace's keys carry the hash tag ``{ns}``:
``{p}:ns:{<ns>}:e:{id}`` and so on, so each namespace lives on one slot (its MULTI blocks and Lua scripts
stay legal) while namespaces spread over the cluster; its change stream is its own ``{p}:ns:{<ns>}:stream``
(one global stream would put every write on one node and break the MULTI). ``{p}:namespaces`` and the
lookup records keep their own slots and are written outside the namespace's MULTI. The single-Redis
layout is unchanged, so existing data stays readable there; moving a cache from one Redis to a cluster
does not migrate it (a cache refills).

An answer group is a set of entries that share observations and one threshold fit: with ``group_by =
"response"`` the entries whose normalised responses are equal (``r`` + a hash of it), with ``"lineage"``
an entry stored after a miss or a wrong explore starts a group (its own id) and one stored after a correct
explore joins the group of the entry it was judged against.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.cache.judge import normalise
from gateway.cache.mirror import MirrorEntry
from gateway.cache.policy import ThresholdFit

PREFIX = "dowse:cache"
# always fullmatch; no ':' (the key separator: namespace "a" must never reach the keys of "a:b")
NAMESPACE_RE = re.compile(r"\A[A-Za-z0-9_.\-]{1,128}\Z")
# entry, lookup and answer group ids: server-made hex, checked wherever a client names one
ID_RE = re.compile(r"\A[A-Za-z0-9_\-]{1,64}\Z")


@dataclass(frozen=True)
class Keys:
    """Key builder for one prefix."""

    prefix: str = PREFIX
    cluster: bool = False  # hash-tagged namespaces and one stream per namespace (Redis Cluster)

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the cache key prefix must not contain braces (Redis Cluster hash tags)")

    @property
    def namespaces(self) -> str:
        """Set of namespace names."""
        return f"{self.prefix}:namespaces"

    def stream(self, ns: str) -> str:
        """Change stream carrying ``ns``'s events (one shared stream on a single Redis)."""
        return f"{self.ns(ns)}:stream" if self.cluster else f"{self.prefix}:stream"

    def ns(self, ns: str) -> str:
        """Prefix of one namespace's keys (hash-tagged on a cluster)."""
        return f"{self.prefix}:ns:{{{ns}}}" if self.cluster else f"{self.prefix}:ns:{ns}"

    def entry(self, ns: str, eid: str) -> str:
        """Entry hash."""
        return f"{self.ns(ns)}:e:{eid}"

    def group(self, ns: str, grp: str) -> str:
        """Answer group hash (fit, nobs, members)."""
        return f"{self.ns(ns)}:g:{grp}"

    def group_obs(self, ns: str, grp: str) -> str:
        """Observation list of an answer group."""
        return f"{self.ns(ns)}:go:{grp}"

    def group_sources(self, ns: str, grp: str) -> str:
        """Set of ``source|score bin`` tokens that already gave an observation to an answer group."""
        return f"{self.ns(ns)}:gs:{grp}"

    def ids(self, ns: str) -> str:
        """Sorted set of entry ids by creation time."""
        return f"{self.ns(ns)}:ids"

    def pooled(self, ns: str) -> str:
        """Pooled observation list."""
        return f"{self.ns(ns)}:pobs"

    def prior(self, ns: str) -> str:
        """Pooled fit."""
        return f"{self.ns(ns)}:prior"

    def stats(self, ns: str) -> str:
        """Counters."""
        return f"{self.ns(ns)}:stats"

    def lookup(self, lookup_id: str) -> str:
        """A pending lookup."""
        return f"{self.prefix}:l:{lookup_id}"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def encode_fit(fit: ThresholdFit | None) -> str:
    """JSON of a fit ('' when none)."""
    return json.dumps(fit.to_list()) if fit is not None else ""


def decode_fit(raw: Any) -> ThresholdFit | None:
    """Inverse of :func:`encode_fit`."""
    if not raw:
        return None
    return ThresholdFit.from_list(json.loads(_s(raw)))


def encode_obs(s: float, y: bool, contrast: float = 0.0, source: str = "") -> str:
    """One observation as stored in the lists: score, label, the score's contrast weight, its source tag.

    ``source`` is the hashed feedback source ('' = a trusted in-process caller); readers of the lists
    that only fit scores ignore it."""
    obs = f"{s:.6f} {1 if y else 0} {float(contrast)!r}"
    return f"{obs} {source}" if source else obs


def obs_sources(items: list[Any]) -> set[str]:
    """Source tags of observations ('' for untagged: trusted callers and observations of older versions)."""
    out: set[str] = set()
    for it in items:
        parts = _s(it).split()
        out.add(parts[3] if len(parts) > 3 else "")
    return out


def decode_obs(items: list[Any], contrast: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Observation list -> (s, y) arrays; with ``contrast``, only the scores made with that weight.

    An observation without a weight (written before scores had one) is a plain similarity: weight 0.
    """
    pairs = [_s(it).split() for it in items]
    if contrast is not None:
        pairs = [p for p in pairs if (float(p[2]) if len(p) > 2 else 0.0) == contrast]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    return np.array([float(p[0]) for p in pairs]), np.array([float(p[1]) for p in pairs])


def response_group(response: str) -> str:
    """Answer group id of a response under ``group_by = "response"``: a hash of its normalised text."""
    return "r" + hashlib.sha256(normalise(response).encode()).hexdigest()[:31]


ENTRY_MIRROR_FIELDS = ("scope", "emb", "response", "expires", "grp", "ttl")


def entry_from_fields(ns: str, eid: str, vals: list[Any]) -> tuple[MirrorEntry, np.ndarray] | None:
    """Build a mirror entry from HMGET of :data:`ENTRY_MIRROR_FIELDS` (None if the hash is gone)."""
    scope, emb, response, expires, grp, ttl = vals
    if emb is None or response is None:
        return None
    vec = np.frombuffer(emb, dtype=np.float32).copy()
    entry = MirrorEntry(
        id=eid,
        namespace=ns,
        scope=_s(scope or b""),
        response=_s(response),
        expires_at=float(_s(expires or b"0")),
        ttl_s=int(_s(ttl or b"0")),
        group=_s(grp or b""),
    )
    return entry, vec


def event_to_dict(fields: dict[Any, Any]) -> dict[str, Any]:
    """Stream entry fields with str keys; the embedding stays bytes."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        key = _s(k)
        out[key] = v if key == "emb" else _s(v)
    return out


def scope_hash(scope: Any) -> str:
    """Stable hash of a scope (system prompt, model, generation params); '' when there is none."""
    if scope is None or scope == "" or scope == {}:
        return ""
    canonical = json.dumps(scope, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
