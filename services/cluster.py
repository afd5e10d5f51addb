"""A local scaled-out Dowse on loopback: embedders, indexer shards and gateways as separate processes.

``dowse cluster up`` runs it for people; the sharding integration tests and ``bench/shards.py`` run the
same :class:`LocalCluster`. Each process is an ordinary ``dowse serve --role ...`` with its own data
directory; the gateways get the shard map (every indexer URL, shard 0 first) and the cache's Redis URL.
Indexers and gateways are spread over the embedders round-robin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DOWSE = [sys.executable, "-m", "services.cli", "serve"]


@dataclass
class Proc:
    """One ``dowse serve --role ROLE`` child process and its log file."""

    role: str
    name: str
    port: int
    args: list[str]
    env: dict[str, str]
    log: Path
    host: str = "127.0.0.1"
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Base URL of the process."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Spawn the process (output appended to its log)."""
        cmd = [*DOWSE, "--role", self.role, "--host", self.host, "--port", str(self.port), *self.args]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def ready(self) -> bool:
        """``GET /ready`` answers 200."""
        try:
            return httpx.get(f"{self.url}/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until ready; raise with the log's tail if it dies or takes longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The end of the log."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL (what a crashed machine looks like to the others) and reap."""
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(30)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM (graceful: snapshots are written), SIGKILL after ``grace_s``."""
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()


class LocalCluster:
    """``embedders`` embedders, ``shards`` indexer shards and ``gateways`` gateways on loopback ports.

    Ports: ``base_port`` + 0.. for embedders, then indexers, then gateways. ``env`` adds to (and overrides)
    the environment every process gets (timeouts, model cache, ...).
    """

    def __init__(
        self,
        root: Path,
        *,
        shards: int = 3,
        embedders: int = 2,
        gateways: int = 2,
        base_port: int = 8100,
        redis_url: str | None = None,
        model: str | None = None,
        model_cache: Path | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if min(shards, embedders, gateways) < 1:
            raise ValueError("a cluster needs at least one embedder, one shard and one gateway")
        self.root = Path(root)
        base = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # ONNX Runtime takes every core by default: embedders sharing a machine split them instead
        base.setdefault("DOWSE_INTRA_OP_THREADS", str(max(1, (os.cpu_count() or 1) // embedders)))
        if redis_url:
            base["DOWSE_REDIS_URL"] = redis_url
        if model:
            base["DOWSE_MODEL"] = model
        if model_cache:
            base["DOWSE_MODEL_CACHE"] = str(model_cache)
        base.update(env or {})
        self.env = base
        port = iter(range(base_port, base_port + embedders + shards + gateways))
        self.embedders = [self._proc("embedder", f"embedder-{i}", next(port), []) for i in range(embedders)]
        emb = [e.url for e in self.embedders]
        self.shards = [
            self._proc("indexer", f"shard-{i}", next(port), ["--embedder-url", emb[i % len(emb)]])
            for i in range(shards)
        ]
        shard_map = ",".join(s.url for s in self.shards)
        self.gateways = [
            self._proc(
                "gateway",
                f"gateway-{i}",
                next(port),
                ["--embedder-url", emb[i % len(emb)], "--indexer-url", shard_map],
            )
            for i in range(gateways)
        ]
        for p in self.procs:
            p.host = host

    def _proc(self, role: str, name: str, port: int, args: list[str]) -> Proc:
        data = self.root / name
        return Proc(role, name, port, ["--data-dir", str(data), *args], self.env, self.root / f"{name}.log")

    @property
    def procs(self) -> list[Proc]:
        """Every process, in start order."""
        return [*self.embedders, *self.shards, *self.gateways]

    def start(self, timeout_s: float = 300.0) -> None:
        """Start everything and wait until every process is ready (stops all on failure)."""
        try:
            for p in self.procs:
                p.start()
            for p in self.procs:
                p.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop gateways, then indexers, then embedders."""
        for p in reversed(self.procs):
            p.stop()

    def dead(self) -> list[Proc]:
        """Processes that exited on their own."""
        return [p for p in self.procs if p.popen is not None and not p.alive()]

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, role, URL) of every process."""
        return [(p.name, p.role, p.url) for p in self.procs]
