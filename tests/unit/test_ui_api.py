"""The playground's own routes: static files (no traversal, CSP), judgements into BEIR qrels, result files."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from embedder.errors import NotFound
from gateway.eval import load_beir
from services import ui_api
from services.errors import install_error_handlers
from services.judgements import query_id


class FakeIndexer:
    """Knows one collection, ``sci``."""

    async def collection_info(self, name: str) -> dict[str, Any]:
        if name != "sci":
            raise NotFound(f"no collection {name!r}", field="collection")
        return {"name": name}


def build_app(tmp_path: Path) -> FastAPI:
    """The playground routes over ``tmp_path`` (data dir, one results folder, one absent folder)."""
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    (results / "eval_x.md").write_text("# t\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (results / "eval_x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (results / "secret.txt").write_text("no")
    settings = SimpleNamespace(data_dir=tmp_path / "data", results_dirs=[results, tmp_path / "absent"])
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(ui_api.router)
    app.state.indexer_client = FakeIndexer()
    asyncio.run(ui_api.start(app, settings))
    return app


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    with TestClient(build_app(tmp_path), follow_redirects=False) as c:
        yield c, tmp_path


def test_front_page_redirects_and_static_files_carry_the_csp(client: tuple[TestClient, Path]) -> None:
    c, _ = client
    for path in ("/", "/ui"):
        r = c.get(path)
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
    r = c.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert '<script type="module" src="main.js">' in r.text
    for name in ("main.js", "search.js", "api.js", "ops.js", "cache.js", "eval.js", "style.css"):
        assert c.get(f"/ui/{name}").status_code == 200, name
    assert c.get("/ui/main.js").headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path", ["/ui/../ui_api.py", "/ui/%2e%2e/ui_api.py", "/ui/nothing.js", "/ui/..%2fapp.py"]
)
def test_no_file_outside_the_ui_folder(client: tuple[TestClient, Path], path: str) -> None:
    c, _ = client
    r = c.get(path)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_page_loads_nothing_from_another_host() -> None:
    # every src/href in the static files is relative or a data: URL; no http(s):// anywhere in them
    for f in ui_api.UI_DIR.iterdir():
        text = f.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, f


def test_judgements_are_a_beir_qrels_folder(client: tuple[TestClient, Path]) -> None:
    c, tmp = client
    body = {"collection": "sci", "query": "vitamin d and bones", "doc_id": "d1", "relevance": 1}
    r = c.post("/v1/judgements", json=body)
    assert r.status_code == 200, r.text
    qid = query_id("vitamin d and bones")
    assert r.json()["judgements"] == {"d1": 1} and r.json()["query_id"] == qid
    c.post("/v1/judgements", json={**body, "doc_id": "d2", "relevance": 0})
    c.post("/v1/judgements", json={**body, "query": "  vitamin d and bones ", "doc_id": "d3", "relevance": 2})
    c.post("/v1/judgements", json={**body, "query": "other", "doc_id": "d9", "relevance": 1})
    c.post("/v1/judgements", json={**body, "query": "other", "doc_id": "d9", "relevance": None})  # withdrawn
    folder = tmp / "data" / "judgements" / "sci"
    rows = (folder / "qrels" / "test.tsv").read_text().splitlines()
    assert rows == ["query-id\tcorpus-id\tscore", f"{qid}\td1\t1", f"{qid}\td2\t0", f"{qid}\td3\t2"]
    assert [json.loads(x) for x in (folder / "queries.jsonl").open()] == [
        {"_id": qid, "text": "vitamin d and bones"}
    ]
    data = load_beir(folder)  # what dowse eval --qrels reads
    assert data.queries == {qid: "vitamin d and bones"} and data.qrels == {qid: {"d1": 1, "d3": 2}}
    got = c.get("/v1/judgements/sci", params={"query": "vitamin d and bones"}).json()
    assert got["queries"] == [
        {"id": qid, "text": "vitamin d and bones", "judgements": {"d1": 1, "d2": 0, "d3": 2}}
    ]
    assert c.get("/v1/judgements/sci", params={"query": "never"}).json()["queries"] == []


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"collection": "nope"}, 404, "collection"),
        ({"collection": "bad/name"}, 422, "collection"),
        ({"doc_id": "a\tb"}, 422, "doc_id"),
        ({"doc_id": ""}, 422, "doc_id"),
        ({"query": "   "}, 422, "query"),
        ({"query": "x" * 5000}, 422, "query"),
        ({"relevance": 7}, 422, "relevance"),
        ({"extra": 1}, 422, "extra"),
    ],
)
def test_bad_judgements_name_the_field(
    client: tuple[TestClient, Path], change: dict[str, Any], status: int, field: str
) -> None:
    c, _ = client
    body = {"collection": "sci", "query": "q", "doc_id": "d1", "relevance": 1, **change}
    r = c.post("/v1/judgements", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field


def test_result_files_are_listed_and_served_read_only(client: tuple[TestClient, Path]) -> None:
    c, tmp = client
    listing = c.get("/v1/eval/results").json()
    names = sorted(f["name"] for f in listing["files"])
    assert names == ["eval_x.md", "eval_x.png"]  # .txt is not a result type
    assert listing["folders"] == [str(tmp / "results"), str(tmp / "absent")]
    r = c.get("/v1/eval/results/r0/eval_x.md")
    assert (
        r.status_code == 200
        and r.headers["content-type"].startswith("text/markdown")
        and "| 1 | 2 |" in r.text
    )
    assert c.get("/v1/eval/results/r0/eval_x.png").headers["content-type"] == "image/png"
    for bad in ("r0/secret.txt", "r5/eval_x.md", "x/eval_x.md", "r0/..%2fdata", "r0/missing.md"):
        assert c.get(f"/v1/eval/results/{bad}").status_code == 404, bad


_FUZZ_DIR = tempfile.TemporaryDirectory()  # removed at interpreter exit
schema = schemathesis.openapi.from_asgi("/openapi.json", build_app(Path(_FUZZ_DIR.name)))


@schema.include(path_regex="^/v1/(judgements|eval)").parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_playground_routes_never_5xx(case: Any) -> None:
    """Schemathesis bodies and paths for the judgement and result routes: never a 5xx, errors shaped."""
    response = case.call()
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        err = response.json()["error"]
        assert err["type"] and err["message"]
