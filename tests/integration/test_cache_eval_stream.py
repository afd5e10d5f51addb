"""The cache-eval stream protocol on the real Redis (db 15), with plumbing vectors: counts add up, the
oracle's answers are scored, and the throw-away key prefix is cleaned up."""

from __future__ import annotations

import numpy as np
import pytest
import redis.asyncio as aioredis

from gateway.cache.evaluate import Workload, run_stream
from tests.integration.cache_helpers import HashEmbedder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _workload() -> tuple[Workload, np.ndarray]:
    texts = [f"{stem}#{i}" for stem in ("alpha", "beta", "gamma") for i in range(20)]
    answers = [t.split("#")[0] for t in texts]
    vecs = (await HashEmbedder().embed(texts)).vectors
    return Workload("toy", texts, answers), np.asarray(vecs, dtype=np.float32)


def _static_replica(wl: Workload, vecs: np.ndarray, threshold: float, seed: int) -> tuple[int, int, int]:
    """Brute-force numpy replica of the static protocol: (exploits, wrong, misses)."""
    stored: list[int] = []
    exploits = wrong = misses = 0
    for i in np.random.default_rng(seed).permutation(len(wl.texts)):
        sims = vecs[stored] @ vecs[i] if stored else np.zeros(0)
        if sims.size and sims.max() >= threshold:
            exploits += 1
            wrong += wl.answers[stored[int(sims.argmax())]] != wl.answers[i]
        else:
            misses += 1
            stored.append(int(i))
    return exploits, wrong, misses


async def test_static_stream_agrees_with_a_brute_force_replica(redis_url: str) -> None:
    wl, vecs = await _workload()
    for threshold in (0.0, 0.5, 0.995):
        r = await run_stream(redis_url, wl, vecs, "static", threshold, seed=3)
        assert (r.exploits, r.wrong, r.misses) == _static_replica(wl, vecs, threshold, 3), threshold
        assert r.lookups == 60 and r.explores == 0 and r.entries == r.misses
        assert r.hit_rate == pytest.approx(r.exploits / 60) and r.error_rate == pytest.approx(r.wrong / 60)
    # near-duplicates of one stem are ~0.99 similar, stems ~orthogonal: at 0.5 each stem misses once
    r = await run_stream(redis_url, wl, vecs, "static", 0.5, seed=3)
    assert (r.misses, r.exploits, r.wrong) == (3, 57, 0)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert [k async for k in client.scan_iter(match="dowse:cache-eval:*")] == []
    finally:
        await client.aclose()


async def test_adaptive_stream_counts_add_up_and_stays_within_delta(redis_url: str) -> None:
    wl, vecs = await _workload()
    r = await run_stream(redis_url, wl, vecs, "adaptive", 0.05, seed=3)
    assert r.exploits + r.explores + r.misses == r.lookups == 60
    assert r.wrong <= r.exploits and r.rule == "budget"
    assert r.error_rate <= 0.05  # the toy stream has no ambiguity: a wrong exploit would be a bug
