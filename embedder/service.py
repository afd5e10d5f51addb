"""EmbeddingService: loaded models, input validation, prompts, dimensions, batching, reranking."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from embedder import metrics
from embedder.batching import MICRO_BATCH_TOKENS, DynamicBatcher, Priority, check_priority, run_sorted
from embedder.client import EmbedResult
from embedder.errors import InvalidInput, NotReady, Overloaded, TooLarge
from embedder.export import PRECISIONS, ensure_exported, read_manifest
from embedder.onnx_model import Encoded, OnnxModel, truncate_dims
from embedder.registry import UnknownModel, canonical_name, resolve, slug

log = logging.getLogger(__name__)

_INLINE_CHARS = 2000  # requests with more text than this are tokenised in a worker thread


class EmbeddingService:
    """Serves bi-encoders and cross-encoders from a model cache; blocking work runs off the event loop."""

    def __init__(
        self,
        model_cache: Path,
        models: list[str],
        default_model: str = "minilm",
        precision: str = "int8",
        device: str = "auto",
        intra_op_threads: int = 0,
        batching: bool = True,
        max_batch_size: int = 64,
        max_batch_tokens: int = 8192,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        max_client_batch: int = 256,
        auto_export: bool = True,
        rerank_max_length: int | None = 256,
        micro_batch_tokens: int = MICRO_BATCH_TOKENS,
        max_batch_queue: int = 1024,
        max_request_tokens: int = 32768,
        max_rerank_docs: int = 100,
        max_rerank_tokens: int = 25600,
    ) -> None:
        if precision not in PRECISIONS:
            raise InvalidInput(f"unknown precision {precision!r}", field="precision", limit=list(PRECISIONS))
        for name, val in (
            ("max_batch_size", max_batch_size),
            ("max_batch_tokens", max_batch_tokens),
            ("micro_batch_tokens", micro_batch_tokens),
            ("max_request_tokens", max_request_tokens),
            ("max_rerank_docs", max_rerank_docs),
            ("max_rerank_tokens", max_rerank_tokens),
        ):
            if val < 1:
                raise InvalidInput(f"{name} must be >= 1", field=name, limit=1)
        self.model_cache = Path(model_cache)
        self.default_model = canonical_name(default_model)
        names = [self.default_model] + [canonical_name(m) for m in models]
        self.model_names: list[str] = list(dict.fromkeys(names))
        self.precision = precision
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.batching = batching
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_ms = max_wait_ms
        self.max_queue = max_queue
        self.max_client_batch = max_client_batch
        self.micro_batch_tokens = micro_batch_tokens
        self.max_batch_queue = max_batch_queue
        # Caps per request, so that one call cannot hold the model for tens of seconds (413 above them).
        self.max_request_tokens = max_request_tokens
        self.max_rerank_docs = max_rerank_docs
        self.max_rerank_tokens = max_rerank_tokens
        self.auto_export = auto_export
        # Cross-encoder pairs are truncated (longest first) at this many tokens: 256 keeps MS MARCO-style
        # passages whole while halving the cost of 512 on long abstracts. None = the model's own maximum.
        self.rerank_max_length = rerank_max_length
        self._models: dict[str, OnnxModel] = {}
        self._batchers: dict[str, DynamicBatcher] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dowse-embed")
        self._inflight = 0
        self.ready = False
        self.load_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def load(self) -> None:
        """Export (if allowed and needed) and load every model; blocking."""
        t0 = time.perf_counter()
        for name in self.model_names:
            if name in self._models:
                continue
            if self.auto_export:
                model_dir = ensure_exported(name, self.model_cache, self.precision)
            else:
                model_dir = self.model_cache / slug(resolve(name))
                if read_manifest(model_dir) is None:
                    log.error("model %s is not exported in %s", name, self.model_cache)
                    raise NotReady(  # clients get no server path; the log has it
                        f"model {name!r} is not exported in the model cache: "
                        f"run `dowse models export {name}`",
                        field="model",
                    )
            cap = self.rerank_max_length if resolve(name).kind == "cross-encoder" else None
            self._models[name] = OnnxModel(
                model_dir, self.precision, self.device, self.intra_op_threads, max_length=cap
            )
        log.info("embedder models %s loaded in %.1f s", self.model_names, time.perf_counter() - t0)

    def start_blocking(self) -> None:
        """Load synchronously and mark ready, for callers without a long-lived loop (batching must be off)."""
        if self.batching:
            raise InvalidInput("start_blocking() needs batching=False", field="batching", limit=False)
        self.load()
        self.ready = True

    async def start(self) -> None:
        """Load the models in a worker thread, then start the batchers; sets ``ready``."""
        try:
            await asyncio.to_thread(self.load)
        except Exception as exc:
            # "not exported" names the fix; anything else may hold paths or classes: the log has it
            self.load_error = (
                exc.message if isinstance(exc, NotReady) else "models failed to load (see the server log)"
            )
            log.exception("embedder failed to load models")
            raise
        if self.batching:
            for name, model in self._models.items():
                self._batchers[name] = DynamicBatcher(
                    model.run,
                    self._executor,
                    name=name,
                    max_batch_size=self.max_batch_size,
                    max_batch_tokens=self.max_batch_tokens,
                    max_wait_ms=self.max_wait_ms,
                    max_queue=self.max_queue,
                    micro_batch_tokens=self._micro_budget(model),
                    max_batch_queue=self.max_batch_queue,
                )
                self._batchers[name].start()
        self.ready = True

    async def stop(self) -> None:
        """Stop batchers and the worker thread."""
        self.ready = False
        for b in self._batchers.values():
            await b.stop()
        self._batchers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _micro_budget(self, model: OnnxModel) -> int:
        """Padded tokens per batch-class micro-batch of ``model``: the cross-encoder (12 layers, pairs)
        costs 2.0x minilm per token (350 vs 172 us, bench/micro_batch.py), so it gets half the budget."""
        full = self.micro_batch_tokens
        return max(1, full // 2) if model.kind == "cross-encoder" else full

    # -- lookup -------------------------------------------------------------------------------------
    def _model(self, name: str | None, kind: str) -> OnnxModel:
        if not self._models:
            raise NotReady("embedder models are still loading", field="model")
        if name is None:
            if kind == "bi-encoder":
                name = self.default_model
            else:
                name = next((n for n, m in self._models.items() if m.kind == kind), None)
                if name is None:
                    raise UnknownModel("no cross-encoder is loaded", field="model", limit=self.loaded())
        canon = canonical_name(name)
        model = self._models.get(canon)
        if model is None:
            raise UnknownModel(f"model {name!r} is not loaded", field="model", limit=self.loaded())
        if model.kind != kind:
            raise InvalidInput(
                f"model {canon!r} is a {model.kind}, this call needs a {kind}",
                field="model",
                limit=[n for n, m in self._models.items() if m.kind == kind],
            )
        return model

    def limits(self) -> dict[str, int]:
        """Per-request caps (413 above them) and the scheduling budgets, as shown in ``/info``."""
        return {
            "max_client_batch": self.max_client_batch,
            "max_request_tokens": self.max_request_tokens,
            "max_rerank_documents": self.max_rerank_docs,
            "max_rerank_tokens": self.max_rerank_tokens,
            "micro_batch_tokens": self.micro_batch_tokens,
            "max_queue": self.max_queue,
            "max_batch_queue": self.max_batch_queue,
        }

    def priority_for(self, priority: str | None, items: list[Encoded]) -> Priority:
        """The class of a request: as asked, else interactive when it fits in one micro-batch, else batch."""
        if priority is not None:
            return check_priority(priority)
        return "interactive" if sum(len(e) for e in items) <= self.micro_batch_tokens else "batch"

    def loaded(self) -> list[str]:
        """Names of the loaded models."""
        return list(self._models)

    def model_info(self, name: str | None = None) -> dict[str, Any]:
        """``{"name", "dim", "max_length", "pooling", "prompts", "revision", "kind", ...}``."""
        if name is None:
            model = self._model(None, "bi-encoder")
        else:
            model = self._models.get(canonical_name(name)) or self._model(name, "bi-encoder")
        return {
            "name": model.name,
            "kind": model.kind,
            "dim": model.dim,
            "max_length": model.max_length,
            "pooling": model.pooling,
            "normalize": model.normalize,
            "prompts": dict(model.prompts),
            "revision": model.revision,
            "precision": model.precision,
            "file": model.file,
            "providers": list(model.session.get_providers()),
        }

    # -- validation ---------------------------------------------------------------------------------
    def _check_texts(
        self, texts: Any, field: str = "input", allow_empty: bool = False, offline: bool = False
    ) -> list[str]:
        if isinstance(texts, str) or not isinstance(texts, list | tuple):
            raise InvalidInput(f"{field} must be a list of strings", field=field, limit="list[str]")
        if not texts:
            raise InvalidInput(f"{field} is empty: send at least one text", field=field, limit=1)
        if not offline and len(texts) > self.max_client_batch:
            raise TooLarge(
                f"{field} has {len(texts)} items, above the limit of {self.max_client_batch} per request",
                field=field,
                limit=self.max_client_batch,
            )
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidInput(f"{field}[{i}] is not a string", field=f"{field}[{i}]", limit="str")
            if not allow_empty and not t.strip():
                raise InvalidInput(f"{field}[{i}] is empty", field=f"{field}[{i}]", limit="non-empty string")
        return list(texts)

    def _prefix(self, model: OnnxModel, prompt_name: str | None, instruction: str | None) -> str:
        if instruction is not None:
            if not isinstance(instruction, str):
                raise InvalidInput("instruction must be a string", field="instruction", limit="str")
            return instruction
        if prompt_name is None:
            return ""
        if prompt_name not in model.prompts:
            raise InvalidInput(
                f"model {model.name!r} has no prompt {prompt_name!r}",
                field="prompt_name",
                limit=sorted(model.prompts),
            )
        return model.prompts[prompt_name]

    @staticmethod
    def _check_dims(model: OnnxModel, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if (
            isinstance(dimensions, bool)
            or not isinstance(dimensions, int)
            or not 1 <= dimensions <= model.dim
        ):
            raise InvalidInput(
                f"dimensions must be an integer in 1..{model.dim} for {model.name!r}",
                field="dimensions",
                limit=model.dim,
            )

    def _prepare(
        self,
        texts: Any,
        model: str | None,
        prompt_name: str | None,
        instruction: str | None,
        dimensions: int | None,
        truncate: bool,
        offline: bool = False,
    ) -> tuple[OnnxModel, list[Encoded]]:
        texts = self._check_texts(texts, offline=offline)
        m = self._model(model, "bi-encoder")
        self._check_dims(m, dimensions)
        prefix = self._prefix(m, prompt_name, instruction)
        items = m.tokenize([prefix + t for t in texts], truncate=truncate, field="input")
        if not offline:
            self._check_tokens(items, "input", self.max_request_tokens)
        return m, items

    @staticmethod
    def _check_tokens(items: list[Encoded], field: str, limit: int) -> None:
        total = sum(len(e) for e in items)
        if total > limit:
            raise TooLarge(
                f"{field} has {total} tokens, above the limit of {limit} per request: split it",
                field=field,
                limit=limit,
            )

    # -- API ----------------------------------------------------------------------------------------
    async def _infer(self, model: OnnxModel, items: list[Encoded], priority: str | None = None) -> np.ndarray:
        if not self.ready:
            raise NotReady("embedder models are still loading", field="model")
        metrics.INPUTS.labels(model.name).inc(len(items))
        metrics.TOKENS.labels(model.name).inc(sum(len(e) for e in items))
        batcher = self._batchers.get(model.name)
        if batcher is not None:
            return await batcher.submit(items, self.priority_for(priority, items))
        # batching off: each request runs on its own (length-sorted), concurrently with the others;
        # priorities need the batcher's queues, so they are checked and otherwise ignored here
        if priority is not None:
            check_priority(priority)
        if self._inflight + len(items) > self.max_queue:
            raise Overloaded(
                f"{self._inflight} inputs in flight; retry later", field="input", limit=self.max_queue
            )
        self._inflight += len(items)
        try:
            return await asyncio.to_thread(
                run_sorted, model.run, items, self.max_batch_size, self.max_batch_tokens
            )
        finally:
            self._inflight -= len(items)

    async def embed(
        self,
        texts: list[str],
        model: str | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> EmbedResult:
        """Embed ``texts``: L2-normalised float32 rows, optionally cut to ``dimensions`` and re-normalised.

        ``priority``: ``interactive`` | ``batch``; None = by size (see :meth:`priority_for`)."""
        if not self.ready:
            raise NotReady("embedder models are still loading", field="model")
        if isinstance(texts, list) and sum(len(t) for t in texts if isinstance(t, str)) > _INLINE_CHARS:
            m, items = await asyncio.to_thread(
                self._prepare, texts, model, prompt_name, instruction, dimensions, truncate
            )
        else:  # short inputs tokenise in microseconds: cheaper than a thread hop
            m, items = self._prepare(texts, model, prompt_name, instruction, dimensions, truncate)
        vecs = await self._infer(m, items, priority)
        return EmbedResult(truncate_dims(vecs, dimensions), [len(e) for e in items], m.name)

    async def rerank(
        self,
        query: str,
        documents: list[str],
        model: str | None = None,
        truncate: bool = True,
        priority: str | None = None,
    ) -> list[float]:
        """Cross-encoder logits for (query, document) pairs, in input order (``priority`` as in embed)."""
        if not self.ready:
            raise NotReady("embedder models are still loading", field="model")
        m, items = await asyncio.to_thread(self._prepare_pairs, query, documents, model, truncate)
        return [float(x) for x in await self._infer(m, items, priority)]

    def _prepare_pairs(
        self, query: Any, documents: Any, model: str | None, truncate: bool, offline: bool = False
    ) -> tuple[OnnxModel, list[Encoded]]:
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query must be a non-empty string", field="query", limit="non-empty string")
        if not offline and isinstance(documents, list | tuple) and len(documents) > self.max_rerank_docs:
            raise TooLarge(
                f"documents has {len(documents)} items, above the limit of {self.max_rerank_docs}",
                field="documents",
                limit=self.max_rerank_docs,
            )
        docs = self._check_texts(documents, field="documents", allow_empty=True, offline=offline)
        m = self._model(model, "cross-encoder")
        items = m.tokenize_pairs(query, docs, truncate=truncate, field="documents")
        if not offline:
            self._check_tokens(items, "documents", self.max_rerank_tokens)
        return m, items

    def count_tokens(self, texts: list[str], model: str | None = None) -> list[int]:
        """Token counts (with special tokens, after truncation) of ``texts``."""
        m = self._model(model, "bi-encoder")
        return [len(e) for e in m.tokenize(texts)]

    def encode(
        self,
        texts: list[str],
        model: str | None = None,
        prompt_name: str | None = None,
        dimensions: int | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Synchronous embedding for offline use (benchmarks, evaluation): no event loop needed."""
        if not self._models:
            self.load()
        m, items = self._prepare(texts, model, prompt_name, None, dimensions, True, offline=True)
        vecs = run_sorted(m.run, items, batch_size or self.max_batch_size, self.max_batch_tokens)
        return truncate_dims(vecs, dimensions)

    def score_pairs(
        self, query: str, documents: list[str], model: str | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Synchronous cross-encoder scores for offline use."""
        if not self._models:
            self.load()
        m, items = self._prepare_pairs(query, documents, model, True, offline=True)
        return run_sorted(m.run, items, batch_size or self.max_batch_size, self.max_batch_tokens)
