"""Feedback: judge the cached response against the fresh one, record (s, y) for the entry's answer group,
refit the group, and store the pair (after a miss or a wrong answer, and after a correct explore when
``store_on_correct_explore``)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from embedder.errors import Conflict, NotFound
from gateway.cache.policy import contrast_score, fit_threshold, fit_with_prior
from gateway.cache.store import decode_obs, encode_obs, obs_sources

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


# KEYS: group observations, group hash; ARGV: observation, max kept. The list takes the group's TTL.
_GROUP_OBS = """
redis.call('rpush', KEYS[1], ARGV[1])
redis.call('ltrim', KEYS[1], -tonumber(ARGV[2]), -1)
local t = redis.call('pttl', KEYS[2])
if t > 0 then redis.call('pexpire', KEYS[1], t) end
return redis.call('lrange', KEYS[1], 0, -1)
"""
# KEYS: lookup record; ARGV: namespace the request names ('' = any). The feedback mark is set only for a
# record of that namespace, so naming another namespace cannot burn the owner's feedback (no 409 later).
_CLAIM_LOOKUP = """
local ns = redis.call('hget', KEYS[1], 'ns')
if not ns then return 0 end
if ARGV[1] ~= '' and ns ~= ARGV[1] then return 0 end
if redis.call('hsetnx', KEYS[1], 'fb', '1') == 0 then return 1 end
return redis.call('hgetall', KEYS[1])
"""
# KEYS: group's source tokens, group hash; ARGV: token. 1 if the token is new (it takes the group's TTL).
_SOURCE_BIN = """
local added = redis.call('sadd', KEYS[1], ARGV[1])
local t = redis.call('pttl', KEYS[2])
if t > 0 then redis.call('pexpire', KEYS[1], t) end
return added
"""


def source_tag(source: str) -> str:
    """A feedback source as stored: a short hash (client addresses and key ids never reach Redis)."""
    return hashlib.sha256(source.encode("utf-8", "replace")).hexdigest()[:16]


def source_token(source: str, x: float, width: float) -> str:
    """``tag|bin``: the unit in which one feedback source counts once for an answer group (width 0: each
    observation is its own unit)."""
    unit = str(math.floor(x / width)) if width > 0 else secrets.token_hex(8)
    return f"{source_tag(source)}|{unit}"


async def apply_feedback(
    svc: CacheService, lookup_id: str, response: str, namespace: str | None = None, source: str | None = None
) -> FeedbackResult:
    """Feedback on a recorded lookup (of ``namespace``, when named)."""
    k, r = svc.keys, svc.main
    claimed = await r.eval(_CLAIM_LOOKUP, 1, k.lookup(lookup_id), namespace or "")
    if claimed == 0:  # unknown, expired or another namespace's: the same answer
        raise UnknownLookup(f"unknown or expired lookup id {lookup_id!r}", field="lookup_id")
    if claimed == 1:
        raise FeedbackAlreadyGiven("feedback for this lookup id was already given", field="lookup_id")
    rec = {_s(claimed[i]): claimed[i + 1] for i in range(0, len(claimed), 2)}
    ns, scope, decision = _s(rec["ns"]), _s(rec.get("scope", b"")), _s(rec["dec"])
    emb: Any = rec["emb"]
    vec = np.frombuffer(emb, dtype=np.float32).copy()
    eid = _s(rec["eid"]) if "eid" in rec else None
    s = float(_s(rec["s"])) if "s" in rec else None
    # the score the policy decided on and its contrast weight (a lookup recorded before scores had a
    # weight carries the plain similarity: weight 0)
    x = float(_s(rec["x"])) if "x" in rec else s
    cw = float(_s(rec["cw"])) if "cw" in rec else 0.0
    return await _judge_and_update(
        svc, ns, scope, eid, s, (x, cw), decision, _s(rec["prompt"]), vec, response, source
    )


async def apply_entry_feedback(
    svc: CacheService,
    ns: str,
    eid: str,
    prompt: str,
    vec: np.ndarray,
    scope: str,
    response: str,
    source: str | None = None,
) -> FeedbackResult:
    """Feedback naming an entry and the prompt it was (or would have been) served for."""
    raw = await svc.main.hmget(svc.keys.entry(ns, eid), ["emb", "scope", "grp"])
    if raw[0] is None:
        raise UnknownEntry(f"no entry {eid!r} in namespace {ns!r}", field="entry_id")
    if _s(raw[1] or b"") != scope:
        raise UnknownEntry(f"entry {eid!r} belongs to another scope", field="scope")
    s = float(np.frombuffer(raw[0], dtype=np.float32) @ vec)
    cw = svc.config.contrast_weight
    comp = svc.mirror.competitor(ns, scope, vec, _s(raw[2]) if raw[2] else eid)
    x = contrast_score(s, comp, cw)
    return await _judge_and_update(svc, ns, scope, eid, s, (x, cw), "explore", prompt, vec, response, source)


async def _judge_and_update(
    svc: CacheService,
    ns: str,
    scope: str,
    eid: str | None,
    s: float | None,
    score: tuple[float | None, float],
    decision: str,
    prompt: str,
    vec: np.ndarray,
    response: str,
    source: str | None = None,
) -> FeedbackResult:
    from gateway.cache.service import FeedbackResult

    k, r, cfg = svc.keys, svc.main, svc.config
    correct: bool | None = None
    n_obs = 0
    cached, grp = await r.hmget(k.entry(ns, eid), ["response", "grp"]) if eid else (None, None)
    group = (_s(grp) if grp else eid) or None
    x, cw = score
    if eid is not None and cached is not None and x is not None and group is not None:
        correct = await svc.judge(_s(cached), response)
        if source is None or await _first_from_source(svc, ns, group, source, x):
            n_obs = await _record(svc, ns, group, correct, decision, x, cw, source)
        else:  # this source already counted for this group at this score: no new evidence
            await r.hincrby(k.stats(ns), "feedback_repeated", 1)
            n_obs = int(await r.llen(k.group_obs(ns, group)))
    stored: str | None = None
    # a correct explore adds coverage (unless it is a near-copy of the entry) and joins the entry's group
    extra = correct is True and decision == "explore" and cfg.store_on_correct_explore
    if (
        correct is not True
        or decision == "miss"
        or (extra and s is not None and s < cfg.duplicate_similarity)
    ):
        # lineage: a correct explore joins the entry's group; response groups are set by store_vector
        new_group = group if extra and cfg.group_by == "lineage" else None
        result = await svc.store_vector(ns, vec, prompt, response, scope, None, None, group=new_group)
        stored = result.entry_id
    return FeedbackResult(correct, eid, stored, n_obs)


async def _first_from_source(svc: CacheService, ns: str, group: str, source: str, x: float) -> bool:
    """True (and remembered) the first time ``source`` gives feedback for ``group`` in this score bin."""
    k = svc.keys
    token = source_token(source, x, svc.config.source_bin)
    return bool(await svc.main.eval(_SOURCE_BIN, 2, k.group_sources(ns, group), k.group(ns, group), token))


async def _record(
    svc: CacheService,
    ns: str,
    group: str,
    correct: bool,
    decision: str,
    x: float,
    cw: float,
    source: str | None,
) -> int:
    """Add the observation to the group and the pooled sample, refit and publish; returns the group's n."""
    k, r, cfg = svc.keys, svc.main, svc.config
    pipe = r.pipeline(transaction=True)
    obs = encode_obs(x, correct, cw, source_tag(source) if source is not None else "")
    pipe.eval(_GROUP_OBS, 2, k.group_obs(ns, group), k.group(ns, group), obs, str(cfg.max_obs_per_entry))
    pipe.lrange(k.pooled(ns), -cfg.prior_sample, -1)  # before this observation joins it
    pipe.rpush(k.pooled(ns), obs)
    pipe.ltrim(k.pooled(ns), -cfg.prior_window, -1)
    stats = k.stats(ns)
    pipe.hincrby(stats, "feedback", 1)
    pipe.hincrby(stats, "feedback_correct" if correct else "feedback_wrong", 1)
    if decision == "exploit":
        pipe.hincrby(stats, "exploit_feedback", 1)
        if not correct:
            pipe.hincrby(stats, "exploit_feedback_wrong", 1)
    res = await pipe.execute()
    items, n_feedback = res[0], int(res[4])
    # fits use the scores of the current contrast weight only
    s_arr, y_arr = decode_obs(items, cfg.contrast_weight)
    n_obs = int(s_arr.size)
    if cfg.use_prior and cfg.prior_weight > 0:
        ps, py = decode_obs(res[1], cfg.contrast_weight)
        fit = await asyncio.to_thread(fit_with_prior, s_arr, y_arr, ps, py, cfg.prior_weight)
    else:
        fit = fit_threshold(s_arr, y_arr)
    if fit is not None:
        fit = replace(fit, contrast=cfg.contrast_weight)
    # the fit decides for the group only with evidence from min_sources distinct sources (until then it
    # is published with no counted observations, so the group keeps exploring or uses the prior)
    counted = n_obs if await _enough_sources(svc, ns, group, source) else 0
    await svc.sync.publish_fit(r, ns, group, fit, counted)
    if cfg.use_prior and n_feedback % cfg.prior_every == 0:
        await _refit_prior(svc, ns)
    return n_obs


async def _enough_sources(svc: CacheService, ns: str, group: str, source: str | None) -> bool:
    """True when the group's observations come from ``min_sources`` distinct feedback sources."""
    if svc.config.min_sources <= 1 or source is None:
        return True
    tokens = await svc.main.smembers(svc.keys.group_sources(ns, group))
    return len({_s(t).split("|", 1)[0] for t in tokens}) >= svc.config.min_sources


async def _refit_prior(svc: CacheService, ns: str) -> None:
    items = await svc.main.lrange(svc.keys.pooled(ns), 0, -1)
    tags = obs_sources(items)
    if "" not in tags and len(tags) < svc.config.min_sources:  # one client's evidence never serves others
        return
    s_arr, y_arr = decode_obs(items, svc.config.contrast_weight)
    fit = await asyncio.to_thread(fit_threshold, s_arr, y_arr)
    if fit is not None:
        fit = replace(fit, contrast=svc.config.contrast_weight)
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
    "feedback_repeated",
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
