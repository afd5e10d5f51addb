// Search view: four columns (BM25, dense, hybrid, hybrid + rerank) answered by POST /v1/search with
// explain, every hit with its rank and score in every stage, movement against the first stage, and
// relevance judging into the collection's qrels (POST /v1/judgements).
import { ApiError, api, fmt, h, showError } from "./api.js";

const STAGES = [
  { key: "bm25", title: "BM25", body: { mode: "bm25" }, ref: null, note: "first stage (lexical)" },
  { key: "dense", title: "Dense", body: { mode: "dense" }, ref: "bm25", note: "first stage (vectors); moves vs BM25" },
  { key: "hybrid", title: "Hybrid", body: { mode: "hybrid" }, ref: "bm25", note: "BM25 + dense fused; moves vs BM25" },
  { key: "rerank", title: "Hybrid + rerank", body: { mode: "hybrid", rerank: true }, ref: "fused", note: "cross-encoder over the fused head; moves vs fused" },
];
const TIMING_ORDER = ["collection", "bm25", "embed", "dense", "retrieve", "fusion", "rerank", "fetch"];
const STAGE_LABEL = { bm25: "BM25", dense: "Dense", fused: "Fused", rerank: "Rerank" };

let els = {};
let state = { gen: 0, query: "", collection: "", topK: 10, stages: {}, judgements: {}, qrelsPath: "" };

export function initSearch() {
  els = {
    form: document.getElementById("search-form"),
    q: document.getElementById("q"),
    collection: document.getElementById("collection"),
    collectionName: document.getElementById("collection-name"),
    topK: document.getElementById("top-k"),
    filters: document.getElementById("filters"),
    error: document.getElementById("search-error"),
    status: document.getElementById("search-status"),
    judge: document.getElementById("judge-status"),
    columns: document.getElementById("columns"),
    jump: document.getElementById("col-jump"),
  };
  // narrow screens show one column at a time: buttons jump between them
  els.jump.replaceChildren(...STAGES.map((st, i) => h("button", {
    type: "button",
    "aria-current": i === 0 ? "true" : "false",
    onclick: () => {
      const col = els.columns.querySelector(`.col-${st.key}`);
      els.columns.scrollTo({ left: col.offsetLeft, behavior: "smooth" });
    },
  }, st.title)));
  els.columns.addEventListener("scroll", () => {
    const cols = [...els.columns.children];
    const x = els.columns.scrollLeft;
    let best = 0;
    cols.forEach((c, i) => { if (Math.abs(c.offsetLeft - x) < Math.abs(cols[best].offsetLeft - x)) best = i; });
    [...els.jump.children].forEach((b, i) => b.setAttribute("aria-current", i === best ? "true" : "false"));
  }, { passive: true });
  els.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    runSearch();
  });
  els.columns.addEventListener("mouseover", (ev) => highlight(ev.target, true));
  els.columns.addEventListener("mouseout", (ev) => highlight(ev.target, false));
  els.columns.addEventListener("focusin", (ev) => highlight(ev.target, true));
  els.columns.addEventListener("focusout", (ev) => highlight(ev.target, false));
  renderColumns();
}

function highlight(target, on) {
  const hit = target.closest && target.closest(".hit");
  if (!hit) return;
  for (const el of els.columns.querySelectorAll(`.hit[data-id="${CSS.escape(hit.dataset.id)}"]`)) {
    el.classList.toggle("same", on);
  }
}

