"""The ``dowse`` command line (typer + rich).

Commands are contributed by role modules through ``register(app)``:
``services.cli_models`` (models export/list), ``services.cli_index`` (index),
``services.cli_eval`` (eval), ``services.cli_cache`` (cache-eval), ``services.cli_cluster`` (cluster up).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from services import cli_cache, cli_cluster, cli_eval, cli_index, cli_keys, cli_models, cli_rotation

app = typer.Typer(name="dowse", help="Dowse: embed, index, search and cache.", no_args_is_help=True)


@app.command()
def serve(
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="embedder | indexer | gateway (repeatable); default: all in one process"),
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address (DOWSE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (DOWSE_PORT)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data directory (DOWSE_DATA_DIR)")] = None,
    model: Annotated[str | None, typer.Option(help="default bi-encoder preset (DOWSE_MODEL)")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL (DOWSE_REDIS_URL)")] = None,
    embedder_url: Annotated[str | None, typer.Option(help="remote embedder (DOWSE_EMBEDDER_URL)")] = None,
    indexer_url: Annotated[str | None, typer.Option(help="remote indexer (DOWSE_INDEXER_URL)")] = None,
    demo_corpus: Annotated[
        Path | None, typer.Option(help="BEIR corpus.jsonl indexed into collection 'demo' at start")
    ] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure", help="serve a non-loopback address with auth off")
    ] = None,
) -> None:
    """Run the HTTP service (all roles in one process unless --role is given)."""
    import uvicorn

    from services.app import ALL_ROLES, create_app
    from services.logging_setup import configure_logging
    from services.settings import ServeSettings

    overrides = {
        k: v
        for k, v in dict(
            host=host,
            port=port,
            data_dir=data_dir,
            model=model,
            redis_url=redis_url,
            embedder_url=embedder_url,
            indexer_url=indexer_url,
            demo_corpus=demo_corpus,
            insecure=insecure,
        ).items()
        if v is not None
    }
    settings = ServeSettings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    roles = role or list(ALL_ROLES)
    bad = [r for r in roles if r not in ALL_ROLES]
    if bad:
        raise typer.BadParameter(f"unknown role(s) {bad}; choose from {list(ALL_ROLES)}", param_hint="--role")
    auth_on, line = cli_keys.check_bind(settings, roles)
    logging.getLogger("dowse.auth").log(
        logging.INFO if auth_on or "loopback" in line else logging.WARNING, line
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_app(settings, roles), host=settings.host, port=settings.port, log_config=None)


for _mod in (cli_models, cli_index, cli_eval, cli_cache, cli_keys, cli_cluster, cli_rotation):
    _mod.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
