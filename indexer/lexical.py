"""BM25 through tantivy: one entry per document (title + full text), keyed by the SQLite ``dno``.

Tantivy commits are atomic on disk; ``lexical.seq`` (written after each commit) records a seq the index
reflects *at least*, so replaying SQLite changes after it is idempotent (delete-by-key before add).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tantivy

from indexer.manifest import atomic_write

log = logging.getLogger(__name__)

_NON_ALNUM = re.compile(r"[\W_]+", re.UNICODE)
TERM_SET_MAX = 50_000  # larger filter sets: widen-and-post-filter instead of a term-set clause


def sanitize_query(query: str) -> str:
    """Lowercase, non-alphanumerics to spaces: no query-syntax errors, no AND/OR/NOT operators."""
    return " ".join(_NON_ALNUM.sub(" ", query.lower()).split())


def _analyzer(name: str) -> tantivy.TextAnalyzer:
    """The same token chain as tantivy's built-in tokenizer of that name (``en_stem`` / ``default``)."""
    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
    builder = builder.filter(tantivy.Filter.remove_long(40)).filter(tantivy.Filter.lowercase())
    if name == "en_stem":
        builder = builder.filter(tantivy.Filter.stemmer("english"))
    return builder.build()


def bm25_idf(num_docs: int, doc_freq: int) -> float:
    """Tantivy's (and Lucene's) BM25 idf: ``ln(1 + (N - n + 0.5) / (n + 0.5))``."""
    return math.log(1.0 + (num_docs - doc_freq + 0.5) / (doc_freq + 0.5))


