"""The /ui playground in a real headless Chromium (Debian's, driven by Playwright) against a real
`dowse serve` subprocess holding 200 SciFact documents (abstracts cut at 600 characters): search in four
columns with explain ranks, relevance judging into the qrels file, a cache lookup's decision, a job's
progress, a bad filter's error, the eval results, and a network log in which every request goes to the
server itself.

Screenshots of each view at 1280 px and 390 px go to bench/results/ui/ (DOWSE_UI_SCREENSHOTS overrides).
Chromium comes from `scripts/ensure_chromium.sh` (run by `make test`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

try:  # the dev extra installs it; without it this module fails with a clear message, not a skip
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover
    expect = None

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("DOWSE_UI_SCREENSHOTS", REPO / "bench" / "results" / "ui"))
CHROMIUM = os.environ.get("DOWSE_CHROMIUM", "/usr/bin/chromium")
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
N_DOCS = 200
N_JOB_DOCS = 320  # ingested by a job while the page polls (5 batches of 64)
COLL = "sci"
# abstracts cut to their first ~130 tokens (one chunk each): the test is about the page, and embedding the
# documents is most of its time (200 whole abstracts: 46 s vs 34 s at 1000 characters on the loaded box)
TEXT_CHARS = 600
# the server runs with API keys required (DOWSE_AUTH=required): the page asks for this one and sends it
ADMIN_KEY = "dowse-ui-test-admin-" + "k" * 24
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
UI_WAIT_MS = 90_000  # a search with rerank on the shared, loaded 2-core box: seconds, not minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scifact(shared: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """200 documents (the judged ones of the first queries first), 320 more for the job, 3 queries."""
    sci = shared / "scifact"
    qrels: dict[str, list[str]] = {}
    for line in (sci / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, _ = line.split("\t")
        qrels.setdefault(q, []).append(d)
    queries = [json.loads(x) for x in (sci / "queries.jsonl").read_text().splitlines() if x.strip()]
    queries = [q for q in queries if q["_id"] in qrels][:20]
    wanted = {d for q in queries for d in qrels[q["_id"]]}
    corpus = [json.loads(x) for x in (sci / "corpus.jsonl").read_text().splitlines() if x.strip()]
    rest = [d for d in corpus if d["_id"] not in wanted]
    chosen = [d for d in corpus if d["_id"] in wanted] + rest[: N_DOCS - len(wanted)]
    docs = [
        {"id": d["_id"], "title": d["title"], "text": d["text"][:TEXT_CHARS], "metadata": {"n": i}}
        for i, d in enumerate(chosen)
    ]
    # short texts: the job only has to take a few seconds, in several batches
    more = rest[N_DOCS:][:N_JOB_DOCS]
    job = [{"_id": d["_id"], "title": d["title"], "text": d["text"][:200]} for d in more]
    return docs, job, [q["text"] for q in queries[:3]]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, shared_data: Path, redis_url: str
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ui")
    docs, job_docs, queries = scifact(shared_data)
    data = root / "data"
    (data / "imports").mkdir(parents=True)  # jobs read only under <data_dir>/imports
    job_file = data / "imports" / "more.jsonl"
    bad = [json.dumps({"_id": "no-text", "title": "t"}), "{not json"]  # two records the job reports
    job_file.write_text("".join(json.dumps(d) + "\n" for d in job_docs) + "\n".join(bad) + "\n")
    port = free_port()
    env = {
        **os.environ,
        "DOWSE_MODEL_CACHE": str(model_cache),
        "DOWSE_REDIS_URL": redis_url,
        # generous budgets: the shared 2-core box must not turn the columns degraded
        "DOWSE_EMBED_TIMEOUT_S": "30",
        "DOWSE_RETRIEVE_TIMEOUT_S": "30",
        "DOWSE_RERANK_TIMEOUT_S": "60",
        "DOWSE_SEARCH_TIMEOUT_S": "90",
        "PYTHONPATH": str(REPO),
        "DOWSE_AUTH": "required",  # no key is created in the shared Redis: the admin key is a setting
        "DOWSE_ADMIN_KEY": ADMIN_KEY,
    }
    log = root / "serve.log"
    cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--data-dir", str(data)]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        r = httpx.post(f"{url}/v1/collections", json={"name": COLL}, headers=AUTH, timeout=30)
        assert r.status_code == 201, r.text
        body = {"documents": docs}
        r = httpx.post(f"{url}/v1/collections/{COLL}/documents", json=body, headers=AUTH, timeout=300)
        assert r.status_code == 200, r.text
        yield {"url": url, "data": data, "queries": queries, "job_file": job_file, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def ui(server: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One page for the whole module, with its network log and console errors."""
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).is_file(), "no chromium: run scripts/ensure_chromium.sh"
    assert expect is not None, "playwright is missing: pip install -e '.[dev]'"
    expect.set_options(timeout=30_000)
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        # every page of the context, and every request any of them makes, is watched
        context.on("request", lambda req: requests.append(req.url))

        def new_page(keyed: bool = True) -> Any:
            """A new tab; ``keyed``: as if its user had typed the key already (sessionStorage is per tab)."""
            page = context.new_page()
            if keyed:
                page.add_init_script(f"sessionStorage.setItem('dowse.apiKey', {json.dumps(ADMIN_KEY)})")
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type == "error" and "status of 4" not in msg.text  # expected 4xx answers
                    else None
                ),
            )
            page.set_default_timeout(UI_WAIT_MS)
            return page

        pages = {"page": new_page(keyed=False), "new_page": new_page}
        yield {**pages, "requests": requests, "problems": problems, **server}
        context.close()
        browser.close()


