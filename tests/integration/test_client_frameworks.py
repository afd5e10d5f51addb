"""LangChain and LlamaIndex adapters of dowse_client against a real `dowse serve`: retrievers return exactly
/v1/search's hits, embeddings equal /v1/embeddings, a chain's LLM cache serves a paraphrase after feedback,
and the README's "Use it from your app" examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel

import dowse_client as dc
from dowse_client.langchain import DowseCache, DowseEmbeddings, DowseRetriever
from dowse_client.llamaindex import DowseLlamaEmbedding, DowseLlamaRetriever
from tests.integration.client_server import FAQ, REPO, dowse_server, raw_search

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
COLL = "faq"
ATOL = 1e-5  # float32 accumulation order across requests (see test_client_sdk.py)
SEARCHES: list[dict[str, Any]] = [
    {"query": "I forgot my password", "top_k": 3, "mode": "hybrid"},
    {"query": "lost card", "top_k": 2, "mode": "bm25", "filters": {"topic": "cards"}},
    {"query": "vitamin d", "top_k": 4, "mode": "dense", "rerank": True},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, redis_url: str) -> Iterator[str]:
    with dowse_server(tmp_path_factory.mktemp("client-fw"), model_cache, redis_url) as url:
        with dc.DowseClient(url) as client:
            client.create_collection(COLL)
            client.upsert(COLL, FAQ)
        yield url


def _ref(server: str, body: dict[str, Any]) -> list[tuple[str, str, float]]:
    return [
        (h["id"], h["text"], h["score"]) for h in raw_search(server, {"collection": COLL, **body})["hits"]
    ]


def _same(got: list[tuple[str, str, float]], ref: list[tuple[str, str, float]]) -> None:
    assert [g[:2] for g in got] == [r[:2] for r in ref] and ref
    np.testing.assert_allclose([g[2] for g in got], [r[2] for r in ref], atol=ATOL)


@pytest.mark.parametrize("body", SEARCHES)
async def test_langchain_retriever_documents_equal_search_hits(server: str, body: dict[str, Any]) -> None:
    opts = {k: v for k, v in body.items() if k not in ("query", "top_k", "mode", "filters", "rerank")}
    fields = {k: body[k] for k in ("top_k", "mode", "filters", "rerank") if k in body}
    with dc.DowseClient(server) as client:
        async with dc.AsyncDowseClient(server) as aclient:
            retriever = DowseRetriever(
                client=client, aclient=aclient, collection=COLL, search_options=opts, **fields
            )
            docs = retriever.invoke(body["query"])
            adocs = await retriever.ainvoke(body["query"])
    ref = _ref(server, body)
    for got in (docs, adocs):
        _same([(d.id or "", d.page_content, d.metadata["score"]) for d in got], ref)
        assert all(d.metadata["id"] == d.id and "title" in d.metadata for d in got)


def test_langchain_embeddings_use_query_and_document_prompts(server: str) -> None:
    def raw(texts: list[str], input_type: str) -> np.ndarray:
        body = {"input": texts, "input_type": input_type, "dimensions": 96}
        return np.array(
            [d["embedding"] for d in httpx.post(f"{server}/v1/embeddings", json=body).json()["data"]]
        )

    with dc.DowseClient(server) as client:
        emb = DowseEmbeddings(client, dimensions=96, batch_size=2)
        docs = emb.embed_documents(["a", "b c", "d e f"])  # two requests of <= 2 texts
        query = emb.embed_query("a")
    np.testing.assert_allclose(docs, raw(["a", "b c", "d e f"], "search_document"), atol=ATOL)
    np.testing.assert_allclose([query], raw(["a"], "search_query"), atol=ATOL)


ANSWERS = {
    "password": "Use Settings > Security.",
    "email": "Use Settings > Account.",
    "pin": "Call your bank.",
}
PHRASINGS = {
    "password": ["How do I reset my password?", "how can I reset my password",
                 "I forgot my password, how do I reset it?", "what are the steps to reset my password",
                 "reset password how to"],
    "email": ["How do I change my email address?", "how can I change my email",
              "I want to update my email address", "what are the steps to change my email",
              "change email how to"],
    "pin": ["How do I reset my card PIN?", "how can I change my card PIN", "I forgot my card PIN",
            "what are the steps to change my PIN", "reset PIN how to"],
}  # fmt: skip


class SupportBot(BaseChatModel):
    """A deterministic chat model standing in for an LLM: one answer per intent, every call recorded."""

    calls: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "support-bot"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kw: Any) -> ChatResult:  # fmt: skip
        question = str(messages[-1].content)
        self.calls.append(question)
        intent = next(k for k in ANSWERS if k in question.lower())
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=ANSWERS[intent]))])


def test_langchain_chain_with_retriever_and_cache_serves_paraphrases_after_feedback(server: str) -> None:
    ns = f"lc-{uuid.uuid4().hex[:8]}"
    with dc.DowseClient(server) as client:
        cache = DowseCache(client, namespace=ns, max_error=0.1)
        bot = SupportBot(cache=cache)
        retriever = DowseRetriever(client=client, collection=COLL, top_k=2)
        prompt = ChatPromptTemplate.from_messages([("system", "You answer bank support questions."),
                                                   ("human", "{question}")])  # fmt: skip
        chain = RunnableParallel(
            sources=itemgetter("question") | retriever, answer=prompt | bot | StrOutputParser()
        )
        served: list[str] = []
        for round_ in range(5):
            for intent, phrasings in PHRASINGS.items():
                question = phrasings[round_]
                n_calls = len(bot.calls)
                out = chain.invoke({"question": question})
                assert out["answer"] == ANSWERS[intent]  # served or fresh, always the intent's answer
                assert [d.id for d in out["sources"]] == [
                    h[0] for h in _ref(server, {"query": question, "top_k": 2})
                ]
                decision = cache.last_lookup.decision if cache.last_lookup else None
                if len(bot.calls) == n_calls:
                    assert decision == "exploit"
                    served.append(question)
                else:
                    assert decision in ("explore", "miss") and bot.calls[-1] == question
            if round_ == 0:
                assert served == []  # nothing can be served before any feedback
        stats = client.cache_stats(ns)
        client.cache_delete_namespace(ns)
    # every LLM call answered a miss or an explore; every explore was judged by its feedback, every miss's
    # feedback stored the pair (the first question of all: nothing to judge yet)
    assert (
        stats["explore"] + stats["miss"] == len(bot.calls)
        and stats["feedback"] + stats["feedback_repeated"] == stats["explore"]
    )
    assert stats["miss"] >= 1 and stats["stores"] >= stats["miss"]
    assert stats["exploit"] == len(served) and stats["feedback_wrong"] >= 1 and stats["feedback_correct"] >= 3
    # after feedback, paraphrases are answered from the cache without calling the LLM
    assert len(served) >= 1 and all(q not in [p[0] for p in PHRASINGS.values()] for q in served), served


async def test_langchain_cache_async_path(server: str) -> None:
    ns = f"lc-async-{uuid.uuid4().hex[:8]}"
    async with dc.AsyncDowseClient(server) as aclient:
        cache = DowseCache(namespace=ns, aclient=aclient, max_error=0.1)
        bot = SupportBot(cache=cache)
        decisions = []
        for question in ("How do I reset my password?", "How do I reset my password?"):
            msg = await bot.ainvoke(question)
            assert msg.content == ANSWERS["password"]
            decisions.append(cache.last_lookup.decision if cache.last_lookup else None)
        stats = await aclient.cache_stats(ns)
        await cache.aclear()
        assert (await aclient.cache_stats(ns))["entries"] == 0
    # a fresh entry is explored (no observations yet); the explore's feedback was judged correct
    assert decisions == ["miss", "explore"] and len(bot.calls) == 2
    assert stats["feedback"] == 1 and stats["feedback_correct"] == 1 and stats["entries"] == 1


async def test_llamaindex_retriever_and_embedding(server: str) -> None:
    body = SEARCHES[0]
    with dc.DowseClient(server) as client:
        async with dc.AsyncDowseClient(server) as aclient:
            retriever = DowseLlamaRetriever(
                COLL, client, aclient=aclient, top_k=body["top_k"], mode=body["mode"]
            )
            nodes = retriever.retrieve(body["query"])
            anodes = await retriever.aretrieve(body["query"])
            emb = DowseLlamaEmbedding(client, aclient=aclient, dimensions=64)
            q, aq = emb.get_query_embedding("a"), await emb.aget_query_embedding("a")
            texts = emb.get_text_embedding_batch(["a", "b"])
    ref = _ref(server, body)
    for got in (nodes, anodes):
        _same([(n.node.node_id, n.node.get_content(), n.score or 0.0) for n in got], ref)
    raw = httpx.post(
        f"{server}/v1/embeddings", json={"input": ["a"], "input_type": "search_query", "dimensions": 64}
    )
    np.testing.assert_allclose([q, aq], [raw.json()["data"][0]["embedding"]] * 2, atol=ATOL)
    assert len(texts) == 2 and len(texts[0]) == 64


def readme_examples() -> dict[str, str]:
    """The python blocks under ``<!-- example: NAME -->`` markers in README.md."""
    text = (REPO / "README.md").read_text()
    return dict(re.findall(r"<!-- example: (\w+) -->\s*```python\n(.*?)```", text, flags=re.S))


def test_readme_examples_run(server: str) -> None:
    examples = readme_examples()
    assert set(examples) == {"client", "langchain", "openai"}
    for name, code in examples.items():
        env = {**os.environ, "DOWSE_URL": server, "PYTHONPATH": f"{REPO / 'client'}{os.pathsep}{REPO}"}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, f"{name}:\n{run.stderr[-2000:]}"
        assert run.stdout.strip(), name
