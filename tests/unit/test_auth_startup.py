"""`dowse serve` start-up checks: no non-loopback bind with auth off unless --insecure; key expiry parsing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import typer
from pydantic import SecretStr

from services.auth import is_loopback
from services.cli_keys import check_bind, parse_expires
from services.keys import ENABLED_FLAG
from services.settings import ServeSettings
from tests.conftest import REDIS_URL

REPO = Path(__file__).resolve().parents[2]
LONG = "x" * 40


def _s(**kw: Any) -> ServeSettings:
    return ServeSettings(**{"redis_url": REDIS_URL, **kw})  # type: ignore[arg-type]


@pytest.fixture
def no_keys() -> Iterator[None]:
    """No auth flag before or after (other tests' gateways in this Redis run DOWSE_AUTH=auto)."""
    redis.Redis.from_url(REDIS_URL).delete(ENABLED_FLAG)
    yield
    redis.Redis.from_url(REDIS_URL).delete(ENABLED_FLAG)


def test_loopback_detection() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


def test_auto_without_keys_is_off_on_loopback_only(no_keys: None) -> None:
    on, line = check_bind(_s(host="127.0.0.1"), ["gateway"])
    assert not on and "loopback" in line
    with pytest.raises(typer.BadParameter, match="refusing to serve 0.0.0.0"):
        check_bind(_s(host="0.0.0.0"), ["gateway"])
    on, line = check_bind(_s(host="0.0.0.0", insecure=True), ["gateway"])
    assert not on and line.startswith("INSECURE")
    with pytest.raises(typer.BadParameter):
        check_bind(_s(host="0.0.0.0", auth="off"), ["embedder", "indexer", "gateway"])


def test_auth_turns_on_with_admin_key_keys_or_service_token(no_keys: None) -> None:
    assert check_bind(_s(host="0.0.0.0", admin_key=SecretStr(LONG)), ["gateway"])[0]
    redis.Redis.from_url(REDIS_URL).set(ENABLED_FLAG, "1")
    assert check_bind(_s(host="0.0.0.0"), ["gateway"])[0]
    # an embedder / indexer role answers only the gateway's token
    with pytest.raises(typer.BadParameter):
        check_bind(_s(host="0.0.0.0"), ["embedder"])
    assert check_bind(_s(host="0.0.0.0", service_token=SecretStr(LONG)), ["indexer"])[0]
    with pytest.raises(typer.BadParameter, match="DOWSE_SERVICE_TOKEN"):
        check_bind(_s(auth="required"), ["embedder"])
    with pytest.raises(typer.BadParameter, match="at least 32"):
        check_bind(_s(admin_key=SecretStr("short")), ["gateway"])
    redis.Redis.from_url(REDIS_URL).delete(ENABLED_FLAG)


def test_serve_refuses_a_public_bind_without_auth(no_keys: None) -> None:
    """The real command exits non-zero and says why before it binds anything."""
    env = {"DOWSE_REDIS_URL": REDIS_URL, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "services.cli", "serve", "--role", "gateway", "--host", "0.0.0.0"]
    out = subprocess.run(
        [*cmd, "--port", "18310"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "--insecure" in out.stderr


def test_parse_expires() -> None:
    assert parse_expires("30d", now=0) == 30 * 86400
    assert parse_expires("90m", now=10) == 10 + 5400
    assert parse_expires("2030-01-01") == 1893456000
    with pytest.raises(typer.BadParameter):
        parse_expires("soon")
