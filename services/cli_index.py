"""``dowse index PATH --collection C``: resumable batch ingest with a rich progress bar."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from services.auth import service_token


def register(app: typer.Typer) -> None:
    """Add this part's commands to the dowse CLI."""

    @app.command("index")
    def index(
        path: Annotated[
            Path, typer.Argument(help="JSONL / CSV / Parquet file (BEIR corpus.jsonl works as is)")
        ],
        collection: Annotated[str, typer.Option("--collection", "-c", help="target collection")],
        model: Annotated[
            str | None, typer.Option(help="embedding preset (DOWSE_MODEL, default minilm)")
        ] = None,
        embedder_url: Annotated[
            str | None, typer.Option(help="remote embedder (DOWSE_EMBEDDER_URL); default in-process")
        ] = None,
        data_dir: Annotated[Path | None, typer.Option(help="data directory (DOWSE_DATA_DIR)")] = None,
        fmt: Annotated[
            str | None, typer.Option("--format", help="jsonl | csv | parquet (default: suffix)")
        ] = None,
        dims: Annotated[
            int | None,
            typer.Option(help="index dims of a new collection (< model dim: PCA-rotated, full-dim funnel)"),
        ] = None,
        index_type: Annotated[str, typer.Option("--index", help="auto | flat | hnsw | ivf-pq")] = "auto",
        code: Annotated[str | None, typer.Option(help="sq8 | binary compressed codes (+ rescoring)")] = None,
        batch_size: Annotated[int, typer.Option(min=1, max=1000, help="documents per transaction")] = 64,
        precision: Annotated[
            str | None, typer.Option(help="in-process embedder precision: int8 | fp32")
        ] = None,
        engine: Annotated[
            str, typer.Option(help="local (this process) | ray (Ray Data: embed in a pool of actors)")
        ] = "local",
        address: Annotated[
            str | None, typer.Option(help="--engine ray: Ray cluster address (default: start Ray here)")
        ] = None,
        workers: Annotated[
            int | None, typer.Option(min=1, help="--engine ray: embedding actors (default: per GPU/CPU)")
        ] = None,
        indexer_url: Annotated[
            str | None,
            typer.Option(help="--engine ray: write through this server's API (indexer or sharding gateway)"),
        ] = None,
    ) -> None:
        """Index a corpus into a collection; re-running resumes (ids already stored are skipped)."""
        from services.logging_setup import configure_logging
        from services.settings import EmbedderSettings, IndexerSettings

        overrides = {k: v for k, v in {"data_dir": data_dir, "embedder_url": embedder_url}.items() if v}
        isettings = IndexerSettings(**overrides)
        esettings = EmbedderSettings(**{k: v for k, v in {"data_dir": data_dir, "model": model}.items() if v})
        configure_logging(isettings.log_level, isettings.log_json)
        if not path.is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint="PATH")
        if engine not in ("local", "ray"):
            raise typer.BadParameter("choose local or ray", param_hint="--engine")
        ray_opts = None
        if engine == "ray":
            from indexer.ray_job import RayOptions

            ray_opts = RayOptions(address, workers, precision=precision or esettings.precision)
            ray_opts.model_cache = esettings.model_cache_dir()
        if indexer_url:
            if ray_opts is None:
                raise typer.BadParameter("--indexer-url needs --engine ray", param_hint="--indexer-url")
            prog = _run_remote(indexer_url, collection, path, fmt, model, ray_opts, batch_size, isettings)
            raise typer.Exit(1 if prog.failed else 0)
        spec: dict[str, Any] = {"type": index_type, "code": code}
        try:
            summary = asyncio.run(
                _run(
                    path,
                    collection,
                    model or esettings.model,
                    isettings,
                    esettings,
                    fmt,
                    dims,
                    spec,
                    batch_size,
                    precision or esettings.precision,
                    ray_opts,
                )
            )
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: finished batches are committed; run the same command again to resume", err=True
            )
            raise typer.Exit(130) from None
        if summary.get("failed"):
            raise typer.Exit(1)


