"""``dowse cluster up``: the scaled topology as local processes (no Kubernetes needed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``dowse cluster ...`` to the dowse CLI."""
    cluster = typer.Typer(help="A local scaled-out Dowse (embedders, indexer shards, gateways).")
    app.add_typer(cluster, name="cluster")

    @cluster.command("up")
    def up(
        shards: Annotated[int, typer.Option(min=1, max=64, help="indexer shards")] = 3,
        embedders: Annotated[int, typer.Option(min=1, max=16, help="embedder processes")] = 2,
        gateways: Annotated[int, typer.Option(min=1, max=16, help="gateway processes")] = 2,
        base_port: Annotated[int, typer.Option(help="first port; the others follow")] = 8100,
        data_dir: Annotated[Path, typer.Option(help="one sub-directory per process (data + log)")] = Path(
            "./data/cluster"
        ),
        redis_url: Annotated[
            str | None, typer.Option(help="a running Redis for the cache (DOWSE_REDIS_URL)")
        ] = None,
        model: Annotated[str | None, typer.Option(help="default bi-encoder preset (DOWSE_MODEL)")] = None,
        model_cache: Annotated[
            Path | None, typer.Option(help="exported models, shared by the embedders (DOWSE_MODEL_CACHE)")
        ] = None,
    ) -> None:
        """Start the processes, print their URLs, and stop them all on Ctrl-C."""
        from rich.console import Console
        from rich.table import Table

        from services.cluster import LocalCluster
        from services.settings import CommonSettings

        console = Console()
        cache = model_cache or CommonSettings().model_cache_dir().resolve()
        lc = LocalCluster(
            data_dir.resolve(),
            shards=shards,
            embedders=embedders,
            gateways=gateways,
            base_port=base_port,
            redis_url=redis_url,
            model=model,
            model_cache=cache,
        )
        with console.status(f"starting {len(lc.procs)} processes (logs in {data_dir})"):
            try:
                lc.start()
            except RuntimeError as exc:
                console.print(f"[red]cluster did not start[/red]: {exc}")
                raise typer.Exit(1) from None
        table = Table(title="dowse cluster (Ctrl-C stops everything)")
        for col in ("process", "role", "URL"):
            table.add_column(col)
        for row in lc.describe():
            table.add_row(*row)
        console.print(table)
        console.print(
            f"search and write through any gateway, e.g. {lc.gateways[0].url}/docs; "
            f'create sharded collections with {{"name": ..., "shards": {shards}}}'
        )
        try:
            while True:
                time.sleep(1.0)
                for p in lc.dead():
                    console.print(f"[yellow]{p.name} exited[/yellow] (log: {p.log}); the others keep running")
                    p.popen = None
        except KeyboardInterrupt:
            console.print("stopping ...")
        finally:
            lc.stop()
