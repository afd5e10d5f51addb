"""``dowse eval``: run a BEIR dataset through the real search pipeline (registered by services.cli)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the dowse CLI."""

    @app.command("eval")
    def eval_cmd(
        dataset: Annotated[
            Path, typer.Option(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv")
        ],
        config: Annotated[
            list[str] | None,
            typer.Option("--config", help="configuration (repeatable); default: all, see docs/gateway.md"),
        ] = None,
        data_dir: Annotated[
            Path | None, typer.Option(help="data directory with (or for) the collections (DOWSE_DATA_DIR)")
        ] = None,
        out: Annotated[Path, typer.Option(help="where the JSON / MD / PNG go")] = Path("bench/results"),
        name: Annotated[str, typer.Option(help="file stem of the outputs")] = "eval_scifact",
        folds: Annotated[int, typer.Option(min=2, max=20, help="cross-validation folds over queries")] = 5,
        rerank_top_n: Annotated[int, typer.Option(min=1, max=100, help="candidates per query reranked")] = 20,
        latency_queries: Annotated[
            int, typer.Option(min=1, help="queries timed with a live cross-encoder per rerank config")
        ] = 20,
        max_queries: Annotated[int | None, typer.Option(min=1, help="first N judged queries only")] = None,
        rerank_budget_s: Annotated[
            float | None, typer.Option(help="start no new rerank config after this many seconds")
        ] = None,
        write_defaults: Annotated[
            bool,
            typer.Option(
                help="store the rerank weights chosen here as each collection's served defaults "
                "(<data_dir>/collections/<name>/search_defaults.json)"
            ),
        ] = True,
        ce_cache: Annotated[
            Path | None,
            typer.Option(help="SQLite cache of cross-encoder scores (default <data_dir>/ce.sqlite)"),
        ] = None,
        qrels: Annotated[
            Path | None,
            typer.Option(
                help="queries.jsonl + qrels/test.tsv to judge by instead of the dataset's, e.g. the "
                "playground's <data-dir>/judgements/<collection> (its ids must be the dataset's corpus ids)"
            ),
        ] = None,
    ) -> None:
        """Evaluate search configurations: nDCG@10 / Recall@100 (pytrec_eval), MRR@10, latency, QPS, plot."""
        from gateway.eval_runner import DEFAULT_CONFIGS, validate_configs
        from services.logging_setup import configure_logging
        from services.settings import ServeSettings

        settings = ServeSettings(**({"data_dir": data_dir} if data_dir else {}))
        configure_logging(settings.log_level, settings.log_json)
        for f in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            base = dataset if f == "corpus.jsonl" or qrels is None else qrels
            if not (base / f).is_file():
                hint = "--dataset" if base == dataset else "--qrels"
                raise typer.BadParameter(f"missing {base / f}", param_hint=hint)
        try:
            configs = validate_configs(config or list(DEFAULT_CONFIGS))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--config") from exc
        opts = dict(
            folds=folds,
            rerank_top_n=rerank_top_n,
            latency_queries=latency_queries,
            max_queries=max_queries,
            rerank_budget_s=rerank_budget_s,
            ce_cache=ce_cache or settings.data_dir / "ce.sqlite",
            write_defaults=write_defaults,
            qrels=qrels,
        )
        asyncio.run(_run(settings, dataset, configs, out, name, opts))


async def _run(
    settings: Any, dataset: Path, configs: list[str], out: Path, stem: str, opts: dict[str, Any]
) -> None:
    from rich.console import Console
    from rich.table import Table

    from embedder.inprocess import InProcessEmbedderClient
    from embedder.service import EmbeddingService
    from gateway.eval import CachedReranker, load_beir
    from gateway.eval_report import COLUMNS, _fmt, tuned_note, write_report
    from gateway.eval_runner import (
        Evaluator,
        ensure_collections,
        eval_pipeline,
        models_needed,
        store_serve_defaults,
    )
    from indexer.inprocess import InProcessIndexerClient
    from indexer.service import IndexerService
    from services.machine import describe

    console = Console(width=170)
    data = load_beir(opts["qrels"] or dataset)
    if not data.queries:
        raise typer.BadParameter("no query there has a relevant document", param_hint="--qrels")
    if opts["max_queries"]:
        keep = list(data.queries)[: opts["max_queries"]]
        data.queries = {q: data.queries[q] for q in keep}
        data.qrels = {q: data.qrels[q] for q in keep}
    svc = EmbeddingService(
        settings.model_cache_dir(),
        ["bge-small", "ms-marco-l12"],
        default_model="minilm",
        precision=settings.precision,
        intra_op_threads=settings.intra_op_threads,
        device=settings.device,
        batching=settings.batching,
    )
    await svc.start()
    client = InProcessEmbedderClient(svc)
    indexer = IndexerService(settings.data_dir, client)
    t0 = time.perf_counter()
    try:
        await indexer.open()
        await ensure_collections(indexer, dataset, models=models_needed(configs))
        ce_info = await client.model_info("ms-marco-l12")
        key = f"ms-marco-l12:{ce_info.get('revision', '')}:{ce_info.get('max_length', '')}"
        reranker = CachedReranker(client, Path(opts["ce_cache"]), model_key=key)
        pipeline = eval_pipeline(reranker, InProcessIndexerClient(indexer), opts["rerank_top_n"])
        ev = Evaluator(
            pipeline,
            reranker,
            data,
            n_folds=opts["folds"],
            rerank_top_n=opts["rerank_top_n"],
            latency_queries=opts["latency_queries"],
        )
        results = await ev.run(configs, opts["rerank_budget_s"])
        meta = {
            "dataset": str(dataset),
            "queries": len(data.queries),
            "folds": opts["folds"],
            "rerank_top_n": opts["rerank_top_n"],
            "cross_encoder": key,
            "cross_encoder_max_length": ce_info.get("max_length"),
            "precision": settings.precision,
            "metrics": "pytrec_eval (nDCG@10, Recall@100), MRR@10",
            "latency": "in-process pipeline, one query at a time, shared 2-core machine",
            "machine": describe(),
            "ce_scores_computed": reranker.computed,
            "ce_scores_cached": reranker.hits,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        paths = write_report(results, meta, out, stem)
        if opts["write_defaults"] and ev.serve_defaults:
            run = {k: meta[k] for k in ("dataset", "queries", "folds", "rerank_top_n", "cross_encoder")}
            run["report"] = str(paths[0])
            paths += [Path(p) for p in await store_serve_defaults(indexer, ev.serve_defaults, run)]
        await reranker.aclose()
    finally:
        await indexer.close()
        await svc.stop()
    table = Table(title=f"dowse eval: {dataset.name} ({len(data.queries)} queries)")
    for _, head, _ in COLUMNS:
        table.add_column(head, justify="right")
    table.add_column("notes")
    for row in results.values():
        table.add_row(*[_fmt(row, k, f) for k, _, f in COLUMNS], tuned_note(row))
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in paths))
