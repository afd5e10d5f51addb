"""What the playground shows of the cache: why a lookup decided as it did, and the namespaces in use.

``explain`` reads the policy's inputs back from the cache's public state (the lookup record in Redis, the
mirror's entry and fit, this replica's risk budget); it never changes a decision. The budget figures are
this replica's, taken just before the lookup ran (a concurrent lookup on the same namespace may move them).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from gateway.cache.config import LookupResult
from gateway.cache.service import CacheService
from gateway.cache.validate import check_policy

MAX_NAMESPACES = 1000
_COUNTS = ("lookups", "exploit", "explore", "miss")


def _f(v: Any) -> float | None:
    try:
        x = float(v.decode() if isinstance(v, bytes) else v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def budget_before(svc: CacheService, namespace: str, policy: str, max_error: float | None) -> dict[str, Any]:
    """This replica's risk budget of (namespace, delta) before a lookup (the ``budget`` rule only)."""
    delta, _ = check_policy(policy, max_error, None, svc.config)
    if policy != "adaptive" or svc.config.adaptive_rule != "budget":
        return {}
    rb = svc.budgets.get(namespace, delta)
    return {"risk_cut": rb.cut(), "spent": rb.spent, "lookups": rb.lookups}


async def explain(
    svc: CacheService,
    namespace: str,
    policy: str,
    max_error: float | None,
    threshold: float | None,
    res: LookupResult,
    before: dict[str, Any],
) -> dict[str, Any]:
    """Similarity, contrast score, the fit's bound and the bound the policy compared it with."""
    delta, th = check_policy(policy, max_error, threshold, svc.config)
    rule = "static" if policy == "static" else svc.config.adaptive_rule
    out: dict[str, Any] = {"policy": policy, "rule": rule, "similarity": res.similarity}
    if rule == "static":
        out["bound"] = {"threshold": th, "test": "exploit iff similarity >= threshold"}
    elif rule == "budget":
        lookups = int(before.get("lookups", 0)) + 1
        out["bound"] = {
            "max_error": delta,
            "risk_cut": before.get("risk_cut"),
            "spent": before.get("spent"),
            "allowance": delta * lookups,
            "test": "exploit iff risk < 1, risk <= risk_cut and spent + risk <= allowance",
        }
    else:
        out["bound"] = {"max_error": delta, "test": "exploit with probability min(1, max_error / risk)"}
    if res.degraded or res.entry_id is None:
        out["note"] = res.degraded or "no entry in this namespace and scope"
        return out
    try:
        async with asyncio.timeout(1.0):
            rec = await svc.main.hgetall(svc.keys.lookup(res.lookup_id))
    except Exception:
        rec = {}
    fields = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in rec.items()}
    s, x, cw = _f(fields.get("s")), _f(fields.get("x")), _f(fields.get("cw"))
    if s is None or x is None:
        out["note"] = "the lookup record was not readable"
        return out
    out["contrast_score"] = x
    out["contrast_weight"] = cw
    out["competitor"] = (s - x) / cw if cw else None
    entry = svc.mirror.get(namespace, res.entry_id)
    fit = svc.fit_for(entry) if entry is not None else None
    if fit is not None:
        prior = svc.mirror.priors.get(namespace)
        out["fit"] = {
            "gamma": fit.gamma,
            "t": fit.t,
            "sd_t": math.sqrt(fit.var_t) if fit.var_t >= 0 else None,
            "observations": fit.n,
            "source": "namespace prior" if fit is prior else "answer group",
        }
    else:
        out["fit"] = None
    if rule != "static":
        lower = svc.policy.correct_lower_bound(x, fit)
        out["correct_lower_bound"] = lower
        out["risk"] = 1.0 - lower
        out["min_similarity"] = svc.config.min_similarity
    return out


async def namespaces(svc: CacheService, visible: Callable[[str], bool] = lambda ns: True) -> dict[str, Any]:
    """Namespace names (those ``visible`` passes) with their entry and lookup counts (empty, flagged, when
    Redis is down)."""
    if not svc.redis_ok:
        return {"redis": "unavailable", "namespaces": []}
    k, r = svc.keys, svc.main
    found = (n.decode() if isinstance(n, bytes) else str(n) for n in await r.smembers(k.namespaces))
    names = sorted(ns for ns in found if visible(ns))[:MAX_NAMESPACES]
    pipe = r.pipeline(transaction=False)
    for ns in names:
        pipe.hmget(k.stats(ns), *_COUNTS)
        pipe.zcard(k.ids(ns))
    res = await pipe.execute() if names else []
    rows = []
    for i, ns in enumerate(names):
        counts = {c: int(_f(v) or 0) for c, v in zip(_COUNTS, res[2 * i], strict=True)}
        rows.append({"name": ns, "entries": int(res[2 * i + 1]), **counts})
    return {"redis": "ok", "namespaces": rows}
