"""Which rerank weight a search is served with, and where it came from.

Order of precedence for a search with ``rerank: true``:

1. the request's own ``rerank_weight`` (``weight_source: "request"``);
2. the weight ``dowse eval`` chose for this collection and first stage, stored in the collection's data
   dir as ``search_defaults.json`` (``"eval:search_defaults.json@<date>"``);
3. the operator's ``DOWSE_RERANK_WEIGHT``, when set (``"setting"``);
4. the built-in weight per first stage below (``"default"``).

The first stage is the request's retrieval shape: ``bm25``, ``dense``, ``hybrid-rrf`` or
``hybrid-convex``. A weight of 0 keeps the first-stage order exactly, so the pipeline then skips the
cross-encoder call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

DEFAULTS_FILE = "search_defaults.json"
STAGES = ("bm25", "dense", "hybrid-rrf", "hybrid-convex")

# Built-in weights: the median of the five per-fold weights that 5-fold cross-validation (one-SE rule
# towards 0, ms-marco-MiniLM-L12 blended over the fused top 20) chose on all 300 SciFact test queries in
# bench/results/eval_scifact.json (the committed full-corpus run):
#   hybrid-rrf+rerank     [0.0, 0.05, 0.05, 0.0, 0.0]   -> 0.0  (held-out 0.7183 vs hybrid-rrf 0.7184)
#   hybrid-convex+rerank  [0.3, 0.3, 0.3, 0.0, 0.3]    -> 0.3  (0.7348 vs hybrid-convex 0.7307)
#   bm25+rerank           [0.3, 0.2, 0.25, 0.35, 0.3]  -> 0.3  (0.7030 vs bm25 0.6868)
#   dense-minilm+rerank   [0.35, 0.35, 0.35, 0.25, 0.35] -> 0.35 (0.6948 vs dense-minilm 0.6567)
#   dense-bge+rerank      [0.05, 0.65, 0.0, 0.0, 0.0]  -> 0.0  (0.7067 vs dense-bge 0.7127)
#   hybrid-rrf-bge+rerank [0.0, 0.05, 0.0, 0.0, 0.0]   -> 0.0  (0.7302 vs hybrid-rrf-bge 0.7311)
# "<stage>@<model>" entries override the stage's weight for collections of that embedding model.
BUILTIN_SOURCE = "bench/results/eval_scifact.json"
BUILTIN: dict[str, float] = {
    "bm25": 0.3,
    "dense": 0.35,
    "hybrid-rrf": 0.0,
    "hybrid-convex": 0.3,
    "dense@bge-small": 0.0,
    "hybrid-rrf@bge-small": 0.0,
}


def stage_key(mode: str, fusion: str) -> str:
    """The first-stage name a weight is chosen for: ``bm25``, ``dense``, ``hybrid-rrf``, ``hybrid-convex``."""
    return f"hybrid-{fusion}" if mode == "hybrid" else mode


def _valid_weight(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def eval_entry(defaults: Mapping[str, Any] | None, stage: str) -> tuple[float, str] | None:
    """The (weight, source) ``dowse eval`` stored for ``stage``, or None (absent or malformed)."""
    if not isinstance(defaults, Mapping):
        return None
    table = defaults.get("rerank_weight")
    entry = table.get(stage) if isinstance(table, Mapping) else None
    if not isinstance(entry, Mapping) or not _valid_weight(entry.get("weight")):
        return None
    return float(entry["weight"]), f"eval:{DEFAULTS_FILE}@{entry.get('created', '?')}"


def builtin_weight(stage: str, model: str | None) -> float:
    """The built-in weight for ``stage`` (model-specific entry first)."""
    if model and f"{stage}@{model}" in BUILTIN:
        return BUILTIN[f"{stage}@{model}"]
    return BUILTIN.get(stage, 0.0)


def choose_rerank_weight(
    requested: float | None,
    stage: str,
    info: Mapping[str, Any],
    setting: float | None = None,
) -> tuple[float, str]:
    """(weight, weight_source) for one search: request > collection eval > setting > built-in."""
    if requested is not None:
        return float(requested), "request"
    found = eval_entry(info.get("search_defaults"), stage)
    if found is not None:
        return found
    if setting is not None:
        return float(setting), "setting"
    model = info.get("model")
    return builtin_weight(stage, str(model) if model else None), "default"


def served_table(info: Mapping[str, Any], setting: float | None = None) -> dict[str, dict[str, Any]]:
    """Every first stage's served weight and its source for one collection (for the defaults route)."""
    out = {}
    for stage in STAGES:
        weight, source = choose_rerank_weight(None, stage, info, setting)
        out[stage] = {"weight": weight, "weight_source": source}
    return out


def merge_eval_defaults(
    existing: Mapping[str, Any] | None, chosen: Mapping[str, Mapping[str, Any]], run: Mapping[str, Any]
) -> dict[str, Any]:
    """A ``search_defaults.json`` document: ``existing`` with the stages of ``chosen`` replaced.

    ``chosen`` maps a stage to ``{"weight": w, ...details}``; ``run`` (dataset, queries, folds, ...) and
    the creation time are copied into each new entry so that every stage says which run set it.
    """
    for stage, entry in chosen.items():
        if stage not in STAGES:
            raise ValueError(f"unknown first stage {stage!r}; choose from {list(STAGES)}")
        if not _valid_weight(entry.get("weight")) or math.isnan(float(entry["weight"])):
            raise ValueError(f"rerank weight for {stage} must be in [0, 1], got {entry.get('weight')!r}")
    doc: dict[str, Any] = {"version": 1, "rerank_weight": {}}
    if isinstance(existing, Mapping) and isinstance(existing.get("rerank_weight"), Mapping):
        doc["rerank_weight"] = {
            k: dict(v) for k, v in existing["rerank_weight"].items() if eval_entry(existing, k) is not None
        }
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for stage, entry in chosen.items():
        doc["rerank_weight"][stage] = {**dict(run), **dict(entry), "created": created}
    return doc