def shoot(page: Any, name: str, full: bool = True) -> None:
    """Screenshots (full page, or the first screen) at both widths, back to the desktop width afterwards."""
    for label, (w, hgt) in WIDTHS.items():
        page.set_viewport_size({"width": w, "height": hgt})
        page.wait_for_timeout(150)  # one layout pass after the resize
        page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=full)
    page.set_viewport_size({"width": 1280, "height": 900})


def search(page: Any, query: str, filters: str = "") -> None:
    page.fill("#q", query)
    page.fill("#filters", filters)
    page.focus("#q")
    page.keyboard.press("Enter")  # Enter searches


def test_search_shows_four_columns_with_explain_ranks(ui: dict[str, Any]) -> None:
    page = ui["page"]
    page.goto(ui["url"] + "/")  # / redirects to the playground, which needs no key itself
    assert urlsplit(page.url).path == "/ui/"
    page.wait_for_selector("#key-form:not([hidden])")  # the API does: the page asks for one
    page.fill("#api-key", ADMIN_KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#collection option[value='sci']", state="attached")
    page.focus("#q")
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["collection", "top-k", "filters", "search-btn"], order
    page.click("summary")  # smaller rerank head: the cross-encoder is the slow part on this CPU
    page.fill("#rerank-top-n", "10")
    query = ui["queries"][0]
    search(page, query)
    for stage in ("bm25", "dense", "hybrid", "rerank"):
        page.wait_for_selector(f".col-{stage}[data-status='ok'] .hit")
    for stage in ("bm25", "dense", "hybrid", "rerank"):
        n = page.locator(f".col-{stage} .hit").count()
        assert n == 10, (stage, n)
        assert not page.locator(f".col-{stage} .banner.warn, .col-{stage} .banner.error").count()
        assert "ms server" in page.inner_text(f".col-{stage} .timings")
    # the hybrid column shows the ranks the API's explain gives, for its first three hits
    body = {"collection": COLL, "query": query, "top_k": 10, "mode": "hybrid", "explain": True}
    api = httpx.post(ui["url"] + "/v1/search", json=body, headers=AUTH, timeout=120).json()
    for i, hit in enumerate(api["hits"][:3]):
        card = page.locator(f".col-hybrid .hit[data-id='{hit['id']}']")
        text = card.inner_text()
        assert card.locator(".pos").inner_text() == str(i + 1)
        for stage, label in (("bm25", "BM25"), ("dense", "Dense"), ("fused", "Fused")):
            if hit["explain"][stage] is not None:
                assert f"{label} #{hit['explain'][stage]['rank']}" in text, (stage, text)
    # no weight given: the served one; at weight 0 the column says the cross-encoder did not run
    body = {**body, "rerank": True, "rerank_top_n": 10}
    served = httpx.post(ui["url"] + "/v1/search", json=body, headers=AUTH, timeout=120).json()
    skipped = served["hits"][0]["explain"]["rerank"].get("skipped")
    note = page.locator(".col-rerank .banner.info")
    assert note.count() == (1 if skipped else 0), page.inner_text(".col-rerank")
    if skipped:
        assert note.inner_text().startswith("Not reranked: weight 0 keeps the fused order")
    # a weight of 0.5: the cross-encoder runs; each hit's rerank rank, and its move against the fused order
    page.fill("#rerank-weight", "0.5")
    search(page, query)
    page.wait_for_selector(".col-rerank[data-status='ok'] .rerank-weight")
    assert page.inner_text(".col-rerank .rerank-weight").startswith("weight 0.5 from request")
    assert "rerank " in page.inner_text(".col-rerank .timings")  # the cross-encoder's own time
    rr = page.locator(".col-rerank .hit").first
    chip = rr.locator(".chip", has_text="Rerank").inner_text()
    assert chip.startswith("Rerank #1 "), chip
    float(chip.split()[-1])  # the cross-encoder's score, a number (a skipped rerank shows none)
    assert page.locator(".col-rerank .move").first.inner_text().endswith(("vs Fused", "= Fused"))
    assert page.locator(".col-bm25 .move").first.inner_text() == "first stage"
    shoot(page, "search")


def test_judging_a_hit_writes_the_qrels_file(ui: dict[str, Any]) -> None:
    from gateway.eval import load_beir
    from services.judgements import query_id

    page = ui["page"]
    query = ui["queries"][0]
    first = page.locator(".col-hybrid .hit").nth(0)
    second = page.locator(".col-hybrid .hit").nth(1)
    rel_id, nrel_id = first.get_attribute("data-id"), second.get_attribute("data-id")
    first.locator("button.judge.rel").click()
    page.wait_for_selector(f".col-hybrid .hit[data-id='{rel_id}'] button.rel[aria-pressed='true']")
    second.locator("button.judge.nrel").click()
    page.wait_for_selector(f".col-hybrid .hit[data-id='{nrel_id}'] button.nrel[aria-pressed='true']")
    # the judged hit is marked in every column that shows it
    assert page.locator(f".hit.judged-rel[data-id='{rel_id}']").count() >= 1
    folder = ui["data"] / "judgements" / COLL
    rows = (folder / "qrels" / "test.tsv").read_text().splitlines()
    qid = query_id(query)
    assert rows[0] == "query-id\tcorpus-id\tscore"
    assert f"{qid}\t{rel_id}\t1" in rows and f"{qid}\t{nrel_id}\t0" in rows
    assert {"_id": qid, "text": query} in [json.loads(x) for x in (folder / "queries.jsonl").open()]
    # the folder is a BEIR qrels set: dowse eval's loader reads it (score 0 = judged not relevant)
    data = load_beir(folder)
    assert data.queries == {qid: query} and data.qrels == {qid: {rel_id: 1}}
    assert "judgement(s) for this query" in page.inner_text("#judge-status")
    shoot(page, "search-judged", full=False)


def test_degraded_and_partial_answers_are_said_in_words(ui: dict[str, Any]) -> None:
    """The server's real answers, with the flags a failing retriever or shard sets, as the page shows them."""
    page = ui["new_page"]()
    flags = {
        "hybrid": {"degraded": "lexical retrieval unavailable (timed out): dense only"},
        "bm25": {"partial": True, "failed_shards": [{"shard": 1, "reason": "timed out"}]},
    }

    def flag(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        answer = route.fetch()
        out = {**answer.json(), **flags.get(body.get("mode"), {})}
        route.fulfill(response=answer, body=json.dumps(out))

    page.route("**/v1/search", flag)
    page.goto(ui["url"] + "/ui/")
    page.wait_for_selector("#collection option[value='sci']", state="attached")
    page.click("summary")
    page.uncheck("#do-rerank")
    search(page, ui["queries"][2])
    page.wait_for_selector(".col-hybrid[data-status='ok'] .banner")
    assert page.inner_text(".col-hybrid .banner").startswith("Dense only: lexical retrieval unavailable")
    assert "Partial answer: some shards did not answer: shard 1 (timed out)" in page.inner_text(".col-bm25")
    page.wait_for_selector(".col-dense[data-status='ok']")
    assert not page.locator(".col-dense .banner").count()
    assert "switched off" in page.inner_text(".col-rerank")
    shoot(page, "search-degraded", full=False)
    page.close()


def test_collection_name_can_be_typed_where_collections_are_not_listed(ui: dict[str, Any]) -> None:
    """A gateway-only origin without the indexer's routes: the picker becomes a text field, search works."""
    page = ui["new_page"]()
    not_found = {"error": {"type": "not_found", "message": "Not Found"}}
    page.route("**/v1/collections", lambda r: r.fulfill(status=404, json=not_found))
    page.goto(ui["url"] + "/ui/")
    page.wait_for_selector("#collection-name:not([hidden])")
    assert page.locator("#collection").is_hidden()
    assert "type a collection name" in page.inner_text("#search-status")
    page.fill("#collection-name", COLL)
    page.click("summary")
    page.uncheck("#do-rerank")
    search(page, ui["queries"][0])
    page.wait_for_selector(".col-hybrid[data-status='ok'] .hit")
    page.close()


def test_bad_filter_shows_a_clear_error(ui: dict[str, Any]) -> None:
    page = ui["page"]
    search(page, ui["queries"][1], '{"n": {"between": [1, 5]}}')
    page.wait_for_selector("#search-error:not([hidden])")
    err = page.inner_text("#search-error")
    assert "422" in err and "filters.n.between" in err and "unknown operator" in err, err
    shoot(page, "search-error")
    search(page, ui["queries"][1], '{"n": ')
    expect(page.locator("#search-error")).to_contain_text("not valid JSON")
    assert page.evaluate("document.activeElement.id") == "filters"  # focus goes to the field to fix


def test_cache_lookup_shows_its_decision(ui: dict[str, Any]) -> None:
    page = ui["page"]
    ns = f"ui-{uuid.uuid4().hex[:8]}"
    try:
        page.goto(ui["url"] + "/ui/#cache")
        page.fill("#ns", ns)
        page.fill("#store-prompt", "How do I reset my password?")
        page.fill("#store-response", "Use Settings > Security > Reset password.")
        page.click("#store-form button")
        expect(page.locator("#store-status")).to_contain_text("Stored as entry")
        page.fill("#lookup-prompt", "how can I reset my password")
        page.click("#lookup-form button")
        badge = page.wait_for_selector("#lookup-result .decision")
        # adaptive, no feedback yet: nothing justifies serving it, a close entry asks for feedback
        assert badge.get_attribute("data-decision") == "explore"
        text = page.inner_text("#lookup-result")
        assert "contrast score" in text and "risk cut" in text and "similarity" in text
        sim = float(page.inner_text("#lookup-result tr:first-child td"))
        assert 0.5 < sim < 1.0, sim
        page.wait_for_selector("#stats-chart svg")
        shoot(page, "cache")
        page.select_option("#lookup-policy", "static")
        page.fill("#lookup-threshold", "0.5")
        page.click("#lookup-form button")
        page.wait_for_selector("#lookup-result .decision[data-decision='exploit']")
        assert "Use Settings > Security" in page.inner_text("#lookup-result")
        assert "threshold 0.5" in page.inner_text("#lookup-result")
        expect(page.locator("#stats-ns")).to_contain_text(ns)
        page.wait_for_selector("#stats-chart polyline")
        shoot(page, "cache-exploit")
    finally:
        httpx.delete(f"{ui['url']}/v1/cache/namespaces/{ns}", headers=AUTH, timeout=10)


def test_job_progress_moves(ui: dict[str, Any]) -> None:
    page = ui["page"]
    page.goto(ui["url"] + "/ui/#collections")
    page.wait_for_selector("#coll-table tr[data-collection='sci']")
    page.select_option("#job-collection", COLL)
    page.fill("#job-path", str(ui["job_file"]))
    page.click("#job-form button")
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        card = page.locator(".job").first  # active jobs sort first
        state = (card.get_attribute("data-status") or "", card.get_attribute("data-done") or "")
        if not seen or seen[-1] != state:
            seen.append(state)
            if state[0] == "running" and len(seen) == 3:
                shoot(page, "collections-running")
        if state[0] in ("completed", "failed"):
            break
        page.wait_for_timeout(150)
    assert seen[-1] == ("completed", str(N_JOB_DOCS + 2)), seen  # records read: 320 indexed, 2 failed
    errors = page.inner_text(".job pre")  # shown in full, open
    assert "text must be a non-empty string" in errors and "invalid JSON" in errors, errors
    done_values = {int(d) for s, d in seen if d}
    assert len(done_values) >= 3, seen  # 0, at least one batch in between, all: the bar moved
    assert any(s == "running" and 0 < int(d) < N_JOB_DOCS for s, d in seen), seen
    expect(page.locator("#coll-table tr[data-collection='sci']")).to_contain_text(str(N_DOCS + N_JOB_DOCS))
    shoot(page, "collections")
    # a file that does not exist: the error is shown in full (it does not say whether the file exists)
    page.fill("#job-path", str(ui["job_file"]) + ".missing")
    page.click("#job-form button")
    page.wait_for_selector("#job-error:not([hidden])")
    assert "422 invalid_input:" in page.inner_text("#job-error")
    assert "not a regular file under an import root" in page.inner_text("#job-error")


def test_eval_view_shows_tables_and_plots(ui: dict[str, Any]) -> None:
    page = ui["page"]
    page.goto(ui["url"] + "/ui/#eval")
    page.wait_for_selector("#eval-body .md table")
    img = page.locator("#eval-body img")
    expect(img).to_be_visible()
    for _ in range(100):  # the plot is fetched as a blob, then decoded
        if img.evaluate("i => i.complete && i.naturalWidth") > 0:
            break
        page.wait_for_timeout(100)
    assert img.evaluate("i => i.naturalWidth") > 0
    assert page.locator("#eval-pick").input_value().endswith("/eval_scifact")
    assert "nDCG@10" in page.inner_text("#eval-body")
    shoot(page, "eval")


def test_api_key_is_asked_for_and_kept_in_session_storage(ui: dict[str, Any]) -> None:
    """Keys required: the page loads without one, its API calls get 401 until the user gives a key."""
    page = ui["new_page"](keyed=False)
    calls: list[tuple[str | None, int]] = []
    page.on(
        "response",
        lambda r: (
            calls.append((r.request.headers.get("authorization"), r.status))
            if "/v1/collections" in r.url
            else None
        ),
    )
    page.goto(ui["url"] + "/ui/")  # the page itself needs no key
    page.wait_for_selector("#key-form:not([hidden])")
    assert "wants an API key" in page.inner_text("#key-message")
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert calls[0] == (None, 401), calls
    wrong = "dowse-wrong-" + "x" * 30
    page.fill("#api-key", wrong)
    with page.expect_response(lambda r: "/v1/collections" in r.url and r.status == 401):
        page.keyboard.press("Enter")
    expect(page.locator("#key-message")).to_be_visible()  # hidden on submit, shown again by the 401
    assert calls[-1] == (f"Bearer {wrong}", 401), calls
    page.fill("#api-key", ADMIN_KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#collection option[value='sci']", state="attached")
    assert calls[-1] == (f"Bearer {ADMIN_KEY}", 200), calls
    assert page.evaluate("sessionStorage.getItem('dowse.apiKey')") == ADMIN_KEY
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    page.click("#key-forget")
    assert page.evaluate("sessionStorage.getItem('dowse.apiKey')") is None
    page.close()


def test_every_request_stays_on_the_server(ui: dict[str, Any]) -> None:
    origin = urlsplit(ui["url"])
    assert len(ui["requests"]) > 20
    elsewhere = [
        u
        for u in ui["requests"]
        if not u.startswith(("data:", f"blob:{ui['url']}/")) and urlsplit(u)[:2] != origin[:2]
    ]
    assert not elsewhere, elsewhere
    assert not ui["problems"], ui["problems"]
    csp = httpx.get(ui["url"] + "/ui/", timeout=10).headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
