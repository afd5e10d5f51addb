"""CLI commands for the cache part (registered by services.cli): ``dowse cache-eval``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the dowse CLI."""

    @app.command("cache-eval")
    def cache_eval(
        data: Annotated[Path, typer.Option(help="shared data folder (holds cache/)")] = Path(
            "../shared/data"
        ),
        redis_url: Annotated[
            str | None, typer.Option(help="Redis URL (DOWSE_REDIS_URL); keys go under a throw-away prefix")
        ] = None,
        model_cache: Annotated[Path | None, typer.Option(help="exported models (DOWSE_MODEL_CACHE)")] = None,
        model: Annotated[str, typer.Option(help="bi-encoder preset")] = "minilm",
        out: Annotated[Path, typer.Option(help="where cache_eval.{json,md,png} go")] = Path("bench/results"),
        workload: Annotated[
            list[str] | None, typer.Option("--workload", help="banking77 | qqp | gptcache (repeatable)")
        ] = None,
        qqp_pairs: Annotated[int, typer.Option(min=100, help="seeded sample of QQP pairs")] = 5000,
        max_stream: Annotated[
            int | None, typer.Option(min=100, help="QQP: stream only the first N shuffled questions")
        ] = 3000,
        seed: Annotated[int, typer.Option(help="stream order and policy randomness")] = 0,
        rule: Annotated[
            list[str] | None,
            typer.Option("--rule", help="adaptive rules to run: budget | budget-plain | vcache (repeatable)"),
        ] = None,
        reuse_static: Annotated[
            bool,
            typer.Option(help="reuse static rows of the identical stream from an earlier cache_eval.json"),
        ] = False,
    ) -> None:
        """Run the semantic-cache workloads (banking77, QQP, GPTCache pairs) through the real cache."""
        from rich.console import Console

        from gateway.cache.report import EvalOptions, markdown, run_all
        from services.cache_api import config_from_settings
        from services.logging_setup import configure_logging
        from services.settings import GatewaySettings

        settings = GatewaySettings()
        configure_logging(settings.log_level, settings.log_json)
        chosen = tuple(workload or ("banking77", "qqp", "gptcache"))
        bad = [w for w in chosen if w not in ("banking77", "qqp", "gptcache")]
        if bad:
            raise typer.BadParameter(f"unknown workload(s) {bad}", param_hint="--workload")
        if any(r not in ("budget", "budget-plain", "vcache") for r in rule or ()):
            raise typer.BadParameter("rules are budget | budget-plain | vcache", param_hint="--rule")
        opts = EvalOptions(
            data_dir=data,
            redis_url=redis_url or settings.redis_url,
            model_cache=model_cache or settings.model_cache_dir(),
            out_dir=out,
            cache_dir=Path(".cache/cache_eval"),
            model=model,
            seed=seed,
            qqp_pairs=qqp_pairs,
            max_stream=max_stream,
            workloads=chosen,
            config=config_from_settings(settings),
            rules=tuple(rule or ("budget", "budget-plain", "vcache")),
            reuse_static=reuse_static,
        )
        result = asyncio.run(run_all(opts))
        Console().print(markdown(result))
