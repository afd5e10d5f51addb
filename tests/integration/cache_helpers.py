"""Helpers of the cache integration tests: a deterministic plumbing embedder and a redis-server process."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

from embedder.client import EmbedResult


class HashEmbedder:
    """Plumbing-only embedder: text before '#' picks a random unit vector, '#n' suffixes add small noise.

    'a#1' and 'a#2' are near-duplicates of 'a' (cosine ~0.99); different stems are ~orthogonal.
    """

    dims = 64

    def _vec(self, text: str) -> np.ndarray:
        stem, _, tag = text.partition("#")
        seed = int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=self.dims)
        if tag:
            noise_seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = v / np.linalg.norm(v) + 0.1 * np.random.default_rng(noise_seed).normal(size=self.dims) / 8
        return (v / np.linalg.norm(v)).astype(np.float32)

    async def embed(self, texts: list[str], **_: object) -> EmbedResult:
        return EmbedResult(np.stack([self._vec(t) for t in texts]), [len(t.split()) for t in texts], "hash")

    async def rerank(self, query: str, documents: list[str], **_: object) -> list[float]:
        return [0.0] * len(documents)

    async def model_info(self, model: str | None = None) -> dict[str, object]:
        return {"name": "hash", "dim": self.dims}

    async def aclose(self) -> None:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A private redis-server (AOF on) that a test can kill and restart on the same port and data."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def _ask(port: int, *args: str) -> str:
    """One command through redis-cli (its output as text; '' when the node does not answer)."""
    res = subprocess.run(
        ["redis-cli", "-p", str(port), "--raw", *args], capture_output=True, text=True, timeout=10
    )
    return res.stdout.strip()


class RedisClusterProcess:
    """A loopback Redis Cluster: ``n`` masters with one replica each, no persistence, 1 s node timeout.

    The node timeout (1 s) decides how fast a replica takes over a killed master (~2-3 s in all).
    """

    def __init__(self, workdir: Path, base_port: int, masters: int = 3) -> None:
        self.dir = workdir
        self.ports = [base_port + i for i in range(2 * masters)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def _spawn(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", "1000", "--appendonly", "no", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def restart(self, port: int) -> None:
        """Start a killed node again with its cluster config: it rejoins (as a replica)."""
        self._spawn(port)

    def start(self) -> None:
        for port in self.ports:
            self._spawn(port)
        deadline = time.time() + 10
        while not all(_ask(p, "PING") == "PONG" for p in self.ports):
            assert time.time() < deadline, "redis cluster nodes did not start"
            time.sleep(0.05)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.wait_ok(20)
        deadline = time.time() + 20  # every replica has finished its first sync
        while any("master_link_status:up" not in _ask(p, "INFO", "replication") for p in self.replicas()):
            assert time.time() < deadline, "replicas did not sync"
            time.sleep(0.1)

    def wait_ok(self, timeout: float) -> None:
        """Until every live node reports ``cluster_state:ok``."""
        deadline = time.time() + timeout
        while not all("cluster_state:ok" in _ask(p, "CLUSTER", "INFO") for p in self.procs):
            assert time.time() < deadline, "redis cluster not ok in time"
            time.sleep(0.1)

    def role(self, port: int) -> str:
        return _ask(port, "ROLE").split("\n", 1)[0]

    def replicas(self) -> list[int]:
        return [p for p in self.procs if self.role(p) == "slave"]

    def master_of_slot(self, slot: int) -> int:
        """Port of the master that serves ``slot`` now."""
        for line in _ask(next(iter(self.procs)), "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2]:
                for rng in parts[8:]:
                    lo, _, hi = rng.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(parts[1].split(":")[1].split("@")[0])
        raise LookupError(slot)

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)
