"""``dowse keys create|list|revoke`` (straight to the key store in Redis) and the serve-time auth check."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from embedder.errors import DowseError

keys_app = typer.Typer(name="keys", help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
MIN_SECRET_CHARS = 32
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expires(text: str, now: float | None = None) -> float:
    """``30d`` / ``12h`` / ``90m`` from now, or an ISO date/time (UTC if no zone) -> epoch seconds."""
    now = time.time() if now is None else now
    m = _DURATION.fullmatch(text.strip())
    if m:
        return now + float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            "use a duration (30d, 12h, 90m) or an ISO date", param_hint="--expires"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _run(redis_url: str | None, fn: Any) -> Any:
    from gateway.cache.redis_client import is_cluster, make_client
    from services.keys import KeyStore
    from services.settings import CacheSettings

    settings = CacheSettings()
    url = redis_url or settings.redis_url

    async def go() -> Any:
        client = make_client(url, is_cluster(url, settings.redis_cluster), 5.0, 5.0)
        try:
            return await fn(KeyStore(client))
        finally:
            await client.aclose()

    try:
        return asyncio.run(go())
    except DowseError as exc:
        raise typer.BadParameter(exc.message, param_hint=exc.field) from None


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%MZ")


RedisOpt = Annotated[str | None, typer.Option("--redis-url", help="key store (DOWSE_REDIS_URL)")]


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="who or what the key is for")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", help="search:<glob> write:<glob> cache:<glob> embed admin (repeat)"),
    ],
    expires: Annotated[str | None, typer.Option(help="30d, 12h or an ISO date")] = None,
    rps: Annotated[float | None, typer.Option(help="requests per second (token bucket)")] = None,
    texts_per_s: Annotated[
        float | None, typer.Option(help="embed / rerank / upsert texts per second")
    ] = None,
    burst: Annotated[float | None, typer.Option(help="request bucket size (default: rps)")] = None,
    redis_url: RedisOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Create a key. It is printed once and stored only as a hash: copy it now."""
    exp = parse_expires(expires) if expires else None
    key, rec = _run(
        redis_url,
        lambda s: s.create(name, scope, expires_at=exp, rps=rps, texts_per_s=texts_per_s, burst=burst),
    )
    if as_json:
        typer.echo(json.dumps({"key": key, **rec.public()}))
        return
    console = Console()
    console.print(
        f"[bold]key id[/bold] {rec.id}  [bold]name[/bold] {rec.name}  scopes {' '.join(rec.scopes)}"
    )
    console.print("[yellow]The key is shown once and stored only as a hash; copy it now:[/yellow]")
    typer.echo(key)


@keys_app.command("list")
def list_keys(
    redis_url: RedisOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON list on stdout")] = False,
) -> None:
    """Every key (id, name, scopes, quotas, expiry, revocation); never the key or its hash."""
    recs = _run(redis_url, lambda s: s.list_keys())
    if as_json:
        typer.echo(json.dumps([r.public() for r in recs]))
        return
    table = Table("id", "name", "scopes", "rps", "texts/s", "created", "expires", "state")
    now = time.time()
    for r in recs:
        state = "revoked" if r.revoked_at else ("live" if r.live(now) else "expired")
        table.add_row(
            r.id,
            r.name,
            " ".join(r.scopes),
            "-" if r.rps is None else f"{r.rps:g}",
            "-" if r.texts_per_s is None else f"{r.texts_per_s:g}",
            _when(r.created_at),
            _when(r.expires_at),
            state,
        )
    Console(width=160).print(table)


@keys_app.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(help="key id, or a name (revokes every live key of that name)")],
    redis_url: RedisOpt = None,
) -> None:
    """Revoke a key; every replica refuses it within its cache TTL (2 s by default)."""
    recs = _run(redis_url, lambda s: s.revoke(key))
    Console().print(f"revoked {', '.join(r.id for r in recs)}")


def check_bind(settings: Any, roles: list[str]) -> tuple[bool, str]:
    """(auth on now, start-up line); raises typer.BadParameter for an unsafe or invalid set-up."""
    from services.auth import is_loopback

    for label, secret in (
        ("DOWSE_ADMIN_KEY", settings.admin_key),
        ("DOWSE_SERVICE_TOKEN", settings.service_token),
    ):
        if secret is not None and len(secret.get_secret_value()) < MIN_SECRET_CHARS:
            raise typer.BadParameter(f"{label} must have at least {MIN_SECRET_CHARS} characters")
    service_role = "gateway" not in roles
    where = f"{settings.host}:{settings.port}"
    if settings.auth == "off":
        on, why = False, "DOWSE_AUTH=off"
    elif service_role:
        on = settings.service_token is not None
        if settings.auth == "required" and not on:
            raise typer.BadParameter(
                "DOWSE_AUTH=required on an embedder/indexer role needs DOWSE_SERVICE_TOKEN"
            )
        why = "service token" if on else "no DOWSE_SERVICE_TOKEN"
    elif settings.auth == "required" or settings.admin_key is not None:
        on, why = True, "DOWSE_AUTH=required" if settings.auth == "required" else "DOWSE_ADMIN_KEY set"
    else:
        on, why = (
            _keys_exist(settings.redis_url, getattr(settings, "redis_cluster", False)),
            "keys exist in Redis",
        )
        why = why if on else "no key created yet (turns on by itself at the first one)"
    if on:
        return True, f"auth on ({why}) on {where}; /health and /ready are open"
    if not is_loopback(settings.host) and not settings.insecure:
        raise typer.BadParameter(
            f"refusing to serve {where} with auth off ({why}): set DOWSE_ADMIN_KEY (gateway) or "
            "DOWSE_SERVICE_TOKEN (embedder/indexer), create a key, or pass --insecure / DOWSE_INSECURE=1"
        )
    if is_loopback(settings.host):
        return False, f"auth off ({why}) on loopback {where}: only this machine can connect"
    return (
        False,
        f"INSECURE: auth off ({why}) on {where}: anyone who reaches it can read and write everything",
    )


def _keys_exist(redis_url: str, cluster: bool = False) -> bool:
    from gateway.cache.redis_client import is_cluster, make_sync_client
    from services.keys import ENABLED_FLAG

    try:
        client = make_sync_client(redis_url, is_cluster(redis_url, cluster), 1.0)
        return bool(client.get(ENABLED_FLAG))
    except Exception:  # Redis down at start: auto mode stays off until the flag is readable
        return False


def register(app: typer.Typer) -> None:
    """Add ``dowse keys ...`` to the main CLI."""
    app.add_typer(keys_app)
