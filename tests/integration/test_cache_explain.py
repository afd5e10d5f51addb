"""``POST /v1/cache/lookup`` with ``explain`` and ``GET /v1/cache/namespaces`` on the real Redis: the explain
figures are the ones the policy decided with (an exploit's risk is under its cut and within the allowance,
an explore's is not), and the contrast score is similarity minus the weighted competitor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from gateway.cache.service import CacheConfig, CacheService
from services import cache_api
from services.errors import install_error_handlers
from tests.integration.cache_helpers import HashEmbedder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, CacheService]]:
    r = aioredis.Redis.from_url(redis_url)
    await r.flushdb()
    # budget rule, response groups; source_bin 0: every feedback of this one client counts (the test is
    # about explain, not about the repeated-source rule, which would count one observation per score bin)
    cfg = CacheConfig(op_timeout_s=1.0, min_obs=3, use_prior=False, source_bin=0.0)
    svc = CacheService(redis_url, HashEmbedder(), cfg, seed=0)  # type: ignore[arg-type]
    await svc.start()
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(cache_api.router)
    app.state.cache = svc
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client, svc
    await svc.close()
    await r.flushdb()
    await r.aclose()


async def _lookup(client: httpx.AsyncClient, prompt: str, **kw: Any) -> dict[str, Any]:
    r = await client.post(
        "/v1/cache/lookup", json={"namespace": "ns", "prompt": prompt, "explain": True, **kw}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_explain_gives_the_inputs_of_each_decision(api: tuple[httpx.AsyncClient, CacheService]) -> None:
    client, svc = api
    miss = await _lookup(client, "q")
    assert miss["decision"] == "miss" and miss["explain"]["rule"] == "budget"
    assert "no entry" in miss["explain"]["note"]
    await client.post("/v1/cache/store", json={"namespace": "ns", "prompt": "q", "response": "A"})
    await client.post("/v1/cache/store", json={"namespace": "ns", "prompt": "other", "response": "B"})
    seen: dict[str, int] = {}
    for i in range(1, 50):
        res = await _lookup(client, f"q#{i}", max_error=0.2)
        ex, bound = res["explain"], res["explain"]["bound"]
        seen[res["decision"]] = seen.get(res["decision"], 0) + 1
        assert ex["similarity"] == pytest.approx(res["similarity"])
        competitor = max(ex["competitor"], 0.0)
        assert ex["contrast_score"] == pytest.approx(
            ex["similarity"] - ex["contrast_weight"] * competitor, abs=1e-5
        )
        assert bound["max_error"] == 0.2 and bound["allowance"] == pytest.approx(0.2 * i)
        within = (
            ex["risk"] < 1
            and ex["risk"] <= bound["risk_cut"]
            and bound["spent"] + ex["risk"] <= bound["allowance"]
        )
        assert within == (res["decision"] == "exploit"), res
        if res["decision"] == "explore":
            await client.post(
                "/v1/cache/feedback", json={"namespace": "ns", "lookup_id": res["lookup_id"], "response": "A"}
            )
        if i == 1:
            assert ex["fit"] is None and ex["risk"] == 1.0  # no observations yet
    assert seen.get("explore") and seen.get("exploit"), seen
    assert ex["fit"]["observations"] >= 3 and ex["fit"]["source"] == "answer group"
    static = await _lookup(client, "q#x", policy="static", threshold=0.5)
    assert static["decision"] == "exploit" and static["explain"]["bound"]["threshold"] == 0.5
    assert "risk" not in static["explain"]
    plain = await client.post("/v1/cache/lookup", json={"namespace": "ns", "prompt": "q#y"})
    assert "explain" not in plain.json()
    # the namespace list counts what happened
    r = await client.get("/v1/cache/namespaces")
    (row,) = r.json()["namespaces"]
    assert row["name"] == "ns" and row["lookups"] == 52 and row["exploit"] == seen["exploit"] + 1
    assert row["entries"] == (await svc.stats("ns"))["entries"]
