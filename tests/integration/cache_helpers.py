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
