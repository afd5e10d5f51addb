"""One exported model on ONNX Runtime: tokenise, pad per batch, run, pool (numpy), normalise.

No torch here: this is the serving path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import InvalidInput, TooLarge

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Token ids of one input (or one query/document pair), already truncated."""

    ids: list[int]
    type_ids: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def available_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device``: CUDA first when available (auto/cuda), CPU always last."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidInput(f"unknown device {device!r}", field="device", limit=["auto", "cpu", "cuda"])
    if device == "cuda" and "CUDAExecutionProvider" not in have:
        raise InvalidInput(
            "device=cuda but onnxruntime has no CUDAExecutionProvider (install the 'gpu' extra)",
            field="device",
            limit=have,
        )
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """A loaded model: ``tokenize`` / ``tokenize_pairs`` then ``run`` on lists of :class:`Encoded`."""

    def __init__(
        self,
        model_dir: Path,
        precision: str = "int8",
        device: str = "auto",
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
        max_length: int | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.dir = Path(model_dir)
        self.manifest: dict[str, Any] = json.loads((self.dir / "manifest.json").read_text())
        files = self.manifest["files"]
        if precision not in files:
            raise InvalidInput(
                f"precision {precision!r} not exported", field="precision", limit=sorted(files)
            )
        self.precision = precision
        self.file = files[precision]
        self.name: str = self.manifest["name"]
        self.kind: str = self.manifest["kind"]
        self.pooling: str = self.manifest["pooling"]
        self.normalize: bool = bool(self.manifest["normalize"])
        self.dim: int = int(self.manifest["dim"])
        self.max_length: int = int(self.manifest["max_length"])
        if max_length is not None:  # serve-time cap (e.g. the cross-encoder's 256-token default)
            if max_length < 8:
                raise InvalidInput("max_length must be >= 8", field="max_length", limit=8)
            self.max_length = min(self.max_length, max_length)
        self.prompts: dict[str, str] = dict(self.manifest.get("prompts") or {})
        self.revision: str = self.manifest["source_hash"]

        self._tok = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tok_trunc = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        self._tok_trunc.no_padding()
        self._tok_trunc.enable_truncation(self.max_length, strategy="longest_first")
        self.pad_id = self._tok.token_to_id("[PAD]") or 0

        opts = ort.SessionOptions()
        if intra_op_threads > 0:
            opts.intra_op_num_threads = intra_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not allow_spinning:  # idle ORT threads would busy-wait on cores the event loop needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.providers = available_providers(device)
        self.session = ort.InferenceSession(str(self.dir / self.file), opts, providers=self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        log.info("loaded %s (%s, %s) on %s", self.name, precision, self.file, self.session.get_providers())

    # -- tokenisation -------------------------------------------------------------------------------
    def _check_len(self, encs: list[Any], truncate: bool, field: str) -> list[Encoded]:
        out = []
        for i, e in enumerate(encs):
            if not truncate and len(e.ids) > self.max_length:
                raise TooLarge(
                    f"{field}[{i}] has {len(e.ids)} tokens, above the model's max of {self.max_length} "
                    "(send truncate=true to cut it)",
                    field=f"{field}[{i}]" if len(encs) > 1 else field,
                    limit=self.max_length,
                )
            out.append(Encoded(list(e.ids), list(e.type_ids)))
        return out

    def tokenize(self, texts: list[str], truncate: bool = True, field: str = "input") -> list[Encoded]:
        """Token ids per text (special tokens added); over-long inputs are cut or raise TooLarge."""
        tok = self._tok_trunc if truncate else self._tok
        return self._check_len(tok.encode_batch(texts), truncate, field)

    def tokenize_pairs(
        self, query: str, documents: list[str], truncate: bool = True, field: str = "documents"
    ) -> list[Encoded]:
        """Token ids of (query, document) pairs for the cross-encoder."""
        tok = self._tok_trunc if truncate else self._tok
        return self._check_len(tok.encode_batch([(query, d) for d in documents]), truncate, field)

    # -- inference ----------------------------------------------------------------------------------
    def feeds(self, batch: list[Encoded]) -> dict[str, np.ndarray]:
        """Pad ``batch`` to its longest member and build the ONNX inputs."""
        n, t = len(batch), max(len(e) for e in batch)
        ids = np.full((n, t), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, t), dtype=np.int64)
        types = np.zeros((n, t), dtype=np.int64)
        for k, e in enumerate(batch):
            m = len(e)
            ids[k, :m] = e.ids
            mask[k, :m] = 1
            types[k, :m] = e.type_ids
        all_feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: all_feeds[name] for name in self.input_names}

    def run(self, batch: list[Encoded]) -> np.ndarray:
        """Full-dimension L2-normalised vectors (bi-encoder) or logits[:, 0] (cross-encoder)."""
        if not batch:
            return np.zeros((0, self.dim) if self.kind == "bi-encoder" else (0,), dtype=np.float32)
        feeds = self.feeds(batch)
        out = self.session.run([self.output_name], feeds)[0]
        if self.kind == "cross-encoder":
            return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)[:, 0].copy()
        return pool(np.asarray(out, dtype=np.float32), feeds["attention_mask"], self.pooling, self.normalize)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool = True) -> np.ndarray:
    """Mean (masked) or CLS pooling of ``hidden`` [n, t, h], then optional L2 normalisation."""
    if pooling == "cls":
        vec = hidden[:, 0, :]
    elif pooling == "mean":
        m = mask.astype(np.float32)[:, :, None]
        vec = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    vec = np.ascontiguousarray(vec, dtype=np.float32)
    if normalize:
        vec = l2_normalize(vec)
    return vec


def l2_normalize(vec: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vec, axis=1, keepdims=True)
    return (vec / np.clip(norms, 1e-12, None)).astype(np.float32)


def truncate_dims(vec: np.ndarray, dims: int | None) -> np.ndarray:
    """Matryoshka-style: keep the first ``dims`` components, then re-normalise."""
    if dims is None or dims >= vec.shape[1]:
        return vec
    return l2_normalize(vec[:, :dims])
