"""How long one micro-batch holds the model, by padded-token budget: picks ``micro_batch_tokens``.

Batch-priority work (ingest) is cut into micro-batches of at most ``micro_batch_tokens`` padded tokens
(longest input x count), so an interactive request waits at most one of them. This measures the wall time
of one ``OnnxModel.run`` on SciFact passages (title + text, cut at each model's serving length) for a
range of budgets, with the ONNX Runtime settings ``dowse serve`` uses (int8, all cores), and writes
``bench/results/micro_batch.json``. Run it under the heavy lock::

    flock -x /work/locks/heavy.lock .venv/bin/python bench/micro_batch.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from embedder.batching import plan_batches
from embedder.export import ensure_exported
from embedder.onnx_model import Encoded, OnnxModel

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scifact"


def load(n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` SciFact passages and queries."""
    docs, queries = [], []
    with open(DATA / "corpus.jsonl") as fh:
        for line in fh:
            d = json.loads(line)
            docs.append(f"{d['title']} {d['text']}")
            if len(docs) >= n:
                break
    with open(DATA / "queries.jsonl") as fh:
        queries = [json.loads(line)["text"] for line in fh][:n]
    return docs, queries


def slices(items: list[Encoded], budget: int) -> list[list[Encoded]]:
    """Micro-batches as the batcher cuts them: length-sorted, longest x count <= budget."""
    idx = plan_batches([len(e) for e in items], 1 << 20, budget)
    return [[items[i] for i in b] for b in idx]


def measure(model: OnnxModel, items: list[Encoded], budget: int, runs: int) -> dict[str, float]:
    """Wall ms of ``runs`` micro-batches of ``budget`` padded tokens (full ones only)."""
    full = [s for s in slices(items, budget) if len(s) * max(len(e) for e in s) > budget * 0.75]
    if not full:
        full = slices(items, budget)
    model.run(full[0])  # warm-up
    ms, toks = [], []
    for k in range(runs):
        s = full[k % len(full)]
        t0 = time.perf_counter()
        model.run(s)
        ms.append((time.perf_counter() - t0) * 1000.0)
        toks.append(len(s) * max(len(e) for e in s))
    return {
        "budget": budget,
        "padded_tokens_mean": float(np.mean(toks)),
        "ms_p50": round(statistics.median(ms), 2),
        "ms_p90": round(float(np.percentile(ms, 90)), 2),
        "ms_max": round(max(ms), 2),
        "us_per_token": round(1000.0 * statistics.median(ms) / float(np.mean(toks)), 2),
    }


def main() -> None:
    """Measure both served models and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "models")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 384, 512, 1024, 2048, 4096])
    ap.add_argument("--models", nargs="+", default=["minilm", "ms-marco-l12"])
    ap.add_argument("--out", default="micro_batch", help="result file stem under bench/results/")
    args = ap.parse_args()
    load0 = os.getloadavg()
    docs, queries = load(600)
    out: dict[str, object] = {"runs": args.runs, "threads": "ORT default (all cores)", "models": {}}
    for name in args.models:
        model = OnnxModel(ensure_exported(name, args.cache), "int8", device="cpu", max_length=256)
        if model.kind == "cross-encoder":
            items = [e for q, d in zip(queries, docs, strict=False) for e in model.tokenize_pairs(q, [d])]
        else:
            items = model.tokenize(docs)
        rows = [measure(model, items, b, args.runs) for b in args.budgets]
        out["models"][name] = rows  # type: ignore[index]
        for r in rows:
            print(name, json.dumps(r), flush=True)
    out["load_average"] = {"start": load0, "end": os.getloadavg()}  # the machine is shared
    path = ROOT / "bench" / "results" / f"{args.out}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
