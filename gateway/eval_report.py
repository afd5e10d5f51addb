"""Eval report files: JSON (everything), a markdown table, and a PNG of quality against latency."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = [
    ("config", "config", "{}"),
    ("ndcg@10", "nDCG@10", "{:.4f}"),
    ("recall@100", "Recall@100", "{:.4f}"),
    ("mrr@10", "MRR@10", "{:.4f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p95_ms", "p95 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("qps", "QPS", "{:.1f}"),
]


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    val = row.get(key)
    if val is None or (isinstance(val, float) and math.isnan(val)):
        return "-"
    return fmt.format(val)


def tuned_note(row: dict[str, Any]) -> str:
    """Human note on what cross-validation chose for a row."""
    cv = row.get("cv")
    notes = []
    if cv:
        notes.append(f"{cv['param']} per fold {cv['per_fold']} (held-out)")
    if "latency_queries" in row:
        notes.append(f"latency: live cross-encoder on {row['latency_queries']} queries")
    if row.get("degraded"):
        notes.append(f"{row['degraded']} degraded answers")
    return "; ".join(notes)


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """A markdown table of all configurations plus the run's metadata."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " | notes |"
    sep = "|" + "---|" * (len(COLUMNS) + 1)
    lines = [head, sep]
    for row in results.values():
        cells = [_fmt(row, k, f) for k, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | {tuned_note(row)} |")
    info = ", ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, dict | list))
    return "\n".join(lines) + f"\n\n{info}\n"


def plot(results: dict[str, dict[str, Any]], path: Path, dataset: str = "") -> None:
    """Scatter of nDCG@10 against p50 latency (log x), one labelled point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, row in results.items():
        x, y = row.get("p50_ms"), row.get("ndcg@10")
        if x is None or y is None or math.isnan(x):
            continue
        colour = "tab:red" if "+ce" in name else "tab:orange" if "+rerank" in name else "tab:blue"
        ax.scatter([x], [y], color=colour, s=30)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per query, ms (log scale; one query at a time)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{dataset}: quality vs latency (blue first stage, orange blended rerank, red plain CE)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    results: dict[str, dict[str, Any]], meta: dict[str, Any], out_dir: Path, stem: str
) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(results, meta), encoding="utf-8")
    plot(results, paths[2], Path(str(meta.get("dataset", ""))).name or "eval")
    return paths
