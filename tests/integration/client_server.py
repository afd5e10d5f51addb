"""One real `dowse serve` (all roles) per test module for the client / SDK / framework tests, and the small
FAQ collection they search. Ports come from 18800-18899; Redis is the suite's test database."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
PORTS = range(18800, 18900)
# a full embedder queue answers 429: a request of more inputs than this is Overloaded at once
MAX_QUEUE = 64
# few observations per answer group before its own fit decides (default 10), to keep the cache test short
CACHE_MIN_OBS = 3

FAQ: list[dict[str, Any]] = [
    {"id": "pw-reset", "title": "Reset a forgotten password",
     "text": "To reset a forgotten password open Settings, then Security, and choose Reset password. "
             "A reset link is emailed to you and expires after one hour.", "metadata": {"topic": "account"}},
    {"id": "email-change", "title": "Change the email address of your account",
     "text": "Your email address can be changed under Settings, Account. We send a confirmation to the "
             "new address before the change takes effect.", "metadata": {"topic": "account"}},
    {"id": "card-pin", "title": "Card PIN",
     "text": "A forgotten card PIN cannot be shown in the app. Call your bank to order a new PIN letter.",
     "metadata": {"topic": "cards"}},
    {"id": "card-lost", "title": "Lost or stolen card",
     "text": "Freeze a lost or stolen card at once in the app under Cards, then order a replacement.",
     "metadata": {"topic": "cards"}},
    {"id": "fees", "title": "Fees abroad",
     "text": "Card payments abroad are free; cash withdrawals abroad cost 2 percent of the amount.",
     "metadata": {"topic": "cards"}},
    {"id": "vitd", "title": "Vitamin D and bone density",
     "text": "Vitamin D supplementation in elderly adults reduces the risk of hip fractures modestly.",
     "metadata": {"topic": "health"}},
    {"id": "sleep", "title": "Sleep and memory",
     "text": "Deep sleep after learning consolidates declarative memories in the hippocampus.",
     "metadata": {"topic": "health"}},
    {"id": "transfer", "title": "International transfers",
     "text": "Transfers to other countries arrive in one to three business days; fees are shown first.",
     "metadata": {"topic": "payments"}},
]  # fmt: skip


def free_port() -> int:
    """The first port of this suite's range that nothing listens on."""
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


@contextlib.contextmanager
def dowse_server(data_dir: Path, model_cache: Path, redis_url: str) -> Iterator[str]:
    """`dowse serve` (embedder + indexer + gateway + cache) on a free port; yields its base URL."""
    port = free_port()
    env = dict(
        os.environ,
        DOWSE_MODEL_CACHE=str(model_cache),
        DOWSE_DATA_DIR=str(data_dir),
        DOWSE_REDIS_URL=redis_url,
        DOWSE_MAX_QUEUE=str(MAX_QUEUE),
        DOWSE_CACHE_MIN_OBS=str(CACHE_MIN_OBS),
        DOWSE_INTRA_OP_THREADS="1",
        # ingest jobs read only under import roots: the tests write their corpora under pytest's tmp dirs
        DOWSE_JOB_ROOTS=json.dumps([tempfile.gettempdir()]),
    )
    log = data_dir / "serve.log"
    cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def raw_search(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/search`` with plain httpx: the reference the clients are compared with."""
    r = httpx.post(f"{url}/v1/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def metric(url: str, name: str, **labels: str) -> float:
    """One Prometheus sample from ``/metrics`` (0 when absent)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
