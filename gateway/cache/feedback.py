"""Feedback: judge the cached response against the fresh one, record (s, y), refit, store when wrong."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.errors import Conflict, NotFound
from gateway.cache.policy import fit_threshold
from gateway.cache.store import decode_obs, encode_obs

if TYPE_CHECKING:
    from gateway.cache.service import CacheService, FeedbackResult


class UnknownLookup(NotFound):
    """The lookup id was never issued or its feedback window (TTL) ran out (404)."""


class UnknownEntry(NotFound):
    """No such cache entry in that namespace (404)."""


class FeedbackAlreadyGiven(Conflict):
    """Feedback for a lookup id is accepted once (409)."""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def apply_feedback(svc: CacheService, lookup_id: str, response: str) -> FeedbackResult:
    """Feedback on a recorded lookup."""
    k, r = svc.keys, svc.main
    key = k.lookup(lookup_id)
    pipe = r.pipeline(transaction=True)
    pipe.hgetall(key)
    pipe.hsetnx(key, "fb", "1")
    rec_raw, first = await pipe.execute()
    if not rec_raw:
        await r.delete(key)  # HSETNX on a missing key created it
        raise UnknownLookup(f"unknown or expired lookup id {lookup_id!r}", field="lookup_id")
    if not first:
        raise FeedbackAlreadyGiven("feedback for this lookup id was already given", field="lookup_id")
    rec = {_s(kk): v for kk, v in rec_raw.items()}
    ns, scope, decision = _s(rec["ns"]), _s(rec.get("scope", b"")), _s(rec["dec"])
    emb: Any = rec["emb"]
    vec = np.frombuffer(emb, dtype=np.float32).copy()
    eid = _s(rec["eid"]) if "eid" in rec else None
    s = float(_s(rec["s"])) if "s" in rec else None
    return await _judge_and_update(svc, ns, scope, eid, s, decision, _s(rec["prompt"]), vec, response)


async def apply_entry_feedback(
    svc: CacheService, ns: str, eid: str, prompt: str, vec: np.ndarray, scope: str, response: str
) -> FeedbackResult:
    """Feedback naming an entry and the prompt it was (or would have been) served for."""
    raw = await svc.main.hmget(svc.keys.entry(ns, eid), ["emb", "scope"])
    if raw[0] is None:
        raise UnknownEntry(f"no entry {eid!r} in namespace {ns!r}", field="entry_id")
    if _s(raw[1] or b"") != scope:
        raise UnknownEntry(f"entry {eid!r} belongs to another scope", field="scope")
    s = float(np.frombuffer(raw[0], dtype=np.float32) @ vec)
    return await _judge_and_update(svc, ns, scope, eid, s, "explore", prompt, vec, response)


async def _judge_and_update(
    svc: CacheService,
    ns: str,
    scope: str,
    eid: str | None,
    s: float | None,
    decision: str,
    prompt: str,
    vec: np.ndarray,
    response: str,
) -> FeedbackResult:
    from gateway.cache.service import FeedbackResult

    k, r, cfg = svc.keys, svc.main, svc.config
    correct: bool | None = None
    n_obs = 0
    cached = await r.hget(k.entry(ns, eid), "response") if eid else None
    if eid is not None and cached is not None and s is not None:
        correct = await svc.judge(_s(cached), response)
        pipe = r.pipeline(transaction=True)
        obs_key = k.obs(ns, eid)
        pipe.rpush(obs_key, encode_obs(s, correct))
        pipe.ltrim(obs_key, -cfg.max_obs_per_entry, -1)
        pipe.lrange(obs_key, 0, -1)
        pipe.pttl(k.entry(ns, eid))
        pipe.rpush(k.pooled(ns), encode_obs(s, correct))
        pipe.ltrim(k.pooled(ns), -cfg.prior_window, -1)
        stats = k.stats(ns)
        pipe.hincrby(stats, "feedback", 1)
        pipe.hincrby(stats, "feedback_correct" if correct else "feedback_wrong", 1)
        if decision == "exploit":
            pipe.hincrby(stats, "exploit_feedback", 1)
            if not correct:
                pipe.hincrby(stats, "exploit_feedback_wrong", 1)
        res = await pipe.execute()
        items, pttl, n_feedback = res[2], int(res[3]), int(res[6])
        if pttl > 0:
            await r.pexpire(obs_key, pttl)
        s_arr, y_arr = decode_obs(items)
        n_obs = int(s_arr.size)
        fit = fit_threshold(s_arr, y_arr)
        await svc.sync.publish_fit(r, ns, eid, fit, n_obs)
        if cfg.use_prior and n_feedback % cfg.prior_every == 0:
            await _refit_prior(svc, ns)
    stored: str | None = None
    if correct is not True or decision == "miss":
        result = await svc.store_vector(ns, vec, prompt, response, scope, None, None)
        stored = result.entry_id
    return FeedbackResult(correct, eid, stored, n_obs)


async def _refit_prior(svc: CacheService, ns: str) -> None:
    items = await svc.main.lrange(svc.keys.pooled(ns), 0, -1)
    s_arr, y_arr = decode_obs(items)
    fit = await asyncio.to_thread(fit_threshold, s_arr, y_arr)
    if fit is not None and fit.usable:
        await svc.sync.publish_prior(svc.main, ns, fit)


_COUNTERS = (
    "lookups",
    "exploit",
    "explore",
    "miss",
    "stores",
    "evictions",
    "feedback",
    "feedback_correct",
    "feedback_wrong",
    "exploit_feedback",
    "exploit_feedback_wrong",
    "est_n",
)


async def read_stats(svc: CacheService, namespace: str | None) -> dict[str, Any]:
    """Counters from Redis, summed over namespaces unless one is named, with derived rates."""
    k, r = svc.keys, svc.main
    names = [namespace] if namespace is not None else sorted(_s(n) for n in await r.smembers(k.namespaces))
    pipe = r.pipeline(transaction=False)
    for ns in names:
        pipe.hgetall(k.stats(ns))
        pipe.zcard(k.ids(ns))
    res = await pipe.execute()
    tot: dict[str, float] = dict.fromkeys(_COUNTERS, 0.0)
    tot["est_wrong"] = 0.0
    entries = 0
    for i in range(len(names)):
        for key, val in res[2 * i].items():
            name = _s(key)
            if name in tot:
                tot[name] += float(_s(val))
        entries += int(res[2 * i + 1])
    lookups = tot["lookups"]

    def rate(x: float, n: float) -> float | None:
        return x / n if n else None

    counts = {c: int(tot[c]) for c in _COUNTERS}
    return {
        "namespaces": len(names),
        "entries": entries,
        **counts,
        "exploit_rate": rate(tot["exploit"], lookups),
        "explore_rate": rate(tot["explore"], lookups),
        "miss_rate": rate(tot["miss"], lookups),
        # the policy's own estimate: sum over exploits of 1 - P_hat(correct | s), per lookup
        "estimated_error_rate": rate(tot["est_wrong"], lookups),
        # measured where clients sent feedback after an exploit
        "observed_exploit_error_rate": rate(tot["exploit_feedback_wrong"], tot["exploit_feedback"]),
    }
