"""Cache evaluation: the banking77 / QQP / GPTCache workloads streamed through the real CacheService.

Embeddings are computed once with the real Dowse embedder (``EmbeddingService.encode``) and cached on
disk keyed by model revision and text hash; the stream then runs the real service (real Redis, real
policy, real judge) on those vectors under a throw-away key prefix that is deleted afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.cache.service import CacheConfig, CacheService

log = logging.getLogger(__name__)


@dataclass
class Workload:
    """A stream of texts and the oracle's answer to each."""

    name: str
    texts: list[str]
    answers: list[str]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def banking77(data_dir: Path, split: str) -> Workload:
    """Utterances of one banking77 split; the answer is the intent label."""
    rows = _read_jsonl(data_dir / "cache" / "banking77" / f"{split}.jsonl")
    return Workload(f"banking77-{split}", [r["text"].strip() for r in rows], [r["label"] for r in rows])


def qqp(data_dir: Path, max_pairs: int | None = 5000, seed: int = 0) -> Workload:
    """Questions of a seeded sample of QQP pairs; the answer is the duplicate cluster (union of label-1)."""
    rows = _read_jsonl(data_dir / "cache" / "qqp_pairs.jsonl")
    if max_pairs is not None and max_pairs < len(rows):
        pick = np.random.default_rng(seed).choice(len(rows), size=max_pairs, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        a, b = r["text_a"].strip(), r["text_b"].strip()
        find(a), find(b)
        if int(r["label"]) == 1:
            parent[find(a)] = find(b)
    texts = sorted(parent)
    roots = {t: find(t) for t in texts}
    ids = {root: f"c{i}" for i, root in enumerate(sorted(set(roots.values())))}
    return Workload("qqp", texts, [ids[roots[t]] for t in texts])


def gptcache_pairs(data_dir: Path) -> tuple[list[str], list[str]]:
    """(origins, similars) of the 999 GPTCache paraphrase pairs."""
    rows = _read_jsonl(data_dir / "cache" / "gptcache_paraphrases.jsonl")
    return [r["origin"].strip() for r in rows], [r["similar"].strip() for r in rows]


def embed_cached(texts: list[str], cache_dir: Path, model_cache: Path, model: str = "minilm") -> np.ndarray:
    """Embeddings of ``texts`` from the real embedder, cached under ``cache_dir`` (model revision + texts)."""
    from embedder.export import ensure_exported
    from embedder.registry import resolve

    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    ensure_exported(model, model_cache)
    spec = resolve(model)
    name = getattr(spec, "name", model)
    cache_dir.mkdir(parents=True, exist_ok=True)
    from embedder.service import EmbeddingService

    svc = EmbeddingService(model_cache, [], default_model=name, batching=False)
    revision = ""
    try:
        svc.load()
        revision = str(svc.model_info(name).get("revision", ""))[:12]
        path = cache_dir / f"{name}-{revision}-{digest}.npy"
        if path.exists():
            return np.load(path)
        vecs = np.asarray(svc.encode(texts, model=name), dtype=np.float32)
        np.save(path, vecs)
        return vecs
    finally:
        svc.ready = False


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (scipy's binomtest is used when available)."""
    if n == 0:
        return 0.0, 1.0
    try:
        from scipy.stats import binomtest

        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        return float(ci.low), float(ci.high)
    except ImportError:  # pragma: no cover
        p = k / n
        den = 1 + z * z / n
        mid = (p + z * z / (2 * n)) / den
        half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
        return mid - half, mid + half


@dataclass
class StreamResult:
    """Outcome of one policy on one stream."""

    workload: str
    policy: str
    param: float
    lookups: int
    exploits: int
    wrong: int
    explores: int
    misses: int
    entries: int
    hit_rate: float
    error_rate: float
    error_ci: tuple[float, float]
    llm_calls_saved: int
    rule: str = ""  # adaptive rule ("budget" | "vcache"); '' for static

    def row(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


async def run_stream(
    redis_url: str,
    wl: Workload,
    vecs: np.ndarray,
    policy: str,
    param: float,
    *,
    seed: int = 0,
    config: CacheConfig | None = None,
    order: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> StreamResult:
    """Stream ``wl`` in a seeded order; exploits are scored, explores/misses get the oracle answer back."""
    base = config or CacheConfig()
    # a throw-away key prefix; a generous Redis budget (this measures decisions, not latency)
    cfg = CacheConfig(
        **{**base.__dict__, "prefix": f"dowse:cache-eval:{uuid.uuid4().hex[:8]}", "op_timeout_s": 2.0}
    )
    svc = CacheService(redis_url, None, cfg, seed=seed)
    await svc.start()
    ns = "eval"
    order = np.random.default_rng(seed).permutation(len(wl.texts)) if order is None else order
    exploits = wrong = explores = misses = 0
    try:
        for n, i in enumerate(order):
            res = await svc.lookup_vector(
                ns, vecs[i], wl.texts[i], "", policy,
                param if policy == "adaptive" else cfg.default_max_error,
                param if policy == "static" else cfg.default_threshold,
            )  # fmt: skip
            if res.degraded:
                raise RuntimeError(f"Redis unavailable during the evaluation: {res.degraded}")
            if res.decision == "exploit":
                exploits += 1
                wrong += res.response != wl.answers[i]
            else:
                explores += res.decision == "explore"
                misses += res.decision == "miss"
                await svc.feedback(res.lookup_id, wl.answers[i])
            if progress is not None and n % 500 == 0:
                progress(n)
        entries = svc.mirror.count(ns)
    finally:
        await svc.delete_namespace(ns)
        r = svc.main
        keys = [k async for k in r.scan_iter(match=f"{cfg.prefix}:*", count=1000)]
        if keys:
            await r.unlink(*keys)
        await svc.close()
    total = len(order)
    return StreamResult(
        wl.name, policy, param, total, exploits, wrong, explores, misses, entries,
        exploits / total, wrong / total, wilson(wrong, total), exploits,
        cfg.adaptive_rule if policy == "adaptive" else "",
    )  # fmt: skip


def interpolate_static(static: list[StreamResult], error_rate: float) -> float:
    """Hit rate of the static trade-off curve at ``error_rate`` (linear interpolation, clamped)."""
    pts = sorted((r.error_rate, r.hit_rate) for r in static)
    xs = np.array([p[0] for p in pts])
    ys = np.maximum.accumulate(np.array([p[1] for p in pts]))
    return float(np.interp(error_rate, xs, ys))
