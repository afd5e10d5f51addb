"""``dowse cache-eval`` / ``bench/cache.py``: run the three cache workloads; write JSON, Markdown, PNG."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gateway.cache import evaluate as ev
from gateway.cache.service import CacheConfig, CacheService

log = logging.getLogger(__name__)

STATIC_SWEEP = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
DELTAS = (0.01, 0.02, 0.05)
# GPTCache README (hit/miss on the 999 paraphrase pairs, its default ONNX embedding + distance evaluation)
GPTCACHE_README = {0.95: (425, 25, 549), 0.9: (804, 77, 118), 0.8: (904, 92, 3)}


@dataclass
class EvalOptions:
    """What to run."""

    data_dir: Path
    redis_url: str
    model_cache: Path
    out_dir: Path
    cache_dir: Path
    model: str = "minilm"
    seed: int = 0
    qqp_pairs: int = 5000
    workloads: tuple[str, ...] = ("banking77", "qqp", "gptcache")
    max_stream: int | None = None  # cap on the QQP stream (a seeded prefix of its shuffled questions)
    static_sweep: tuple[float, ...] = STATIC_SWEEP
    merge: bool = True  # update an existing cache_eval.json instead of replacing it
    # adaptive rules to run (the first is the configured one); "budget-plain" = budget on the plain similarity
    # (contrast weight 0, the paper's model), to show what the contrast score adds
    rules: tuple[str, ...] = ("budget", "budget-plain", "vcache")
    reuse_static: bool = False  # take static rows of an identical earlier stream from cache_eval.json
    config: CacheConfig = field(default_factory=CacheConfig)


def _old_static(opts: EvalOptions, name: str, length: int) -> list[ev.StreamResult] | None:
    """Static rows of an earlier run of the same stream (static decisions do not depend on the policy)."""
    path = opts.out_dir / "cache_eval.json"
    if not (opts.reuse_static and path.exists()):
        return None
    old = json.loads(path.read_text())
    res = old.get(name)
    if not res or old.get("seed") != opts.seed or old.get("model") != opts.model:
        return None
    if res.get("stream_length") != length or [r["param"] for r in res["static"]] != list(opts.static_sweep):
        return None
    fields = set(ev.StreamResult.__dataclass_fields__)
    rows = [ev.StreamResult(**{k: v for k, v in r.items() if k in fields}) for r in res["static"]]
    for r in rows:
        r.error_ci = (r.error_ci[0], r.error_ci[1])
    return rows


async def _sweep(
    opts: EvalOptions, wl: ev.Workload, vecs: np.ndarray, max_stream: int | None = None
) -> dict[str, Any]:
    order = np.random.default_rng(opts.seed).permutation(len(wl.texts))[:max_stream]
    static = _old_static(opts, wl.name.split("-")[0], len(order))
    reused = static is not None
    if static is None:
        static = []
        for th in opts.static_sweep:
            r = await ev.run_stream(opts.redis_url, wl, vecs, "static", th, seed=opts.seed, order=order)
            log.info("%s static %.2f: hit %.4f err %.4f", wl.name, th, r.hit_rate, r.error_rate)
            static.append(r)
    adaptive = []
    for rule in opts.rules:
        cfg = replace(opts.config, adaptive_rule="vcache" if rule == "vcache" else "budget")
        if rule.endswith("-plain"):
            cfg = replace(cfg, contrast_weight=0.0)
        for d in DELTAS:
            r = await ev.run_stream(
                opts.redis_url, wl, vecs, "adaptive", d, seed=opts.seed, order=order, config=cfg
            )
            r.rule = rule
            log.info("%s adaptive/%s %.2f: hit %.4f err %.4f", wl.name, rule, d, r.hit_rate, r.error_rate)
            adaptive.append(r)
    return {
        "static": [r.row() for r in static],
        "adaptive": [against_static(r, static) for r in adaptive],
        "stream_length": len(order),
        "static_reused": reused,
    }


def against_static(r: ev.StreamResult, static: list[ev.StreamResult]) -> dict[str, Any]:
    """An adaptive run's row with its verdicts: the bound (95% interval) and the static curve's hit rate at
    the run's measured error rate."""
    static_hit = ev.interpolate_static(static, r.error_rate)
    return {
        **r.row(),
        "bound_holds": r.error_ci[0] <= r.param,
        "static_hit_at_same_error": static_hit,
        "on_or_above_static": r.hit_rate >= static_hit,
    }


