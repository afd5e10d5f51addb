"""Tune the adaptive cache policy on banking77 *train* only (the test file is reported by cache-eval).

Streams seeded samples of the train utterances (each as long as the test stream) through the real
CacheService on a real Redis, as ``dowse cache-eval`` does: a static threshold sweep gives each stream's
static trade-off curve, then the adaptive policy runs at each delta for each candidate setting. The score
of a setting is its hit rate minus the static curve's hit rate at the same measured error rate (the gap
the acceptance asks to be >= 0), over every stream and delta; the bound must hold on each.

    python bench/cache_tune.py --contrast 0 0.5 0.75 1.0 --streams 2

Writes bench/results/cache_tune.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
DATA = REPO.parent / "shared" / "data"
log = logging.getLogger("bench.cache_tune")
SWEEP = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.93, 0.95, 0.97)


async def tune(args: argparse.Namespace) -> dict[str, Any]:
    """Run every stream: static sweep, then adaptive per (contrast weight, delta)."""
    from gateway.cache import evaluate as ev
    from gateway.cache.config import CacheConfig
    from gateway.cache.report import DELTAS, against_static
    from services.machine import describe

    wl = ev.banking77(DATA, "train")
    n_test = len(ev.banking77(DATA, "test").texts)
    model_cache = Path(os.environ.get("DOWSE_MODEL_CACHE", REPO / ".cache" / "models"))
    vecs = ev.embed_cached(wl.texts, REPO / ".cache" / "cache_eval", model_cache, "minilm")
    base = CacheConfig()
    out: dict[str, Any] = {
        "workload": "banking77-train",
        "stream_length": n_test,
        "streams": args.streams,
        "contrast_weights": args.contrast,
        "deltas": list(DELTAS),
        "machine": describe(),
        "config": {k: v for k, v in base.__dict__.items() if isinstance(v, (int, float, str, bool))},
        "runs": [],
    }
    for stream in range(args.streams):
        seed = 1000 + stream  # test-file runs use seed 0; train streams are other samples
        order = np.random.default_rng(seed).permutation(len(wl.texts))[:n_test]
        static = []
        for th in SWEEP:
            static.append(await ev.run_stream(args.redis, wl, vecs, "static", th, seed=seed, order=order))
        for w in args.contrast:
            cfg = replace(base, contrast_weight=w)
            for d in DELTAS:
                t0 = time.perf_counter()
                r = await ev.run_stream(
                    args.redis, wl, vecs, "adaptive", d, seed=seed, order=order, config=cfg
                )
                row = against_static(r, static)
                curve = row["static_hit_at_same_error"]
                row.update(stream=stream, contrast_weight=w, delta=d, gap=r.hit_rate - curve)
                out["runs"].append(row)
                log.info(
                    "stream %d w %.2f delta %.2f: hit %.4f err %.4f static %.4f gap %+.4f (%.0f s)",
                    stream, w, d, r.hit_rate, r.error_rate, curve, row["gap"], time.perf_counter() - t0,
                )  # fmt: skip
    summary = []
    for w in args.contrast:
        rows = [r for r in out["runs"] if r["contrast_weight"] == w]
        gaps = [r["gap"] for r in rows]
        summary.append(
            {
                "contrast_weight": w,
                "mean_gap": statistics.fmean(gaps),
                "min_gap": min(gaps),
                "bound_holds_all": all(r["bound_holds"] for r in rows),
                "mean_hit": {
                    str(d): statistics.fmean(r["hit_rate"] for r in rows if r["delta"] == d) for d in DELTAS
                },
            }
        )
    out["summary"] = summary
    return out


def markdown(res: dict[str, Any]) -> str:
    """The tuning table."""
    lines = [
        "# Cache policy tuning on banking77 train (bench/cache_tune.py)",
        "",
        f"{res['streams']} seeded train streams of {res['stream_length']} utterances; gap = adaptive hit rate"
        " minus the same stream's static curve at the adaptive run's measured error rate (points).",
        "",
        "| contrast weight | "
        + " | ".join(f"hit @ delta {d}" for d in res["deltas"])
        + " | mean gap | min gap |"
        " bound holds |",
        "|---|" + "---|" * (len(res["deltas"]) + 3),
    ]
    for s in res["summary"]:
        hits = " | ".join(f"{100 * s['mean_hit'][str(d)]:.2f}%" for d in res["deltas"])
        lines.append(
            f"| {s['contrast_weight']} | {hits} | {100 * s['mean_gap']:+.2f} | {100 * s['min_gap']:+.2f} |"
            f" {'yes' if s['bound_holds_all'] else 'NO'} |"
        )
    lines += [
        "",
        "| stream | weight | delta | hit | error | static hit at same error | gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        lines.append(
            f"| {r['stream']} | {r['contrast_weight']} | {r['delta']} | {100 * r['hit_rate']:.2f}% |"
            f" {100 * r['error_rate']:.2f}% | {100 * r['static_hit_at_same_error']:.2f}% |"
            f" {100 * r['gap']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contrast", type=float, nargs="+", default=[0.0, 0.5, 0.75, 1.0])
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--redis", default=os.environ.get("DOWSE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = asyncio.run(tune(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache_tune.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "cache_tune.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
