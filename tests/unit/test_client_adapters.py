"""LangChain cache adapter plumbing over httpx.MockTransport: what is embedded and scoped for chat and text
prompts, feedback on explores / misses, plain stores, and calls that are not cached."""

from __future__ import annotations

import json
from typing import Any

import httpx
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import Generation

import dowse_client as dc
from dowse_client.langchain import DowseCache, cache_key


def test_cache_key_of_chat_messages_and_text_prompts() -> None:
    msgs = [
        SystemMessage("be brief"),
        HumanMessage("hi"),
        AIMessage("hello"),
        HumanMessage("reset my password"),
    ]
    text, scope = cache_key(dumps(msgs), "LLM")
    assert text == "reset my password" and scope == {"llm": "LLM", "context": ["be brief", "hi", "hello"]}
    assert cache_key("Q: what is 2+2?", "LLM") == ("Q: what is 2+2?", {"llm": "LLM"})
    assert cache_key("[not json", "LLM") == ("[not json", {"llm": "LLM"})


class Server:
    """Answers lookups with a fixed decision and records every request body by path."""

    def __init__(self, decision: str) -> None:
        self.decision, self.seen = decision, []  # type: ignore[var-annotated]

    def __call__(self, req: httpx.Request) -> httpx.Response:
        body: dict[str, Any] = json.loads(req.content)
        self.seen.append((req.url.path, body))
        if req.url.path == "/v1/cache/lookup":
            hit = self.decision == "exploit"
            return httpx.Response(200, json={"hit": hit, "decision": self.decision, "lookup_id": "L7",
                                             "response": "cached" if hit else None})  # fmt: skip
        if req.url.path == "/v1/cache/feedback":
            return httpx.Response(200, json={"correct": True, "entry_id": "e", "stored_entry_id": None,
                                             "observations": 1})  # fmt: skip
        return httpx.Response(200, json={"stored": True, "entry_id": "s"})


def _cache(server: Server) -> DowseCache:
    http = httpx.Client(transport=httpx.MockTransport(server))
    return DowseCache(dc.DowseClient("http://t", http_client=http), namespace="ns", max_error=0.05)


def test_exploit_is_served_and_explore_gets_feedback() -> None:
    srv = Server("exploit")
    assert _cache(srv).lookup("p", "L") == [Generation(text="cached")]
    assert srv.seen == [("/v1/cache/lookup", {"namespace": "ns", "prompt": "p", "scope": {"llm": "L"},
                                              "policy": "adaptive", "max_error": 0.05})]  # fmt: skip
    srv = Server("explore")
    cache = _cache(srv)
    assert cache.lookup("p", "L") is None
    cache.update("p", "L", [Generation(text="fresh")])
    assert srv.seen[1] == ("/v1/cache/feedback", {"namespace": "ns", "lookup_id": "L7", "response": "fresh"})
    cache.update("p", "L", [Generation(text="again")])  # no pending lookup any more: a plain store
    assert srv.seen[2] == ("/v1/cache/store", {"namespace": "ns", "prompt": "p", "response": "again",
                                               "scope": {"llm": "L"}})  # fmt: skip


def test_multi_generation_calls_are_not_cached() -> None:
    srv = Server("miss")
    cache = _cache(srv)
    cache.lookup("p", "L")
    cache.update("p", "L", [Generation(text="a"), Generation(text="b")])
    assert [path for path, _ in srv.seen] == ["/v1/cache/lookup"]
