"""Model registry: presets resolved offline, aliases, sentence-transformers folders, unknown names."""

from __future__ import annotations

import pytest

from embedder.errors import InvalidInput
from embedder.registry import BGE_QUERY_PROMPT, PRESETS, UnknownModel, canonical_name, resolve, slug


def test_presets_resolve_to_packaged_files() -> None:
    mini = resolve("minilm")
    assert (mini.path / "model.safetensors").is_file()
    assert (mini.kind, mini.pooling, mini.dim, mini.max_length) == ("bi-encoder", "mean", 384, 256)
    bge = resolve("bge-small")
    assert (bge.path / "model.onnx").is_file() and (bge.path / "tokenizer.json").is_file()
    assert (bge.pooling, bge.dim, bge.max_length) == ("cls", 384, 512)
    assert bge.prompts["query"] == BGE_QUERY_PROMPT and bge.prompts["passage"] == ""
    ce = resolve("ms-marco-l12")
    assert ce.kind == "cross-encoder" and (ce.path / "model.onnx").is_file()
    assert set(PRESETS) == {"minilm", "bge-small", "ms-marco-l12"}


def test_aliases_fold_to_presets() -> None:
    assert canonical_name("sentence-transformers/all-MiniLM-L6-v2") == "minilm"
    assert canonical_name("BAAI/bge-small-en") == "bge-small"
    assert canonical_name("MiniLM") == "minilm"
    assert canonical_name("/some/path") == "/some/path"


def test_sentence_transformers_directory_is_a_model() -> None:
    folder = resolve("minilm").path
    spec = resolve(str(folder))
    assert spec.kind == "bi-encoder" and spec.source == "sentence-transformers"
    assert (spec.pooling, spec.dim, spec.max_length, spec.normalize) == ("mean", 384, 256, True)
    assert slug(spec).startswith("dir-") and "/" not in slug(spec)


def test_unknown_model_is_invalid_input_naming_field_and_choices(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownModel) as err:
        resolve("no-such-model")
    assert isinstance(err.value, InvalidInput)
    assert err.value.field == "model" and err.value.limit == sorted(PRESETS)
    with pytest.raises(UnknownModel):
        resolve(str(tmp_path))  # a folder without config.json
