"""Judgements made in the playground are a test set for `dowse eval --qrels` (real models, BM25 config)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.judgements import QrelsBook, query_id
from tests.integration.test_search_eval_cli import REPO, make_slice

pytestmark = [pytest.mark.integration]


@pytest.mark.timeout(600)
def test_dowse_eval_judges_by_the_playground_qrels(
    tmp_path: Path, shared_data: Path, model_cache: Path
) -> None:
    ds = tmp_path / "ds"
    make_slice(shared_data, ds, n_queries=4, filler=10)
    queries = [json.loads(x) for x in (ds / "queries.jsonl").read_text().splitlines()]
    rows = [x.split("\t") for x in (ds / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    book = QrelsBook(tmp_path / "data" / "judgements")

    async def judge() -> None:
        for q in queries[:2]:  # two of the four queries judged, as a user would in the playground
            rel = [d for qid, d, _ in rows if qid == q["_id"]]
            await book.judge("sci", q["text"], rel[0], 1)
            await book.judge("sci", q["text"], "not-a-relevant-doc", 0)

    asyncio.run(judge())
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "eval",
        "--dataset",
        str(ds),
        "--qrels",
        str(book.folder("sci")),
    ]
    cmd += [
        "--data-dir",
        str(tmp_path / "d"),
        "--out",
        str(out),
        "--name",
        "j",
        "--folds",
        "2",
        "--config",
        "bm25",
    ]
    env = {"DOWSE_MODEL_CACHE": str(model_cache), "PYTHONPATH": str(REPO)}
    res = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((out / "j.json").read_text())
    assert report["meta"]["queries"] == 2, report["meta"]
    assert 0 < report["results"]["bm25"]["ndcg@10"] <= 1
    assert {query_id(q["text"]) for q in queries[:2]} == set(book.read("sci")[0])
    # a folder without judgements is refused before anything loads
    bad = [*cmd[:7], str(tmp_path / "empty"), *cmd[8:]]
    res = subprocess.run(
        bad, cwd=REPO, env={**os.environ, **env, "COLUMNS": "300"}, capture_output=True, text=True
    )
    assert res.returncode != 0 and "--qrels" in res.stderr + res.stdout
