// Collections and jobs view: each collection's counts, index, model and dims; running and past ingest
// jobs with live progress (polling GET /v1/collections/{name}/jobs), errors shown in full.
import { api, fmt, h, showError, when } from "./api.js";

const MAX_JOBS = 30;
const FAST_MS = 700; // while a job runs
const SLOW_MS = 5000;

let els = {};
let timer = null;
let visible = false;
let onCollections = () => {};
const errorsOpen = new Map(); // job -> whether its error list is open (open until the user closes it)

export function initOps(collectionsChanged) {
  onCollections = collectionsChanged;
  els = {
    table: document.getElementById("coll-table"),
    error: document.getElementById("coll-error"),
    jobs: document.getElementById("jobs"),
    jobForm: document.getElementById("job-form"),
    jobCollection: document.getElementById("job-collection"),
    jobPath: document.getElementById("job-path"),
    jobFormat: document.getElementById("job-format"),
    jobError: document.getElementById("job-error"),
  };
  els.jobForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(els.jobError, null);
    const name = els.jobCollection.value;
    const path = els.jobPath.value.trim();
    if (!name || !path) {
      showError(els.jobError, new Error("Pick a collection and give a file path on the server."));
      return;
    }
    try {
      await api(`/v1/collections/${encodeURIComponent(name)}/jobs`, {
        method: "POST",
        body: { path, format: els.jobFormat.value || null },
      });
      schedule(0);
    } catch (error) {
      showError(els.jobError, error);
    }
  });
}

export function showOps(on) {
  visible = on;
  if (on) schedule(0);
  else if (timer) clearTimeout(timer);
}

function schedule(ms) {
  if (timer) clearTimeout(timer);
  timer = setTimeout(refresh, ms);
}

export async function loadCollections() {
  const res = await api("/v1/collections");
  onCollections(res.collections);
  return res.collections;
}

async function refresh() {
  let active = false;
  try {
    const collections = await loadCollections();
    showError(els.error, null);
    renderTable(collections);
    fillSelect(els.jobCollection, collections.map((c) => c.name));
    const lists = await Promise.all(collections.map(async (c) => {
      try {
        const res = await api(`/v1/collections/${encodeURIComponent(c.name)}/jobs`);
        return res.jobs.map((j) => ({ ...j, collection: c.name }));
      } catch (error) {
        return [{ collection: c.name, id: "?", status: "unknown", errors: [error.describe ? error.describe() : String(error)] }];
      }
    }));
    const jobs = lists.flat();
    active = jobs.some((j) => j.status === "running" || j.status === "queued");
    renderJobs(jobs);
  } catch (error) {
    showError(els.error, error);
  }
  if (visible) schedule(active ? FAST_MS : SLOW_MS);
}

function fillSelect(sel, names) {
  const keep = sel.value;
  const now = [...sel.options].map((o) => o.value).join("\n");
  if (now !== names.join("\n")) sel.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  if (names.includes(keep)) sel.value = keep;
}

function renderTable(collections) {
  const cols = ["Name", "Documents", "Chunks", "Dense index", "Model", "Dims", "Metric", "BM25 analyzer", "Chunking", "Created"];
  const head = h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c))));
  const rows = collections.map((c) => {
    const st = c.stats || {};
    const index = c.index || {};
    const kind = st.dense_index || index.type || "—";
    const chunking = c.chunk_tokens ? `${c.chunk_tokens} tok / ${c.chunk_overlap || 0} overlap` : "—";
    const dims = c.model_dim && c.model_dim !== c.dims ? `${c.dims} of ${c.model_dim}` : fmt(c.dims);
    const values = [fmt(st.documents), fmt(st.chunks), kind, c.model || "—", dims, c.metric || "—", c.analyzer || "—", chunking, when(c.created_at)];
    const numeric = new Set([0, 1, 4]);
    // data-label: on a phone each row becomes a card of "label value" lines
    return h("tr", { dataset: { collection: c.name } },
      h("th", { scope: "row" }, c.name),
      values.map((v, i) => h("td", { class: numeric.has(i) ? "num" : null, dataset: { label: cols[i + 1] } }, v)));
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "10", class: "muted" }, "No collections yet: POST /v1/collections or `dowse index`.")));
  els.table.replaceChildren(head, h("tbody", {}, rows));
}

function jobProgress(j) {
  const done = (j.done || 0) + (j.skipped || 0) + (j.failed || 0); // records read so far
  if (j.total === null || j.total === undefined) return { done, total: null, text: `${fmt(j.done || 0)} indexed (counting records…)` };
  const pctText = j.total ? ` (${Math.floor((100 * done) / j.total)}%)` : "";
  return { done, total: j.total, text: `${fmt(done)} / ${fmt(j.total)}${pctText}` };
}

function renderJobs(jobs) {
  const rank = (j) => (j.status === "running" || j.status === "queued" ? 0 : 1);
  jobs.sort((a, b) => rank(a) - rank(b) || (b.created_at || 0) - (a.created_at || 0));
  if (!jobs.length) {
    els.jobs.replaceChildren(h("p", { class: "muted" }, "No ingest jobs yet."));
    return;
  }
  const cards = jobs.slice(0, MAX_JOBS).map((j) => {
    const p = jobProgress(j);
    const key = `${j.collection}/${j.id}`;
    const errors = j.errors || [];
    const bar = p.total === null ? h("progress", { "aria-label": `job ${j.id} progress` }) : h("progress", { max: String(Math.max(p.total, 1)), value: String(p.done), "aria-label": `job ${j.id} progress` });
    return h("article", { class: `job status-${j.status}`, dataset: { job: j.id, status: j.status, done: String(p.done), total: String(p.total ?? "") } },
      h("header", {},
        h("b", {}, j.collection), " ", h("span", { class: "mono" }, j.id), " ",
        h("span", { class: `badge ${j.status}${j.status === "completed" && j.failed ? " partial" : ""}` },
          j.status === "completed" && j.failed ? `completed, ${j.failed} failed` : j.status),
        h("span", { class: "muted small" }, ` started ${when(j.created_at)} · updated ${when(j.updated_at)}`)),
      h("div", { class: "progress-row" }, bar, h("span", { class: "progress-text" }, p.text)),
      h("p", { class: "small" }, `${fmt(j.done || 0)} indexed · ${fmt(j.skipped || 0)} already stored · ${fmt(j.failed || 0)} failed`,
        j.path ? [" · ", h("span", { class: "mono" }, `${j.path}${j.format ? ` (${j.format})` : ""}`)] : ""),
      errors.length
        ? h("details", { class: "errors", open: errorsOpen.get(key) ?? true, ontoggle: (ev) => errorsOpen.set(key, ev.target.open) },
          h("summary", {}, `${errors.length} error${errors.length > 1 ? "s" : ""}`),
          h("pre", {}, errors.join("\n")))
        : null);
  });
  if (jobs.length > MAX_JOBS) cards.push(h("p", { class: "muted" }, `${jobs.length - MAX_JOBS} older jobs not shown.`));
  els.jobs.replaceChildren(...cards);
}