async def _gptcache(opts: EvalOptions) -> dict[str, Any]:
    origins, similars = ev.gptcache_pairs(opts.data_dir)
    vecs = ev.embed_cached(origins + similars, opts.cache_dir, opts.model_cache, opts.model)
    vo, vs = vecs[: len(origins)], vecs[len(origins) :]
    cfg = CacheConfig(prefix=f"dowse:cache-eval:gpt{opts.seed}", op_timeout_s=2.0)
    svc = CacheService(opts.redis_url, None, cfg, seed=opts.seed)
    await svc.start()
    rows = []
    try:
        for i, o in enumerate(origins):
            await svc.store_vector("gpt", vo[i], o, str(i), "")
        for th in sorted({*GPTCACHE_README, 0.7, 0.75, 0.85}, reverse=True):
            good = bad = miss = 0
            for i, s in enumerate(similars):
                res = await svc.lookup_vector("gpt", vs[i], s, "", "static", 0.02, th)
                if res.hit:
                    good += res.response == str(i)
                    bad += res.response != str(i)
                else:
                    miss += 1
            ref = GPTCACHE_README.get(th)
            rows.append(
                {
                    "threshold": th,
                    "correct_hits": good,
                    "wrong_hits": bad,
                    "misses": miss,
                    "gptcache_readme": dict(zip(("correct_hits", "wrong_hits", "misses"), ref, strict=True))
                    if ref
                    else None,
                }
            )
    finally:
        await svc.delete_namespace("gpt")
        leftovers = [k async for k in svc.main.scan_iter(match=f"{cfg.prefix}:*", count=1000)]
        if leftovers:  # pending lookup records and the stream of the throw-away prefix
            await svc.main.unlink(*leftovers)
        await svc.close()
    return {"pairs": len(origins), "rows": rows}


async def run_all(opts: EvalOptions) -> dict[str, Any]:
    """Run the selected workloads; write ``cache_eval.{json,md,png}`` into ``opts.out_dir``."""
    t0 = time.time()
    out: dict[str, Any] = {
        "model": opts.model,
        "seed": opts.seed,
        "policy_config": {
            k: v for k, v in opts.config.__dict__.items() if isinstance(v, int | float | bool | str | None)
        },
    }
    if "banking77" in opts.workloads:
        wl = ev.banking77(opts.data_dir, "test")
        vecs = ev.embed_cached(wl.texts, opts.cache_dir, opts.model_cache, opts.model)
        out["banking77"] = await _sweep(opts, wl, vecs)
    if "qqp" in opts.workloads:
        wl = ev.qqp(opts.data_dir, opts.qqp_pairs, opts.seed)
        vecs = ev.embed_cached(wl.texts, opts.cache_dir, opts.model_cache, opts.model)
        out["qqp"] = await _sweep(opts, wl, vecs, opts.max_stream)
    if "gptcache" in opts.workloads:
        out["gptcache"] = await _gptcache(opts)
    out["wall_s"] = round(time.time() - t0, 1)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    path = opts.out_dir / "cache_eval.json"
    if opts.merge and path.exists():
        old = json.loads(path.read_text())
        out = {
            **old,
            **out,
            "wall_s": {**_as_dict(old.get("wall_s")), "+".join(opts.workloads): out["wall_s"]},
        }
    path.write_text(json.dumps(out, indent=2))
    (opts.out_dir / "cache_eval.md").write_text(markdown(out))
    plot(out, opts.out_dir / "cache_eval.png")
    return out


