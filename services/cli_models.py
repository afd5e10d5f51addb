"""CLI commands for the models part (registered by services.cli): ``dowse models export|list|info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

models_app = typer.Typer(name="models", help="Export and inspect embedding / reranking models.")
_console = Console()


def _cache_dir(cache_dir: Path | None, data_dir: Path | None) -> Path:
    from services.settings import EmbedderSettings

    overrides = {k: v for k, v in {"model_cache": cache_dir, "data_dir": data_dir}.items() if v is not None}
    return EmbedderSettings(**overrides).model_cache_dir()  # type: ignore[arg-type]


CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="model cache (DOWSE_MODEL_CACHE; default <data-dir>/models)"),
]
DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="data directory (DOWSE_DATA_DIR)")]


@models_app.command("export")
def export(
    names: Annotated[list[str], typer.Argument(help="preset (minilm, bge-small, ms-marco-l12) or ST folder")],
    precision: Annotated[str, typer.Option(help="fp32 | int8")] = "int8",
    cache_dir: CacheOpt = None,
    data_dir: DataOpt = None,
) -> None:
    """Export models to ONNX (fp32 + int8) with a manifest; does nothing if already exported."""
    from embedder.errors import DowseError
    from embedder.export import ensure_exported, read_manifest

    target = _cache_dir(cache_dir, data_dir)
    for name in names:
        try:
            with _console.status(f"exporting {name} ..."):
                path = ensure_exported(name, target, precision)
        except DowseError as exc:
            _console.print(f"[red]error[/red] {exc.message}")
            raise typer.Exit(2) from exc
        man = read_manifest(path) or {}
        _console.print(
            f"[green]ok[/green] {man.get('name', name)} -> {path} "
            f"(revision {man.get('source_hash', '')[:12]})"
        )


@models_app.command("list")
def list_models(cache_dir: CacheOpt = None, data_dir: DataOpt = None) -> None:
    """Presets and what is exported in the model cache."""
    from embedder.errors import DowseError
    from embedder.export import read_manifest
    from embedder.registry import PRESETS, resolve, slug

    target = _cache_dir(cache_dir, data_dir)
    table = Table(title=f"models (cache: {target})")
    for col in ("name", "kind", "dim", "max_len", "pooling", "exported", "description"):
        table.add_column(col)
    for name in PRESETS:
        try:
            spec = resolve(name)
        except DowseError as exc:
            table.add_row(name, "-", "-", "-", "-", "missing", exc.message)
            continue
        man = read_manifest(target / slug(spec))
        exported = man["source_hash"][:12] if man else "no"
        table.add_row(
            name, spec.kind, str(spec.dim), str(spec.max_length), spec.pooling, exported, spec.description
        )
    _console.print(table)


@models_app.command("info")
def info(name: str, cache_dir: CacheOpt = None, data_dir: DataOpt = None) -> None:
    """Print the manifest of an exported model."""
    from embedder.export import read_manifest
    from embedder.registry import resolve, slug

    man = read_manifest(_cache_dir(cache_dir, data_dir) / slug(resolve(name)))
    if man is None:
        _console.print(f"[red]{name} is not exported[/red]: run `dowse models export {name}`")
        raise typer.Exit(1)
    typer.echo(json.dumps(man, indent=2))


def register(app: typer.Typer) -> None:
    """Add this part's commands to the dowse CLI."""
    app.add_typer(models_app, name="models")
