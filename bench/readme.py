"""Rewrite the README's "Benchmarks" section from the latest bench/results/*.md tables.

Run after any benchmark: ``.venv/bin/python bench/readme.py``. Each table keeps the command that made it.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "## Benchmarks (latest results)"
SECTIONS = [
    ("Embedder", "embed.md", "python bench/embed.py [--part speed|rerank|http|quality|invariance]"),
    (
        "Embedder vs Infinity over HTTP (same MiniLM)",
        "embed_peer.md",
        "python bench/embed_peer.py --rounds 2 --seconds 8",
    ),
    ("Indexer", "index.md", "python bench/index.py --part bm25|quality|ingest|ann"),
    (
        "Search quality: `dowse eval` on SciFact",
        "eval_scifact.md",
        "dowse eval --dataset ../shared/data/scifact",
    ),
    ("Search vs peer pipeline", "search.md", "python bench/search.py --rounds 5"),
    (
        "Matryoshka dims: rotation + funnel",
        "dims.md",
        "python bench/dims.py --part quality --model minilm; python bench/dims.py --part qps --n 1000000",
    ),
    (
        "Rerank as served: hybrid vs hybrid + rerank through /v1/search (SciFact)",
        "rerank_served.md",
        "python bench/rerank_served.py",
    ),
    (
        "Live search during a SciFact ingest job (full corpus)",
        "mixed.md",
        "python bench/mixed.py (dowse serve, real models, real HTTP)",
    ),
    (
        "Live search during a SciFact ingest job (1,000 documents, vs main before query-first scheduling)",
        "mixed_1000.md",
        "python bench/mixed.py --docs 1000 --baseline /work/main --out mixed_1000",
    ),
    ("Semantic cache workloads", "cache_eval.md", "dowse cache-eval (python bench/cache.py --part eval)"),
    (
        "Semantic cache policy tuning (banking77 train only)",
        "cache_tune.md",
        "python bench/cache_tune.py --contrast 0 0.5 0.75 1.0 --streams 2",
    ),
    ("Semantic cache lookup latency (idle)", "cache_latency.md", "python bench/cache.py --no-gptcache"),
    (
        "Semantic cache lookup latency vs GPTCache (idle)",
        "cache_latency_gptcache.md",
        "python bench/cache.py",
    ),
    ("Client overhead: dowse_client vs raw httpx", "client.md", "python bench/client.py --rounds 7"),
]


def main() -> None:
    """Replace everything from the benchmarks heading to the end of README.md."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    head = text.split(MARK)[0].rstrip() + "\n\n"
    out = [
        MARK,
        "",
        "Measured on this project's 2-core CI-class machine; ratios come from interleaved rounds in",
        "",
    ]
    out[-1:] = ["one run (see each file under `bench/results/` for JSON, spread and plots).", ""]
    for title, name, cmd in SECTIONS:
        path = ROOT / "bench" / "results" / name
        if not path.exists():
            continue
        body = path.read_text().strip()
        lines = [ln for ln in body.splitlines() if not ln.startswith("# ")]  # the file's own title
        body = "\n".join(("##" + ln) if ln.startswith("#") else ln for ln in lines)
        out += [f"### {title}", "", f"Command: `{cmd}`", "", body, ""]
    readme.write_text(head + "\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
    main()
