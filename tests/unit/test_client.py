"""dowse_client plumbing over httpx.MockTransport: error table, retries and Retry-After, base64 vectors,
get_or_call's exploit / explore / miss paths (sync and async). Real-server tests: tests/integration."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import dowse_client as dc
from dowse_client import _core, errors

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **kw: Any) -> dc.DowseClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return dc.DowseClient("http://dowse.test", http_client=http, **kw)


def _aclient(handler: Handler, **kw: Any) -> dc.AsyncDowseClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return dc.AsyncDowseClient("http://dowse.test", http_client=http, **kw)


def _err(status: int, type_: str, field: str | None = None, limit: Any = None, **headers: str) -> Handler:
    body = {"error": {"type": type_, "message": f"{type_} here", "field": field, "limit": limit}}
    return lambda _req: httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("status", "type_", "cls"),
    [
        (400, "malformed_json", errors.MalformedRequest),
        (401, "unauthorized", errors.Unauthorized),
        (403, "forbidden", errors.Forbidden),
        (404, "not_found", errors.NotFound),
        (409, "conflict", errors.Conflict),
        (413, "too_large", errors.TooLarge),
        (422, "invalid_input", errors.InvalidInput),
        (422, "unknown_model", errors.InvalidInput),  # a subclass-specific type: the status decides
        (424, "dependency_failed", errors.DependencyFailed),
        (429, "overloaded", errors.Overloaded),
        (503, "not_ready", errors.NotReady),
        (500, "internal", errors.ServerError),
        (418, "teapot", errors.APIError),
    ],
)
def test_error_body_maps_to_typed_exception(status: int, type_: str, cls: type[errors.APIError]) -> None:
    with _client(_err(status, type_, "top_k", 100), max_retries=0) as client, pytest.raises(cls) as info:
        client.search("c", "q")
    exc = info.value
    assert type(exc) is cls and exc.status_code == status and exc.type == type_
    assert exc.field == "top_k" and exc.limit == 100 and exc.message == f"{type_} here"


def test_non_json_error_body_still_typed() -> None:
    client = _client(lambda _r: httpx.Response(502, text="bad gateway"), max_retries=0)
    with client, pytest.raises(errors.ServerError) as info:
        client.ready()
    assert info.value.message == "bad gateway" and info.value.status_code == 502


def test_retries_429_honouring_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("dowse_client.client.time.sleep", slept.append)
    answers = [
        httpx.Response(
            429, json={"error": {"type": "overloaded", "message": "m"}}, headers={"Retry-After": "3"}
        ),
        httpx.Response(503, json={"error": {"type": "not_ready", "message": "m"}}),
        httpx.Response(200, json={"hits": [], "timings_ms": {}}),
    ]
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return answers[len(seen) - 1]

    with _client(handler, max_retries=2, backoff_s=0.25) as client:
        assert client.search("c", "q").hits == []
    assert len(seen) == 3
    assert slept[0] == 3.0  # the server's Retry-After
    assert 0.125 <= slept[1] <= 0.5  # backoff 0.25 * 2**1 with jitter in [0.5, 1)


def test_gives_up_after_max_retries_with_the_last_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dowse_client.client.time.sleep", lambda _s: None)
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        return _err(429, "overloaded", "input", 64, **{"Retry-After": "1"})(req)

    with _client(handler, max_retries=1) as client, pytest.raises(errors.Overloaded) as info:
        client.embed("x")
    assert len(calls) == 2 and info.value.retry_after == 1.0 and info.value.limit == 64


def test_422_is_not_retried() -> None:
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        return _err(422, "invalid_input", "top_k", 100)(req)

    with _client(handler, max_retries=3) as client, pytest.raises(errors.InvalidInput):
        client.search("c", "q", top_k=1000)
    assert len(calls) == 1


def test_refused_connection_is_retried_then_transport_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dowse_client.client.time.sleep", lambda _s: None)
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        raise httpx.ConnectError("refused", request=req)

    with _client(handler, max_retries=2) as client, pytest.raises(errors.TransportError):
        client.ready()
    assert len(calls) == 3


def test_retry_after_http_date() -> None:
    assert _core.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert _core.parse_retry_after("2.5") == 2.5 and _core.parse_retry_after("soon") is None


def test_search_body_api_key_and_result_types() -> None:
    seen: dict[str, Any] = {}

    def handler(req: httpx.Request) -> httpx.Response:
        seen.update(json.loads(req.content), auth=req.headers.get("authorization"), path=req.url.path)
        hit = {"id": "d1", "score": 0.5, "title": "T", "text": "x", "metadata": {"y": 1}}
        return httpx.Response(200, json={"hits": [hit], "timings_ms": {"total": 1.0}, "degraded": False})

    with _client(handler, api_key="k1") as client:
        res = client.search("docs", "q", top_k=3, mode="bm25", filters={"y": 1}, alpha=None)
    assert seen == {"collection": "docs", "query": "q", "top_k": 3, "mode": "bm25", "filters": {"y": 1},
                    "auth": "Bearer k1", "path": "/v1/search"}  # fmt: skip
    assert res.hits == [dc.Hit("d1", 0.5, "T", "x", {"y": 1})] and res.timings_ms == {"total": 1.0}


def test_embeddings_requested_as_base64_and_decoded_exactly() -> None:
    vecs = [[0.1, -2.5, 3.0e-8], [1.0, 0.0, -0.333]]

    def handler(req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        assert body["encoding_format"] == "base64" and body["input"] == ["a", "b"] and body["dimensions"] == 3
        data = [
            {"index": i, "embedding": base64.b64encode(struct.pack("<3f", *v)).decode(), "tokens": 2}
            for i, v in reversed(list(enumerate(vecs)))
        ]
        return httpx.Response(200, json={"data": data, "model": "m", "usage": {"prompt_tokens": 4}})

    with _client(handler) as client:
        out = client.embed(["a", "b"], dimensions=3)
    expect = [list(struct.unpack("<3f", struct.pack("<3f", *v))) for v in vecs]  # float32-rounded
    assert (
        out.vectors == expect and out.model == "m" and out.prompt_tokens == 4 and out.token_counts == [2, 2]
    )


class FakeCache:
    """A cache server answering one fixed decision and recording the writes."""

    def __init__(self, decision: str) -> None:
        self.decision = decision
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        if req.url.path == "/v1/cache/lookup":
            hit = self.decision == "exploit"
            return httpx.Response(200, json={"hit": hit, "decision": self.decision, "lookup_id": "L1",
                                             "response": "cached" if hit else None})  # fmt: skip
        self.writes.append((req.url.path, body))
        if req.url.path == "/v1/cache/feedback":
            return httpx.Response(200, json={"correct": True, "entry_id": "e", "stored_entry_id": "e2",
                                             "observations": 1})  # fmt: skip
        return httpx.Response(200, json={"stored": True, "entry_id": "e3"})


FEEDBACK_L1 = {"namespace": "ns", "lookup_id": "L1", "response": "fresh"}


@pytest.mark.parametrize(
    ("decision", "from_cache", "writes"),
    [
        ("exploit", True, []),
        ("explore", False, [("/v1/cache/feedback", FEEDBACK_L1)]),
        ("miss", False, [("/v1/cache/feedback", FEEDBACK_L1)]),
    ],
)
def test_get_or_call_decisions(decision: str, from_cache: bool, writes: list[Any]) -> None:
    server, calls = FakeCache(decision), []
    with _client(server) as client:
        ans = client.get_or_call("ns", "p", lambda: calls.append(1) or "fresh")
    assert ans.from_cache is from_cache and ans.response == ("cached" if from_cache else "fresh")
    assert len(calls) == (0 if from_cache else 1) and server.writes == writes


def test_get_or_call_stores_when_the_lookup_record_expired() -> None:
    server = FakeCache("explore")

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/cache/feedback":
            return _err(404, "unknown_lookup", "lookup_id")(req)
        return server(req)

    with _client(handler) as client:
        ans = client.get_or_call("ns", "p", lambda: "fresh", scope={"model": "m"})
    assert ans.response == "fresh" and ans.feedback is None
    assert server.writes == [("/v1/cache/store", {"namespace": "ns", "prompt": "p", "response": "fresh",
                                                   "scope": {"model": "m"}})]  # fmt: skip


async def test_async_client_same_calls_and_errors() -> None:
    server = FakeCache("explore")

    async def fresh() -> str:
        return "fresh"

    async with _aclient(server) as client:
        ans = await client.get_or_call("ns", "p", fresh)
        assert ans.response == "fresh" and ans.feedback is not None and ans.feedback.stored_entry_id == "e2"
    async with _aclient(_err(404, "not_found", "collection"), max_retries=0) as client:
        with pytest.raises(errors.NotFound) as info:
            await client.search("nope", "q")
    assert info.value.field == "collection"


def test_iter_job_yields_until_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dowse_client.client.time.sleep", lambda _s: None)
    states = iter(["queued", "running", "running", "completed"])

    def handler(req: httpx.Request) -> httpx.Response:
        st = next(states)
        return httpx.Response(
            200, json={"id": "j1", "status": st, "total": 10, "done": 10 * (st == "completed")}
        )

    with _client(handler) as client:
        seen = [j.status for j in client.iter_job("c", "j1", poll_s=0)]
    assert seen == ["queued", "running", "running", "completed"]


def test_async_client_has_every_sync_method_as_a_coroutine() -> None:
    import inspect

    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}

    sync, asy = public(dc.DowseClient), public(dc.AsyncDowseClient)
    assert sync - {"close"} == asy - {"aclose"}
    for name in asy - {"iter_job"}:
        assert inspect.iscoroutinefunction(getattr(dc.AsyncDowseClient, name)), name
    assert inspect.isasyncgenfunction(dc.AsyncDowseClient.iter_job)


def test_unexpected_success_body_is_a_typed_error() -> None:
    client = _client(lambda _r: httpx.Response(200, text="<html>proxy login</html>"))
    with client, pytest.raises(errors.APIError) as info:
        client.search("c", "q")
    assert info.value.type == "bad_response" and info.value.status_code == 200 and "proxy" in info.value.body
