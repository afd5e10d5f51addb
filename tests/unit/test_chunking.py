"""Token-aware chunking: windows respect the token budget (title included), overlap, and cover the text."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedder.registry import resolve
from indexer.chunking import SPECIAL_TOKENS, Chunker, passage_text, regex_offsets, tokenizer_offsets


@pytest.fixture(scope="module")
def minilm_offsets():  # type: ignore[no-untyped-def]
    return tokenizer_offsets(str(Path(resolve("minilm").path) / "tokenizer.json"))


def test_short_text_is_one_chunk() -> None:
    chunks = Chunker(64, 8).split("Title", "a short text.")
    assert [(c.start, c.end, c.text) for c in chunks] == [(0, 13, "a short text.")]


def test_long_text_windows_overlap_and_cover(minilm_offsets) -> None:  # type: ignore[no-untyped-def]
    title = "Effects of vitamin D on bone density"
    text = " ".join(f"sentence{i} about calcium, bones and supplementation." for i in range(120))
    chunker = Chunker(128, 16, minilm_offsets)
    chunks = chunker.split(title, text)
    assert len(chunks) > 3
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start < a.end, "consecutive chunks must overlap"
        assert b.start > a.start
    for c in chunks:
        n_tokens = len(minilm_offsets(passage_text(title, c.text)))
        # title + newline + chunk re-tokenised: word pieces may merge at the seam, so allow 1 token of slack
        assert n_tokens + SPECIAL_TOKENS <= 128 + 1, n_tokens
        assert c.text == text[c.start : c.end]


def test_long_title_keeps_half_the_window() -> None:
    chunker = Chunker(32, 4, regex_offsets)
    chunks = chunker.split(" ".join(["t"] * 100), " ".join(["w"] * 100))
    assert all(len(regex_offsets(c.text)) == 16 for c in chunks[:-1])


@pytest.mark.parametrize(("max_tokens", "overlap"), [(8, 0), (64, 32), (64, -1)])
def test_bad_parameters(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        Chunker(max_tokens, overlap)
