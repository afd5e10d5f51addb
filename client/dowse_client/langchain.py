"""LangChain adapters (``pip install dowse-client[langchain]``): a retriever over ``/v1/search``, embeddings
over ``/v1/embeddings`` with query vs document prompts, and an LLM cache over Dowse's semantic cache.

``DowseCache`` sends the fresh answer of every explored (or missed) lookup back as feedback, which is what
lets the adaptive policy learn when a paraphrase may be served from the cache.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.outputs import Generation
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from dowse_client import errors
from dowse_client._base import log_write_failure, needs_write
from dowse_client.aio import AsyncDowseClient
from dowse_client.client import DowseClient
from dowse_client.types import CacheLookup, Hit

__all__ = ["DowseCache", "DowseEmbeddings", "DowseRetriever", "hit_to_document"]


def hit_to_document(hit: Hit) -> Document:
    """A search hit as a LangChain Document: text as page content; id, score, title in the metadata."""
    meta = {**hit.metadata, "id": hit.id, "score": hit.score, "title": hit.title}
    return Document(page_content=hit.text, metadata=meta, id=hit.id)


class DowseRetriever(BaseRetriever):
    """``BaseRetriever`` over ``POST /v1/search``; every search field is a retriever field."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: DowseClient = Field(default_factory=DowseClient)
    aclient: AsyncDowseClient | None = None
    collection: str
    top_k: int = 10
    mode: str = "hybrid"
    filters: dict[str, Any] | None = None
    rerank: bool = False
    search_options: dict[str, Any] = Field(
        default_factory=dict, description="fusion, alpha, rerank_top_n, ..."
    )

    def _options(self) -> dict[str, Any]:
        opts = {"top_k": self.top_k, "mode": self.mode, "filters": self.filters, "rerank": self.rerank}
        return {**opts, **self.search_options}

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        res = self.client.search(self.collection, query, **self._options())
        return [hit_to_document(h) for h in res.hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self.aclient is None:  # no async client given: the sync one in a worker thread
            return await super()._aget_relevant_documents(query, run_manager=run_manager)
        res = await self.aclient.search(self.collection, query, **self._options())
        return [hit_to_document(h) for h in res.hits]


class DowseEmbeddings(Embeddings):
    """``Embeddings`` over ``/v1/embeddings``: documents get the passage prompt, queries the query one."""

    def __init__(
        self,
        client: DowseClient | None = None,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 256,
        aclient: AsyncDowseClient | None = None,
    ) -> None:
        self.client = client or DowseClient()
        self.aclient = aclient
        self.model, self.dimensions, self.batch_size = model, dimensions, batch_size

    def _opts(self, input_type: str) -> dict[str, Any]:
        return {"model": self.model, "dimensions": self.dimensions, "input_type": input_type}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Passage vectors, ``batch_size`` texts per request."""
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            out += self.client.embed(texts[i : i + self.batch_size], **self._opts("search_document")).vectors
        return out

    def embed_query(self, text: str) -> list[float]:
        """A query vector (the model's query prompt applied)."""
        return self.client.embed(text, **self._opts("search_query")).vectors[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents` (the async client when given)."""
        if self.aclient is None:
            return await super().aembed_documents(texts)
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            res = await self.aclient.embed(texts[i : i + self.batch_size], **self._opts("search_document"))
            out += res.vectors
        return out

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`."""
        if self.aclient is None:
            return await super().aembed_query(text)
        return (await self.aclient.embed(text, **self._opts("search_query"))).vectors[0]


def _message_text(msg: Any) -> str:
    content = msg.get("kwargs", {}).get("content", "") if isinstance(msg, dict) else ""
    if isinstance(content, list):  # content blocks: keep the text ones
        content = " ".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)


def cache_key(prompt: str, llm_string: str) -> tuple[str, dict[str, Any]]:
    """What Dowse embeds and what it hashes into the scope for one LangChain cache key.

    Chat models give ``prompt`` as serialized messages: the last message's text is looked up, and the
    earlier messages (system prompt, history) join the model's ``llm_string`` in the scope, so a
    paraphrased question matches only under the same conversation and model settings."""
    try:
        messages = json.loads(prompt) if prompt.startswith("[") else None
    except ValueError:
        messages = None
    if (
        isinstance(messages, list)
        and messages
        and all(isinstance(m, dict) and "kwargs" in m for m in messages)
    ):
        text = _message_text(messages[-1])
        context = [_message_text(m) for m in messages[:-1]]
        if text.strip():
            return text, {"llm": llm_string, "context": context}
    return prompt, {"llm": llm_string}


class DowseCache(BaseCache):
    """LangChain LLM cache over Dowse's semantic cache (``set_llm_cache(DowseCache(...))``).

    A lookup Dowse exploits is served; on an explore or a miss the LLM runs and :meth:`update` sends its
    answer as feedback on that lookup (the server judges the cached answer and stores the fresh one).
    Only single-generation results are cached (``n > 1`` calls pass through)."""

    def __init__(
        self,
        client: DowseClient | None = None,
        *,
        namespace: str = "langchain",
        policy: str = "adaptive",
        max_error: float | None = None,
        threshold: float | None = None,
        aclient: AsyncDowseClient | None = None,
        max_pending: int = 10_000,
    ) -> None:
        self.client = client or DowseClient()
        self.aclient = aclient
        self.namespace = namespace
        self.lookup_options = {"policy": policy, "max_error": max_error, "threshold": threshold}
        self.last_lookup: CacheLookup | None = None
        self._pending: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()
        self._max_pending = max_pending

    # ---- shared bookkeeping ---------------------------------------------------------------------
    def _after_lookup(self, prompt: str, llm_string: str, res: CacheLookup) -> RETURN_VAL_TYPE | None:
        self.last_lookup = res
        if res.decision == "exploit" and res.response is not None:
            return [Generation(text=res.response)]
        if needs_write(res):
            with self._lock:
                self._pending[(prompt, llm_string)] = res.lookup_id
                while len(self._pending) > self._max_pending:
                    self._pending.popitem(last=False)
        return None

    def _take(self, prompt: str, llm_string: str) -> str | None:
        with self._lock:
            return self._pending.pop((prompt, llm_string), None)

    # ---- sync ----------------------------------------------------------------------------------
    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Cached generations when Dowse exploits the nearest entry, else None (the LLM will run)."""
        text, scope = cache_key(prompt, llm_string)
        res = self.client.cache_lookup(self.namespace, text, scope=scope, **self.lookup_options)
        return self._after_lookup(prompt, llm_string, res)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Feedback on the pending explore/miss lookup of this prompt, or a plain store."""
        lookup_id = self._take(prompt, llm_string)
        if len(return_val) != 1:
            return
        text, scope = cache_key(prompt, llm_string)
        answer = return_val[0].text
        try:
            if lookup_id is not None:
                try:
                    self.client.cache_feedback(self.namespace, lookup_id, answer)
                    return
                except errors.NotFound:  # the lookup record expired
                    pass
            self.client.cache_store(self.namespace, text, answer, scope=scope)
        except errors.DowseError as exc:
            log_write_failure(exc)

    def clear(self, **kwargs: Any) -> None:
        """Delete the namespace's entries and statistics."""
        self.client.cache_delete_namespace(self.namespace)

    # ---- async (the async client when given, else the sync one in a thread) ----------------------
    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async :meth:`lookup`."""
        if self.aclient is None:
            return await super().alookup(prompt, llm_string)
        text, scope = cache_key(prompt, llm_string)
        res = await self.aclient.cache_lookup(self.namespace, text, scope=scope, **self.lookup_options)
        return self._after_lookup(prompt, llm_string, res)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async :meth:`update`."""
        if self.aclient is None:
            return await super().aupdate(prompt, llm_string, return_val)
        lookup_id = self._take(prompt, llm_string)
        if len(return_val) != 1:
            return None
        text, scope = cache_key(prompt, llm_string)
        answer = return_val[0].text
        try:
            if lookup_id is not None:
                try:
                    await self.aclient.cache_feedback(self.namespace, lookup_id, answer)
                    return None
                except errors.NotFound:
                    pass
            await self.aclient.cache_store(self.namespace, text, answer, scope=scope)
        except errors.DowseError as exc:
            log_write_failure(exc)
        return None

    async def aclear(self, **kwargs: Any) -> None:
        """Async :meth:`clear`."""
        if self.aclient is None:
            return await super().aclear(**kwargs)
        await self.aclient.cache_delete_namespace(self.namespace)
        return None
