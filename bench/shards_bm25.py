"""BM25 on the whole SciFact corpus: one tantivy index vs 3 hash shards (collection-wide idf, own idf).

No embedding, so it runs in seconds: the same ``LexicalIndex`` the indexer uses, documents placed by
``indexer.sharding.shard_of``, the 3-shard answer merged by ``gateway.shards.merge_hits`` after the
statistics round of ``gateway.shards.sum_term_stats`` (exactly what the gateway does over HTTP).
Reports nDCG@10 (pytrec_eval), queries whose top-10 ids equal the single index's, and score differences.
Writes bench/results/shards_bm25.{json,md}.

Run: .venv/bin/python bench/shards_bm25.py [--shards 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "scifact"
RESULTS = REPO / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "shards_bm25.json")
    args = ap.parse_args()

    from gateway.eval import evaluate, load_beir
    from gateway.shards import merge_hits, sum_term_stats
    from indexer.client import Hit
    from indexer.lexical import LexicalIndex
    from indexer.sharding import shard_of
    from services.machine import describe

    ds = load_beir(DATA)
    corpus = [json.loads(x) for x in (DATA / "corpus.jsonl").read_text().splitlines() if x.strip()]
    ids = [str(d["_id"]) for d in corpus]
    rows = [(i, d.get("title") or "", d["text"]) for i, d in enumerate(corpus)]
    root = Path(tempfile.mkdtemp(prefix="dowse-bm25-shards-"))
    one = LexicalIndex(root / "one")
    one.apply([], rows, 1)
    parts = [LexicalIndex(root / f"s{j}") for j in range(args.shards)]
    for j, part in enumerate(parts):
        part.apply([], [r for r in rows if shard_of(ids[r[0]], args.shards) == j], 1)

    def top(index: LexicalIndex, q: str, stats: dict | None = None) -> list[Hit]:  # type: ignore[type-arg]
        dnos, scores = index.search(q, 100, None, stats)
        return [Hit(ids[int(d)], float(s)) for d, s in zip(dnos, scores, strict=True)]

    layouts = ("1 index", f"{args.shards} shards, collection-wide idf", f"{args.shards} shards, own idf")
    runs: dict[str, dict[str, dict[str, float]]] = {k: {} for k in layouts}
    tops: dict[str, dict[str, list[Hit]]] = {k: {} for k in layouts}
    for qid, q in ds.queries.items():
        stats = sum_term_stats([p.term_stats(q) for p in parts])
        answers = {
            layouts[0]: top(one, q)[:10],
            layouts[1]: merge_hits([top(p, q, stats) for p in parts], 10),
            layouts[2]: merge_hits([top(p, q) for p in parts], 10),
        }
        for lay, hits in answers.items():
            tops[lay][qid] = hits
            runs[lay][qid] = {h.id: float(10 - r) for r, h in enumerate(hits)}  # ranks: trec_eval ties
    ref = tops[layouts[0]]
    out_rows = []
    base = evaluate(ds.qrels, runs[layouts[0]])["ndcg@10"]
    for lay in layouts:
        ndcg = evaluate(ds.qrels, runs[lay])["ndcg@10"]
        same = sum([h.id for h in tops[lay][q]] == [h.id for h in ref[q]] for q in ds.queries)
        rel = [
            abs(h.score - r.score) / r.score
            for q in ds.queries
            for h in tops[lay][q]
            for r in ref[q]
            if r.id == h.id and r.score > 0
        ]
        out_rows.append(
            {
                "layout": lay,
                "ndcg@10": round(ndcg, 4),
                "diff vs 1 index": round(ndcg - base, 4),
                "identical top-10": same,
                "queries": len(ds.queries),
                "median rel score diff": statistics.median(rel) if rel else 0.0,
                "max rel score diff": max(rel) if rel else 0.0,
            }
        )
    result = {
        "bench": "shards_bm25",
        "machine": describe(),
        "corpus_docs": len(corpus),
        "shard_docs": [p.count() for p in parts],
        "rows": out_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    md = [
        f"BM25 (tantivy en_stem), SciFact {len(corpus)} docs, {len(ds.queries)} test queries; shard sizes "
        f"{result['shard_docs']}. Command: `.venv/bin/python bench/shards_bm25.py`.",
        "",
        "| layout | nDCG@10 | diff vs 1 index | identical top-10 | median / max relative score diff |",
        "|---|---|---|---|---|",
    ]
    for r in out_rows:
        md.append(
            f"| {r['layout']} | {r['ndcg@10']:.4f} | {r['diff vs 1 index']:+.4f} | "
            f"{r['identical top-10']}/{r['queries']} | {r['median rel score diff']:.2e} / "
            f"{r['max rel score diff']:.2e} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