function numberOrUndefined(id) {
  const v = document.getElementById(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function readForm() {
  const query = els.q.value;
  if (!query.trim()) throw new Error("Type a query first.");
  const collection = els.collection.hidden ? els.collectionName.value.trim() : els.collection.value;
  if (!collection) throw new Error("No collection to search: create or index one first.");
  let filters;
  const raw = els.filters.value.trim();
  if (raw) {
    try {
      filters = JSON.parse(raw);
    } catch (exc) {
      els.filters.focus();
      throw new Error(`Filters are not valid JSON: ${exc.message}`);
    }
    if (filters === null || typeof filters !== "object" || Array.isArray(filters)) {
      els.filters.focus();
      throw new Error('Filters must be a JSON object, e.g. {"year": {"gte": 2010}}.');
    }
  }
  const common = {
    collection,
    query,
    top_k: numberOrUndefined("top-k") ?? 10,
    fusion: document.getElementById("fusion").value,
    alpha: numberOrUndefined("alpha"),
    candidates: numberOrUndefined("candidates"),
    filters,
    explain: true,
  };
  const rerank = {
    rerank_top_n: numberOrUndefined("rerank-top-n"),
    rerank_weight: numberOrUndefined("rerank-weight"),
  };
  return { common, rerank, withRerank: document.getElementById("do-rerank").checked };
}

export async function runSearch() {
  let form;
  try {
    form = readForm();
  } catch (exc) {
    showError(els.error, exc);
    return;
  }
  showError(els.error, null);
  els.judge.textContent = "";
  const gen = ++state.gen;
  state = { gen, query: form.common.query, collection: form.common.collection, topK: form.common.top_k, stages: {}, judgements: {}, qrelsPath: "" };
  const t0 = performance.now();
  const jobs = STAGES.map(async (st) => {
    if (st.key === "rerank" && !form.withRerank) {
      state.stages[st.key] = { status: "off" };
      return;
    }
    state.stages[st.key] = { status: "pending" };
    const body = { ...form.common, ...st.body, ...(st.key === "rerank" ? form.rerank : {}) };
    const started = performance.now();
    try {
      const resp = await api("/v1/search", { method: "POST", body });
      if (gen !== state.gen) return;
      state.stages[st.key] = { status: "ok", resp, ms: performance.now() - started };
    } catch (error) {
      if (gen !== state.gen) return;
      state.stages[st.key] = { status: "error", error, ms: performance.now() - started };
    }
    renderColumns();
  });
  els.status.textContent = "Searching…";
  renderColumns();
  loadJudgements(gen);
  await Promise.all(jobs);
  if (gen !== state.gen) return;
  const errors = Object.values(state.stages).filter((s) => s.status === "error");
  const answered = Object.values(state.stages).filter((s) => s.status === "ok").length;
  if (errors.length && errors.length === answered + errors.length) {
    const first = errors[0].error;
    const same = errors.every((e) => e.error instanceof ApiError && e.error.describe() === first.describe?.());
    showError(els.error, same ? new Error(`The search was refused: ${first.describe ? first.describe() : first}`) : first);
    state.refused = same;
    renderColumns();
  }
  els.status.textContent = `${answered} of ${STAGES.length} columns answered in ${Math.round(performance.now() - t0)} ms.`;
}

async function loadJudgements(gen) {
  try {
    const path = `/v1/judgements/${encodeURIComponent(state.collection)}?query=${encodeURIComponent(state.query)}`;
    const res = await api(path);
    if (gen !== state.gen) return;
    state.judgements = res.queries.length ? { ...res.queries[0].judgements } : {};
    state.qrelsPath = res.path;
    renderColumns();
  } catch {
    // judging then simply starts from nothing; the column errors say what is wrong with the search
  }
}

// Every stage's rank and score of each document, merged from the explain data of all columns.
function profiles() {
  const prof = new Map();
  const absent = new Map();
  const get = (m, id) => m.get(id) || m.set(id, {}).get(id);
  for (const st of STAGES) {
    const s = state.stages[st.key];
    if (!s || s.status !== "ok") continue;
    const bothRan = st.body.mode === "hybrid" && !s.resp.degraded;
    s.resp.hits.forEach((hit, i) => {
      const p = get(prof, hit.id);
      const ex = hit.explain || {};
      for (const stage of ["bm25", "dense"]) {
        if (ex[stage]) p[stage] = ex[stage];
        else if (bothRan) get(absent, hit.id)[stage] = true;
      }
      // a one-retriever answer's "fused" list is that retriever's own list: not a fusion rank
      if (ex.fused && st.body.mode === "hybrid" && !["bm25", "dense"].includes(ex.fused.method)) p.fused = ex.fused;
      if (ex.rerank && ex.rerank.score !== null && ex.rerank.score !== undefined) p.rerank = { ...ex.rerank, rank: i + 1 };
    });
  }
  return { prof, absent };
}

function rankChips(id, merged) {
  const p = merged.prof.get(id) || {};
  const a = merged.absent.get(id) || {};
  return ["bm25", "dense", "fused", "rerank"].map((stage) => {
    const v = p[stage];
    if (v) {
      const score = stage === "rerank" ? v.score : v.score;
      return h("span", { class: "chip", title: `${STAGE_LABEL[stage]} rank ${v.rank}, score ${score}` },
        h("b", {}, STAGE_LABEL[stage]), ` #${v.rank} `, h("span", { class: "muted" }, fmt(score, 3)));
    }
    if (a[stage]) return h("span", { class: "chip absent", title: `not among ${STAGE_LABEL[stage]}'s candidates` }, h("b", {}, STAGE_LABEL[stage]), " —");
    return h("span", { class: "chip unknown", title: "not known from the columns shown" }, h("b", {}, STAGE_LABEL[stage]), " n/a");
  });
}

function movement(st, id, position, merged) {
  if (!st.ref) return h("span", { class: "move first" }, "first stage");
  const ref = (merged.prof.get(id) || {})[st.ref];
  const label = STAGE_LABEL[st.ref];
  if (!ref) {
    const gone = (merged.absent.get(id) || {})[st.ref];
    return gone ? h("span", { class: "move up", title: `not in ${label}'s candidates` }, `new vs ${label}`) : null;
  }
  const d = ref.rank - position;
  if (d > 0) return h("span", { class: "move up", title: `${label} rank ${ref.rank}` }, `▲ ${d} vs ${label}`);
  if (d < 0) return h("span", { class: "move down", title: `${label} rank ${ref.rank}` }, `▼ ${-d} vs ${label}`);
  return h("span", { class: "move same", title: `${label} rank ${ref.rank}` }, `= ${label}`);
}

function snippet(text) {
  const t = (text || "").replace(/\s+/g, " ").trim();
  return t.length > 260 ? `${t.slice(0, 260)}…` : t;
}

function judgeButtons(id) {
  const rel = state.judgements[id];
  const mk = (value, label, cls) =>
    h("button", {
      type: "button",
      class: `judge ${cls}`,
      "aria-pressed": rel === value ? "true" : "false",
      "aria-label": `${label}: ${id}`,
      onclick: () => judge(id, rel === value ? null : value),
    }, label);
  return h("span", { class: "judges" }, mk(1, "Relevant", "rel"), mk(0, "Not relevant", "nrel"));
}

async function judge(docId, relevance) {
  const gen = state.gen;
  try {
    const res = await api("/v1/judgements", {
      method: "POST",
      body: { collection: state.collection, query: state.query, doc_id: docId, relevance },
    });
    if (gen !== state.gen) return;
    state.judgements = { ...res.judgements };
    state.qrelsPath = res.path;
    const what = relevance === null ? "withdrawn" : relevance > 0 ? "relevant" : "not relevant";
    els.judge.textContent = `Judged ${docId} ${what} for query ${res.query_id}; ${Object.keys(res.judgements).length} judgement(s) for this query in ${res.path}.`;
    renderColumns();
  } catch (error) {
    els.judge.textContent = `Judgement not saved: ${error.describe ? error.describe() : error.message}`;
  }
}

// The rerank column's weight, where it came from (request, eval, setting, default), and whether the
// cross-encoder ran at all (a served weight of 0 keeps the fused order without calling it).
function rerankNote(resp) {
  const ex = (resp.hits[0] || {}).explain || {};
  const rr = ex.rerank;
  if (!rr) return null;
  const src = rr.weight_source ? ` from ${rr.weight_source}` : "";
  if (rr.skipped) {
    return h("p", { class: "banner info" }, h("b", {}, "Not reranked: "),
      `${rr.skipped} (weight ${fmt(rr.weight)}${src}). Set a rerank weight in Options to run the cross-encoder.`);
  }
  return h("p", { class: "muted small rerank-weight" }, `weight ${fmt(rr.weight)}${src}: (1 − w) × first stage + w × cross-encoder`);
}

function banner(resp) {
  const out = [];
  if (resp.partial) {
    const shards = (resp.failed_shards || []).map((f) => `shard ${f.shard} (${f.reason})`).join(", ");
    out.push(h("p", { class: "banner warn" }, h("b", {}, "Partial answer: "), `some shards did not answer${shards ? `: ${shards}` : ""}.`));
  }
  if (resp.degraded) {
    const note = String(resp.degraded);
    let head = "Degraded: ";
    if (/dense only/.test(note)) head = "Dense only: ";
    else if (/bm25 only/.test(note)) head = "BM25 only: ";
    else if (/rerank skipped/.test(note)) head = "Not reranked: ";
    out.push(h("p", { class: "banner warn" }, h("b", {}, head), note));
  }
  return out;
}

function timings(resp, ms) {
  const t = resp.timings_ms || {};
  const keys = TIMING_ORDER.filter((k) => k in t).concat(Object.keys(t).filter((k) => !TIMING_ORDER.includes(k) && k !== "total"));
  return h("p", { class: "timings" },
    h("b", {}, `${fmt(t.total, 1)} ms`), ` server · ${Math.round(ms)} ms round trip`, h("br"),
    keys.map((k, i) => [i ? " · " : "", h("span", { class: "timing" }, `${k} ${fmt(t[k], 1)}`)]));
}

function column(st, merged) {
  const s = state.stages[st.key] || { status: "idle" };
  const head = h("header", { class: "col-head" }, h("h2", {}, st.title), h("p", { class: "muted small" }, st.note));
  const body = [];
  if (s.status === "idle") body.push(h("p", { class: "muted" }, "Type a query and press Enter."));
  else if (s.status === "off") body.push(h("p", { class: "muted" }, "Rerank column switched off in Options."));
  else if (s.status === "pending") body.push(h("p", { class: "muted pending" }, st.key === "rerank" ? "Reranking…" : "Searching…"));
  else if (s.status === "error" && state.refused) body.push(h("p", { class: "muted" }, "Refused: see the error above."));
  else if (s.status === "error") body.push(h("p", { class: "banner error" }, s.error.describe ? s.error.describe() : String(s.error)));
  else {
    head.append(timings(s.resp, s.ms));
    if (st.key === "rerank") {
      const note = rerankNote(s.resp);
      if (note) body.push(note);
    }
    body.push(...banner(s.resp));
    if (!s.resp.hits.length) body.push(h("p", { class: "muted" }, "No hits."));
    body.push(h("ol", { class: "hits" }, s.resp.hits.map((hit, i) => {
      const rel = state.judgements[hit.id];
      const cls = ["hit", rel === undefined ? "" : rel > 0 ? "judged-rel" : "judged-nrel"].join(" ").trim();
      return h("li", { class: cls, dataset: { id: hit.id }, tabindex: "-1" },
        h("div", { class: "hit-top" }, h("span", { class: "pos" }, String(i + 1)), h("span", { class: "title" }, hit.title || "(untitled)")),
        h("p", { class: "snippet" }, snippet(hit.text)),
        h("div", { class: "chips" }, rankChips(hit.id, merged)),
        h("div", { class: "hit-foot" },
          movement(st, hit.id, i + 1, merged),
          h("span", { class: "docid" }, `id ${hit.id}`),
          h("span", { class: "score" }, `score ${fmt(hit.score, 4)}`),
          judgeButtons(hit.id)));
    })));
  }
  return h("section", { class: `col col-${st.key}`, dataset: { stage: st.key, status: s.status }, "aria-label": st.title }, head, ...body);
}

function renderColumns() {
  const merged = profiles();
  // keep keyboard focus on the same button of the same hit across a re-render
  const active = document.activeElement;
  const hit = active && active.closest ? active.closest(".hit") : null;
  const col = hit ? hit.closest(".col") : null;
  const key = hit && col && active.classList.contains("judge") ? [col.dataset.stage, hit.dataset.id, active.classList.contains("rel") ? "rel" : "nrel"] : null;
  els.columns.replaceChildren(...STAGES.map((st) => column(st, merged)));
  if (key) {
    const sel = `.col[data-stage="${key[0]}"] .hit[data-id="${CSS.escape(key[1])}"] button.judge.${key[2]}`;
    const again = els.columns.querySelector(sel);
    if (again) again.focus();
  }
  const n = Object.keys(state.judgements).length;
  if (state.qrelsPath && !els.judge.textContent) {
    els.judge.textContent = n ? `${n} judgement(s) for this query in ${state.qrelsPath}.` : "";
  }
}