async def _run(
    path: Path,
    collection: str,
    model: str,
    isettings: Any,
    esettings: Any,
    fmt: str | None,
    dims: int | None,
    spec: dict[str, Any],
    batch_size: int,
    precision: str,
    ray_opts: Any = None,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from embedder.errors import DowseError
    from indexer.ingest import Progress as IngestProgress
    from indexer.service import IndexerService

    console = Console()
    embedder: Any
    service = None
    if isettings.embedder_url:
        from embedder.http_client import HttpEmbedderClient

        embedder = HttpEmbedderClient(
            isettings.embedder_url,
            timeout_s=isettings.embedder_timeout_s,
            token=service_token(isettings),
        )
    else:
        from embedder.inprocess import InProcessEmbedderClient
        from embedder.service import EmbeddingService

        service = EmbeddingService(
            esettings.model_cache_dir(),
            [],
            default_model=model,
            precision=precision,
            intra_op_threads=esettings.intra_op_threads,
            device=esettings.device,
            batching=False,
        )
        with console.status(f"loading embedder {model} ({precision})"):
            await service.start()
        embedder = InProcessEmbedderClient(service)
    svc = IndexerService(
        isettings.data_dir,
        embedder,
        hnsw_threshold=isettings.hnsw_threshold,
        max_batch_docs=isettings.max_batch_docs,
        max_doc_chars=isettings.max_doc_chars,
        snapshot_every=isettings.snapshot_every,
        rotation_min_chunks=isettings.rotation_min_chunks,
    )
    prog = IngestProgress()
    t0 = time.perf_counter()
    status = "completed"
    try:
        with console.status("opening collections"):
            await svc.open()
        await svc.create_collection(collection, model=model, dims=dims, index=spec, exist_ok=True)
        before = (await svc.collection_info(collection))["stats"]["documents"]
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} docs/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(f"index {path.name} -> {collection}", total=None, rate=0.0)

            def on_progress(p: IngestProgress) -> None:
                elapsed = max(time.perf_counter() - t0, 1e-6)
                bar.update(
                    task, total=p.total, completed=p.done + p.skipped + p.failed, rate=p.done / elapsed
                )

            if ray_opts is None:
                await svc.run_ingest(
                    collection, path, fmt, batch_size=batch_size, on_progress=on_progress, progress=prog
                )
            else:
                from indexer.ray_job import run_ray_ingest

                revision = (await embedder.model_info(model)).get("revision")
                await asyncio.to_thread(
                    run_ray_ingest,
                    svc._get(collection),
                    path,
                    fmt,
                    options=ray_opts,
                    batch_size=batch_size,
                    max_doc_chars=isettings.max_doc_chars,
                    revision=str(revision) if revision else None,
                    progress=prog,
                    on_progress=on_progress,
                )
        info = await svc.collection_info(collection)
    except DowseError as exc:
        status = "failed"
        console.print(f"[red]error[/red] ({exc.type}): {exc.message}")
        info = None
    except (KeyboardInterrupt, asyncio.CancelledError):
        status = "interrupted"
        raise
    finally:
        elapsed = time.perf_counter() - t0
        await svc.close()
        await embedder.aclose()
        if service is not None:
            await service.stop()
        table = Table(title=f"dowse index: {status}")
        for col in ("written", "skipped (resume)", "failed", "docs/s", "seconds"):
            table.add_column(col, justify="right")
        table.add_row(
            str(prog.done),
            str(prog.skipped),
            str(prog.failed),
            f"{prog.done / max(elapsed, 1e-6):.1f}",
            f"{elapsed:.1f}",
        )
        console.print(table)
        for err in prog.errors[:10]:
            console.print(f"[yellow]skipped record[/yellow] {err}")
    if info is not None:
        st = info["stats"]
        console.print(
            f"collection {collection}: {st['documents']} documents ({st['documents'] - before} new), "
            f"{st['chunks']} chunks, dense index {st['dense_index']}"
        )
    return {
        "status": status,
        "done": prog.done,
        "skipped": prog.skipped,
        "failed": prog.failed or status == "failed",
    }


def _run_remote(
    url: str,
    collection: str,
    path: Path,
    fmt: str | None,
    model: str | None,
    ray_opts: Any,
    batch_size: int,
    isettings: Any,
) -> Any:
    """``--engine ray --indexer-url``: the Ray job writes through the server; same bar and summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from indexer.ray_remote import run_ray_remote

    console = Console()
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} docs/s"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(f"index {path.name} -> {url} {collection}", total=None, rate=0.0)

        def on_progress(p: Any) -> None:
            elapsed = max(time.perf_counter() - t0, 1e-6)
            bar.update(task, total=p.total, completed=p.done + p.skipped + p.failed, rate=p.done / elapsed)

        prog = run_ray_remote(
            url,
            collection,
            path,
            fmt,
            options=ray_opts,
            model=model,
            batch_size=batch_size,
            max_doc_chars=isettings.max_doc_chars,
            on_progress=on_progress,
            api_key=os.environ.get("DOWSE_API_KEY"),  # core packages read no environment: the CLI does
        )
    elapsed = time.perf_counter() - t0
    console.print(
        f"dowse index (ray -> {url}): {prog.done} written, {prog.skipped} skipped (stored), "
        f"{prog.failed} failed, {prog.done / max(elapsed, 1e-6):.1f} docs/s, {elapsed:.1f} s"
    )
    for err in prog.errors[:10]:
        console.print(f"[yellow]skipped record[/yellow] {err}")
    return prog