class LexicalIndex:
    """One collection's tantivy index; writes are serialised by the collection's RW lock."""

    def __init__(self, root: Path, analyzer: str = "en_stem", heap_mb: int = 64) -> None:
        self.root = root
        self.analyzer = analyzer
        self.heap_mb = heap_mb
        self._analyze = _analyzer(analyzer)
        root.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        sb = tantivy.SchemaBuilder()
        sb.add_integer_field("dno", stored=True, indexed=True, fast=True)
        sb.add_text_field("body", stored=False, tokenizer_name=self.analyzer)
        self.schema = sb.build()
        self.index = tantivy.Index(self.schema, path=str(self.root), reuse=True)
        self.writer = self.index.writer(heap_size=self.heap_mb * 1024 * 1024, num_threads=1)
        self.index.reload()

    @property
    def seq_path(self) -> Path:
        """Sidecar holding the seq this index reflects at least."""
        return self.root / "lexical.seq"

    def seq(self) -> int:
        """Seq recorded after the last commit (0 = none)."""
        try:
            return int(self.seq_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def apply(self, removed: Sequence[int], docs: Sequence[tuple[int, str, str]], seq: int) -> None:
        """Delete ``removed`` dnos, (re)add ``docs`` (dno, title, text), commit and publish to searchers."""
        for dno in removed:
            self.writer.delete_documents_by_term("dno", int(dno))
        for dno, title, text in docs:
            self.writer.delete_documents_by_term("dno", int(dno))
            self.writer.add_document(
                tantivy.Document(dno=int(dno), body=f"{title}\n{text}" if title else text)
            )
        self.writer.commit()
        self.index.reload()
        atomic_write(self.seq_path, str(seq).encode())

    def reset(self) -> None:
        """Drop every document (before a full rebuild from SQLite)."""
        self.writer.delete_all_documents()
        self.writer.commit()
        self.index.reload()
        atomic_write(self.seq_path, b"0")

    def count(self) -> int:
        """Live documents."""
        return int(self.index.searcher().num_docs)

    def terms(self, query: str) -> list[str] | None:
        """The query's index terms as tantivy's query parser makes them: one per distinct word, in
        order (two words with one stem give that term twice). None when a word splits into several
        tokens (the parser makes a phrase of it)."""
        out: list[str] = []
        for word in dict.fromkeys(sanitize_query(query).split()):
            toks = self._analyze.analyze(word)
            if len(toks) > 1:
                return None
            out.extend(toks)
        return out

    def term_stats(self, query: str) -> dict[str, Any]:
        """This index's share of the collection-wide BM25 statistics of ``query``'s terms."""
        searcher = self.index.searcher()
        terms = self.terms(query) or []
        return {
            "num_docs": int(searcher.num_docs),
            "df": {t: int(searcher.doc_freq("body", t)) for t in dict.fromkeys(terms)},
        }

    def _global_query(
        self, searcher: tantivy.Searcher, text: str, stats: dict[str, Any]
    ) -> tantivy.Query | None:
        """``text`` as OR of its terms, each boosted by collection-wide idf / this shard's idf.

        Tantivy takes its idf from the local index only; a boost per term rescales it to the idf of the
        whole collection (summed ``num_docs`` and document frequencies of every shard), so each shard
        scores as one index holding every document would, but for the average field length, which stays
        the shard's own (the documented residual; measured in bench/shards.py). None: fall back to the
        plain parse (a word the tokenizer splits, i.e. a phrase query).
        """
        terms = self.terms(text)
        if terms is None:
            return None
        n_local = int(searcher.num_docs)
        n_global = int(stats.get("num_docs") or 0)
        df_global: dict[str, Any] = stats.get("df") or {}
        clauses = []
        for t in terms:
            df_local = int(searcher.doc_freq("body", t))
            if df_local == 0:
                continue  # no posting here: the term scores nothing on this shard
            dfg = int(df_global.get(t, df_local))
            boost = bm25_idf(max(n_global, dfg), dfg) / bm25_idf(n_local, df_local)
            term = tantivy.Query.term_query(self.schema, "body", t)
            clauses.append((tantivy.Occur.Should, tantivy.Query.boost_query(term, boost)))
        return tantivy.Query.boolean_query(clauses) if clauses else tantivy.Query.empty_query()

    def search(
        self,
        query: str,
        k: int,
        allowed_dnos: np.ndarray | None = None,
        stats: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (dnos, BM25 scores); ``allowed_dnos`` restricts hits to those documents.

        ``stats`` (``{"num_docs", "df": {term: n}}`` summed over all shards) switches the idf of each term
        to the collection-wide one (see :meth:`_global_query`).
        """
        text = sanitize_query(query)
        if not text or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        searcher = self.index.searcher()
        glob = self._global_query(searcher, text, stats) if stats is not None else None
        parsed = glob if glob is not None else self.index.parse_query(text, ["body"])
        if allowed_dnos is not None and len(allowed_dnos) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if allowed_dnos is not None and len(allowed_dnos) <= TERM_SET_MAX:
            # constant 0 score: the filter clause restricts the set without changing BM25 scores
            terms = tantivy.Query.term_set_query(self.schema, "dno", [int(d) for d in allowed_dnos])
            parsed = tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Must, parsed),
                    (tantivy.Occur.Must, tantivy.Query.const_score_query(terms, 0.0)),
                ]
            )
            return self._run(searcher, parsed, k)
        if allowed_dnos is None:
            return self._run(searcher, parsed, k)
        allowed = set(int(d) for d in allowed_dnos)
        limit = max(4 * k, 100)
        total = searcher.num_docs
        while True:  # widen until k allowed hits or the whole index was scanned
            dnos, scores = self._run(searcher, parsed, limit)
            keep = np.fromiter((int(d) in allowed for d in dnos), bool, len(dnos))
            if keep.sum() >= k or len(dnos) < limit or limit >= total:
                return dnos[keep][:k], scores[keep][:k]
            limit *= 4

    def _run(self, searcher: tantivy.Searcher, query: tantivy.Query, k: int) -> tuple[np.ndarray, np.ndarray]:
        hits = searcher.search(query, limit=k, count=False).hits
        if not hits:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        dnos = searcher.fast_field_values("dno", [addr for _, addr in hits])
        return np.asarray(dnos, np.int64), np.asarray([s for s, _ in hits], np.float32)

    def close(self) -> None:
        """Release the writer lock."""
        try:
            self.writer.wait_merging_threads()
        except Exception:  # the writer may already be consumed
            log.debug("tantivy writer already closed")

    def destroy(self) -> None:
        """Delete the on-disk index (collection deletion)."""
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)
