"""Token-aware chunking with overlap; the document title is prepended to every chunk's embedded text."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

# (start_char, end_char) of each token of a text, special tokens excluded
Offsets = Callable[[str], list[tuple[int, int]]]
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
SPECIAL_TOKENS = 2  # [CLS] ... [SEP] added by BERT-style tokenizers


@dataclass(frozen=True)
class Chunk:
    """One passage of a document: ``text`` is the slice ``[start, end)`` of the document text."""

    chunk_no: int
    start: int
    end: int
    text: str


def regex_offsets(text: str) -> list[tuple[int, int]]:
    """Fallback tokenizer: words and punctuation (under-counts word pieces by ~20-30%)."""
    return [m.span() for m in _WORD.finditer(text)]


@lru_cache(maxsize=8)
def tokenizer_offsets(tokenizer_json: str) -> Offsets:
    """Offsets function of a Hugging Face ``tokenizer.json`` (no truncation, no padding, no specials)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()

    def offsets(text: str) -> list[tuple[int, int]]:
        enc = tok.encode(text, add_special_tokens=False)
        return [(int(a), int(b)) for a, b in enc.offsets]

    return offsets


def offsets_for_model(model: str) -> Offsets:
    """The model's own tokenizer when its files are found, else the regex fallback."""
    try:
        from embedder.registry import resolve

        path = Path(resolve(model).path) / "tokenizer.json"
        if path.is_file():
            return tokenizer_offsets(str(path))
    except Exception as exc:  # the registry raises typed errors for unknown / missing models
        log.warning("no tokenizer for %s (%s): chunking with the regex tokenizer", model, exc)
    return regex_offsets


class Chunker:
    """Split texts into windows of at most ``max_tokens`` (title included) with ``overlap`` tokens shared."""

    def __init__(self, max_tokens: int, overlap: int, offsets: Offsets = regex_offsets) -> None:
        if max_tokens < 16:
            raise ValueError("max_tokens must be >= 16")
        if not 0 <= overlap < max_tokens // 2:
            raise ValueError("overlap must be in [0, max_tokens / 2)")
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.offsets = offsets

    def split(self, title: str, text: str) -> list[Chunk]:
        """Chunks of ``text``; a text that fits (with its title) is one chunk."""
        title_tokens = len(self.offsets(title)) if title else 0
        # leave at least half the window for the body even with a very long title
        budget = max(self.max_tokens // 2, self.max_tokens - SPECIAL_TOKENS - title_tokens)
        spans = self.offsets(text)
        if len(spans) <= budget:
            return [Chunk(0, 0, len(text), text)]
        overlap = min(self.overlap, budget // 2)
        step = budget - overlap
        chunks: list[Chunk] = []
        first = 0
        while True:
            last = min(first + budget, len(spans)) - 1
            start = 0 if first == 0 else spans[first][0]
            end = len(text) if last == len(spans) - 1 else spans[last][1]
            chunks.append(Chunk(len(chunks), start, end, text[start:end]))
            if last == len(spans) - 1:
                break
            first += step
        return chunks


def passage_text(title: str, chunk_text: str) -> str:
    """What gets embedded for a chunk: title, newline, chunk (document-aware passages)."""
    return f"{title}\n{chunk_text}" if title else chunk_text