def _as_dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else ({"earlier": v} if v is not None else {})


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(out: dict[str, Any]) -> str:
    """Markdown tables of an evaluation."""
    lines: list[str] = []
    cfg = out.get("policy_config", {})
    if cfg:
        lines += [
            f"Adaptive configuration: rule `{cfg.get('adaptive_rule', 'vcache')}` (default), "
            f"answer groups by `{cfg.get('group_by', 'entry')}`, min_obs {cfg.get('min_obs')}, "
            f"prior {'on' if cfg.get('use_prior') else 'off'} (>= {cfg.get('prior_min_obs')} obs), "
            f"store on correct explore {'on' if cfg.get('store_on_correct_explore') else 'off'}, "
            f"contrast weight {cfg.get('contrast_weight', 0.0)} (`budget-plain`: 0, the plain similarity).",
            "",
        ]
    for name in ("banking77", "qqp"):
        if name not in out:
            continue
        res = out[name]
        lines += [
            f"### {name} (stream of {res['stream_length']} prompts, seed {out['seed']}, "
            f"model {out['model']})",
            "",
            "| policy | param | hit rate | error rate [95% CI] | LLM calls saved | entries |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["static"] + res["adaptive"]:
            lo, hi = r["error_ci"]
            pol = f"{r['policy']} ({r['rule']})" if r.get("rule") else r["policy"]
            lines.append(
                f"| {pol} | {r['param']} | {_pct(r['hit_rate'])} | {_pct(r['error_rate'])} "
                f"[{_pct(lo)}, {_pct(hi)}] | {r['llm_calls_saved']} | {r['entries']} |"
            )
        if res.get("static_reused"):
            lines += ["", "(static rows reused from an earlier run of the identical stream)"]
        lines += [
            "",
            "| rule | delta | error <= delta (CI) | hit rate | error rate | static hit rate at same error "
            "| on/above |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["adaptive"]:
            lines.append(
                f"| {r.get('rule') or 'vcache'} | {r['param']} | {'yes' if r['bound_holds'] else 'NO'} | "
                f"{_pct(r['hit_rate'])} | {_pct(r['error_rate'])} | "
                f"{_pct(r['static_hit_at_same_error'])} | {'yes' if r['on_or_above_static'] else 'no'} |"
            )
        lines.append("")
    if "gptcache" in out:
        lines += [
            f"### GPTCache paraphrases ({out['gptcache']['pairs']} pairs: store each origin, "
            "look up each similar)",
            "",
            "| threshold | Dowse correct / wrong / miss | GPTCache README correct / wrong / miss |",
            "|---|---|---|",
        ]
        for r in out["gptcache"]["rows"]:
            ref = r["gptcache_readme"]
            ref_s = f"{ref['correct_hits']} / {ref['wrong_hits']} / {ref['misses']}" if ref else "-"
            lines.append(
                f"| {r['threshold']} | {r['correct_hits']} / {r['wrong_hits']} / {r['misses']} | {ref_s} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> None:
    """Hit rate against error rate: the static curve and the adaptive points, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("banking77", "qqp") if n in out]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        st = sorted(out[name]["static"], key=lambda r: r["error_rate"])
        ax.plot([r["error_rate"] for r in st], [r["hit_rate"] for r in st], "o-", label="static threshold")
        for r in st:
            ax.annotate(f"{r['param']}", (r["error_rate"], r["hit_rate"]), fontsize=7)
        for r in out[name]["adaptive"]:
            lo, hi = r["error_ci"]
            ax.errorbar(
                r["error_rate"],
                r["hit_rate"],
                xerr=[[r["error_rate"] - lo], [hi - r["error_rate"]]],
                fmt="s",
                label=f"adaptive {r.get('rule') or ''} delta={r['param']}",
            )
        ax.set_xlabel("error rate (wrong exploits / lookups)")
        ax.set_ylabel("hit rate (exploits / lookups)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
