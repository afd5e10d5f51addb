"""Acceptance 3 and 4 over real HTTP: `dowse serve` (real models) on a private redis-server we kill.

Redis down -> lookups miss within 50 ms, stores dropped and counted, search and /ready unaffected;
Redis back -> the cache works again without a restart; a gateway restart loses no stored entry;
namespaces and scopes are isolated; bad input -> 4xx naming the field.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.cache_helpers import RedisProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[2]


class Gateway:
    def __init__(self, tmp: Path, redis_url: str, model_cache: Path, corpus: Path) -> None:
        self.port = free_port()
        self.tmp, self.redis_url, self.model_cache, self.corpus = tmp, redis_url, model_cache, corpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "DOWSE_MODEL_CACHE": str(self.model_cache), "DOWSE_EXTRA_MODELS": "[]"}
        # The lookup path's Redis budget (default 40 ms) is raised so that a loaded shared CI machine does
        # not turn a slow healthy reply into a miss; the outage path measured below does not depend on it
        # (a killed server refuses connections at once, then lookups skip Redis altogether).
        env["DOWSE_CACHE_OP_TIMEOUT_S"] = "0.5"
        cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.tmp / "data"), "--redis-url", self.redis_url]
        cmd += ["--demo-corpus", str(self.corpus)]
        log = (self.tmp / "gateway.log").open("ab")  # kept for post-mortems of a failed run
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, "dowse serve exited"
            time.sleep(0.3)
        raise RuntimeError("gateway did not become ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


@pytest.fixture
def stack(tmp_path: Path, model_cache: Path, shared_data: Path) -> Iterator[tuple[RedisProcess, Gateway]]:
    corpus = tmp_path / "corpus.jsonl"
    with (shared_data / "scifact" / "corpus.jsonl").open() as src:
        corpus.write_text("".join(next(src) for _ in range(10)))
    (tmp_path / "redis").mkdir()
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    gw = Gateway(tmp_path, redis.url, model_cache, corpus)
    try:
        gw.start()
        # wait until the demo corpus is ingested: its embedding work would queue our requests behind it
        deadline = time.time() + 90
        with httpx.Client(base_url=gw.url) as c:
            while True:  # the collection exists before its documents are in: wait for hits
                r = _post(c, "/v1/search", SEARCH)
                if r.status_code == 200 and r.json()["hits"]:
                    break
                assert time.time() < deadline, "demo collection never became searchable"
                time.sleep(0.3)
        yield redis, gw
    finally:
        gw.stop()
        redis.kill()


def _post(c: httpx.Client, path: str, body: dict[str, object]) -> httpx.Response:
    return c.post(path, json=body, timeout=30)


def _bucket(c: httpx.Client, le: str) -> float:
    """Cumulative count of the server's lookup-latency histogram bucket ``le``."""
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'dowse_cache_lookup_seconds_bucket{{le="{le}"}}'):
            return float(line.split()[-1])
    raise AssertionError("lookup histogram missing from /metrics")


SEARCH = {"collection": "demo", "query": "cell biology", "mode": "bm25", "top_k": 3}
LOOKUP = {
    "namespace": "faq",
    "prompt": "What is the capital of France?",
    "policy": "static",
    "threshold": 0.8,
}


