"""``dowse rotation C [--refit]``: show or re-fit a collection's PCA rotation (HTTP or a stopped data dir)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the dowse CLI."""

    @app.command("rotation")
    def rotation(
        collection: Annotated[str, typer.Argument(help="collection name")],
        refit: Annotated[bool, typer.Option(help="re-fit on the current vectors, atomic swap")] = False,
        url: Annotated[
            str | None, typer.Option(help="running server (the route); key from DOWSE_API_KEY")
        ] = None,
        data_dir: Annotated[
            Path | None, typer.Option(help="data directory of a STOPPED server (DOWSE_DATA_DIR)")
        ] = None,
    ) -> None:
        """Print a collection's serving rotation; ``--refit`` fits a new one and swaps it in atomically."""
        out = _http(url, collection, refit) if url else _local(data_dir, collection, refit)
        typer.echo(json.dumps(out, indent=2))


def _http(url: str, name: str, refit: bool) -> dict[str, Any]:
    import httpx

    key = os.environ.get("DOWSE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    path = f"{url.rstrip('/')}/v1/collections/{name}/rotation" + ("/refit" if refit else "")
    with httpx.Client(timeout=3600, headers=headers) as client:
        r = client.post(path) if refit else client.get(path)
    if r.status_code >= 400:
        typer.echo(r.text, err=True)
        raise typer.Exit(1)
    body: dict[str, Any] = r.json()
    return body


def _local(data_dir: Path | None, name: str, refit: bool) -> dict[str, Any]:
    from indexer.collection import Collection
    from indexer.manifest import Manifest
    from services.settings import IndexerSettings

    root = (data_dir or IndexerSettings().data_dir) / "collections" / name
    if not (root / "manifest.json").is_file():
        raise typer.BadParameter(f"no collection {name!r} under {root.parent}", param_hint="COLLECTION")
    coll = Collection(root, Manifest.load(root / "manifest.json"))
    coll.open()
    try:
        if refit and not coll.manifest.rotate:
            raise typer.BadParameter(f"collection {name!r} does not rotate", param_hint="COLLECTION")
        return coll.refit() if refit else coll.rotation_info()
    except LookupError as exc:
        typer.echo(f"too few vectors to fit a rotation: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        coll.close()