def test_redis_outage_recovery_and_restart(stack: tuple[RedisProcess, Gateway]) -> None:
    redis, gw = stack
    with httpx.Client(base_url=gw.url) as c:
        stored = _post(c, "/v1/cache/store", {**LOOKUP, "response": "Paris"}).json()
        assert stored["stored"] is True
        assert _post(c, "/v1/cache/lookup", LOOKUP).json()["hit"] is True

        hits_before = _post(c, "/v1/search", SEARCH).json()["hits"]
        assert hits_before

        redis.kill()
        before = _bucket(c, "0.05")
        timings = []
        for _ in range(20):
            t0 = time.perf_counter()
            r = _post(c, "/v1/cache/lookup", LOOKUP)
            timings.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json()["decision"] == "miss" and r.json()["hit"] is False
        # server side, every lookup of the outage (the first included) is answered within 50 ms: all 20
        # land in the <= 50 ms bucket of the lookup histogram. The client-side round trip also carries
        # HTTP and scheduling on a shared 2-core machine: its median must be under 50 ms as well.
        assert _bucket(c, "0.05") - before == 20
        assert sorted(timings)[len(timings) // 2] < 0.05, timings
        r = _post(c, "/v1/cache/store", {**LOOKUP, "prompt": "Capital of Spain?", "response": "Madrid"})
        assert r.status_code == 503 and r.json()["error"]["field"] == "redis"
        stats = c.get("/v1/cache/stats", params={"namespace": "faq"}).json()
        assert stats["redis"] == "unavailable" and stats["replica"]["dropped_stores"] >= 1
        assert c.get("/ready").status_code == 200
        search = _post(c, "/v1/search", SEARCH)
        assert search.status_code == 200 and search.json()["hits"] == hits_before
        fb = _post(c, "/v1/cache/feedback", {"namespace": "faq", "lookup_id": "f" * 32, "response": "x"})
        assert fb.status_code == 424 and fb.json()["error"]["field"] == "redis"

        redis.start()  # same port, same AOF directory
        deadline = time.time() + 10
        while not _post(c, "/v1/cache/lookup", LOOKUP).json()["hit"]:
            assert time.time() < deadline, "cache did not recover after Redis came back"
            time.sleep(0.2)
        assert _post(
            c, "/v1/cache/store", {**LOOKUP, "prompt": "Capital of Peru?", "response": "Lima"}
        ).json()["stored"]

    gw.stop()
    gw.start()
    with httpx.Client(base_url=gw.url) as c:
        for prompt, answer in (("What is the capital of France?", "Paris"), ("Capital of Peru?", "Lima")):
            r = _post(c, "/v1/cache/lookup", {**LOOKUP, "prompt": prompt}).json()
            assert r["hit"] is True and r["response"] == answer


def test_isolation_and_bad_input(stack: tuple[RedisProcess, Gateway]) -> None:
    _redis, gw = stack
    with httpx.Client(base_url=gw.url) as c:
        scope = {"system": "You are terse.", "model": "m1", "temperature": 0}
        assert _post(c, "/v1/cache/store", {**LOOKUP, "response": "Paris", "scope": scope}).json()["stored"]
        assert _post(c, "/v1/cache/lookup", {**LOOKUP, "scope": scope}).json()["hit"] is True
        for other in ({"namespace": "other"}, {"scope": {**scope, "model": "m2"}}, {"scope": None}):
            r = _post(c, "/v1/cache/lookup", {**LOOKUP, "threshold": 0.0, **other}).json()
            assert r["hit"] is False and "entry_id" not in r

        big = "x" * 40_000
        cases = [
            ("/v1/cache/lookup", {**LOOKUP, "prompt": ""}, 422, "prompt"),
            ("/v1/cache/lookup", {**LOOKUP, "prompt": big}, 413, "prompt"),
            ("/v1/cache/lookup", {**LOOKUP, "policy": "adaptive", "max_error": 0.0}, 422, "max_error"),
            ("/v1/cache/lookup", {**LOOKUP, "policy": "adaptive", "max_error": 1.0}, 422, "max_error"),
            ("/v1/cache/lookup", {**LOOKUP, "threshold": 1.5}, 422, "threshold"),
            ("/v1/cache/lookup", {**LOOKUP, "threshold": -0.1}, 422, "threshold"),
            ("/v1/cache/lookup", {**LOOKUP, "namespace": "bad space"}, 422, "namespace"),
            ("/v1/cache/store", {**LOOKUP, "response": ""}, 422, "response"),
            ("/v1/cache/store", {**LOOKUP, "response": "y" * 300_000}, 413, "response"),
            ("/v1/cache/store", {**LOOKUP, "response": "ok", "ttl_s": 0}, 422, "ttl_s"),
            (
                "/v1/cache/feedback",
                {"namespace": "faq", "lookup_id": "0" * 32, "response": "x"},
                404,
                "lookup_id",
            ),
            ("/v1/cache/feedback", {"lookup_id": "0" * 32, "response": "Paris"}, 422, "namespace"),
            ("/v1/cache/feedback", {"response": "Paris"}, 422, "lookup_id"),
        ]
        for path, body, status, field in cases:
            r = _post(c, path, body)
            assert r.status_code == status, (path, body.keys(), r.text)
            err = r.json()["error"]
            assert err["field"] == field and err["message"], (field, err)
        r = c.delete("/v1/cache/namespaces/faq/entries/nope")
        assert r.status_code == 404 and r.json()["error"]["field"] == "entry_id"
        assert c.delete("/v1/cache/namespaces/faq").json()["deleted_entries"] == 1
        assert _post(c, "/v1/cache/lookup", {**LOOKUP, "scope": scope}).json()["hit"] is False
