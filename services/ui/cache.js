// Cache view: namespace picker, a lookup box showing the decision and why (similarity, contrast score,
// the bound the policy used), storing answers, and per-namespace rates over time (polling the stats).
import { api, fmt, h, pct, showError } from "./api.js";

const POLL_MS = 2000;
const MAX_SAMPLES = 300;
const SERIES = [
  { key: "exploit_rate", label: "exploit (hit) rate", cls: "s-exploit" },
  { key: "explore_rate", label: "explore rate", cls: "s-explore" },
  { key: "estimated_error_rate", label: "estimated error rate", cls: "s-error" },
  { key: "observed_exploit_error_rate", label: "observed error rate of exploits", cls: "s-observed" },
];
const SAYS = {
  exploit: "served the cached answer: the policy's risk bound allowed it",
  explore: "a close entry exists, but the policy wants a fresh answer (send feedback) before trusting it",
  miss: "no cached entry close enough in this namespace and scope",
};

let els = {};
let visible = false;
let timer = null;
let samples = [];

export function initCache() {
  els = {
    nsForm: document.getElementById("ns-form"),
    ns: document.getElementById("ns"),
    nsList: document.getElementById("ns-list"),
    nsTable: document.getElementById("ns-table"),
    lookupForm: document.getElementById("lookup-form"),
    lookupError: document.getElementById("lookup-error"),
    lookupResult: document.getElementById("lookup-result"),
    storeForm: document.getElementById("store-form"),
    storeStatus: document.getElementById("store-status"),
    statsNs: document.getElementById("stats-ns"),
    numbers: document.getElementById("stats-numbers"),
    chart: document.getElementById("stats-chart"),
  };
  els.ns.value = sessionStorage.getItem("dowse.namespace") || "";
  els.nsForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    pickNamespace(els.ns.value.trim());
  });
  els.lookupForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    lookup();
  });
  els.storeForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    store();
  });
}

export function showCache(on) {
  visible = on;
  if (on) poll();
  else if (timer) clearTimeout(timer);
}

function pickNamespace(ns) {
  sessionStorage.setItem("dowse.namespace", ns);
  samples = [];
  poll();
}

function namespace() {
  const ns = els.ns.value.trim();
  if (!ns) throw new Error("Pick or type a namespace first.");
  return ns;
}

function parseScope(raw) {
  const t = raw.trim();
  if (!t) return undefined;
  try {
    return JSON.parse(t);
  } catch {
    return t; // plain text scopes are allowed (hashed into the key as given)
  }
}

async function lookup() {
  showError(els.lookupError, null);
  const num = (id) => {
    const v = document.getElementById(id).value.trim();
    return v === "" ? undefined : Number(v);
  };
  try {
    const body = {
      namespace: namespace(),
      prompt: document.getElementById("lookup-prompt").value,
      policy: document.getElementById("lookup-policy").value,
      max_error: num("lookup-max-error"),
      threshold: num("lookup-threshold"),
      scope: parseScope(document.getElementById("lookup-scope").value),
      explain: true,
    };
    if (!body.prompt.trim()) throw new Error("Type a prompt to look up.");
    const res = await api("/v1/cache/lookup", { method: "POST", body });
    renderLookup(res, body.namespace);
    poll();
  } catch (error) {
    showError(els.lookupError, error);
  }
}

function row(label, value, title) {
  return h("tr", {}, h("th", { scope: "row", title: title || null }, label), h("td", {}, value));
}

function renderLookup(r, ns) {
  const ex = r.explain || {};
  const b = ex.bound || {};
  const rows = [row("similarity", fmt(r.similarity, 4), "cosine similarity to the nearest entry")];
  if (ex.contrast_score !== undefined) {
    rows.push(row("contrast score", `${fmt(ex.contrast_score, 4)} = similarity − ${fmt(ex.contrast_weight, 2)} × competitor ${fmt(ex.competitor, 4)}`,
      "the score the adaptive policy models: how much closer the nearest entry is than the closest other answer"));
  }
  if (ex.risk !== undefined) rows.push(row("risk", `${fmt(ex.risk, 4)} (1 − lower bound on P(correct) ${fmt(ex.correct_lower_bound, 4)})`));
  if (ex.rule === "budget") {
    rows.push(row("bound (budget)", `risk cut ${fmt(b.risk_cut, 4)}, spent ${fmt(b.spent, 4)} of allowance ${fmt(b.allowance, 4)} (max error ${fmt(b.max_error)})`, b.test));
  } else if (ex.rule === "vcache") {
    rows.push(row("bound (vCache)", `max error ${fmt(b.max_error)}; exploit probability ${fmt(r.exploit_probability, 4)}`, b.test));
  } else if (ex.rule === "static") {
    rows.push(row("bound (static)", `threshold ${fmt(b.threshold)}`, b.test));
  }
  if (ex.fit) rows.push(row("fit", `P(correct | x) = σ(${fmt(ex.fit.gamma, 3)} (x − ${fmt(ex.fit.t, 4)})), sd(t) ${fmt(ex.fit.sd_t, 4)}, ${ex.fit.observations} observations, ${ex.fit.source}`));
  else if (ex.rule && ex.rule !== "static" && r.entry_id) rows.push(row("fit", "none yet (too few observations): the policy cannot exploit"));
  if (r.entry_id) rows.push(row("entry", h("span", { class: "mono" }, r.entry_id)));
  rows.push(row("lookup id", h("span", { class: "mono" }, r.lookup_id)));
  const parts = [
    h("p", { class: "decision-line" }, h("span", { class: `decision ${r.decision}`, dataset: { decision: r.decision } }, r.decision), " ", SAYS[r.decision] || ""),
  ];
  if (r.degraded) parts.push(h("p", { class: "banner warn" }, h("b", {}, "Degraded: "), r.degraded));
  if (ex.note) parts.push(h("p", { class: "muted small" }, ex.note));
  parts.push(h("table", { class: "kv" }, h("tbody", {}, rows)));
  if (r.response) parts.push(h("p", {}, h("b", {}, "Cached response: "), r.response));
  if (r.decision !== "miss") {
    const input = h("input", { "aria-label": "fresh response for feedback", placeholder: "fresh LLM response", autocomplete: "off" });
    const status = h("span", { class: "muted small" });
    const form = h("form", { class: "inline-form" }, input, h("button", { type: "submit" }, "Send feedback"), status);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const fb = await api("/v1/cache/feedback", { method: "POST", body: { namespace: ns, lookup_id: r.lookup_id, response: input.value } });
        status.textContent = `judged ${fb.correct === null ? "—" : fb.correct ? "correct" : "wrong"}; ${fb.observations} observations`;
        poll();
      } catch (error) {
        status.textContent = error.describe ? error.describe() : String(error);
      }
    });
    parts.push(form);
  }
  els.lookupResult.replaceChildren(...parts);
}

async function store() {
  try {
    const body = {
      namespace: namespace(),
      prompt: document.getElementById("store-prompt").value,
      response: document.getElementById("store-response").value,
      scope: parseScope(document.getElementById("lookup-scope").value),
    };
    const res = await api("/v1/cache/store", { method: "POST", body });
    els.storeStatus.textContent = res.stored ? `Stored as entry ${res.entry_id}${res.evicted ? ` (${res.evicted} evicted)` : ""}.` : `Not stored: ${res.degraded || "unknown reason"}`;
    poll();
  } catch (error) {
    els.storeStatus.textContent = error.describe ? error.describe() : String(error.message || error);
  }
}

async function poll() {
  if (timer) clearTimeout(timer);
  try {
    const list = await api("/v1/cache/namespaces");
    renderNamespaces(list);
    const ns = els.ns.value.trim();
    if (!ns && list.namespaces.length) els.ns.value = list.namespaces[0].name;
    const picked = els.ns.value.trim();
    if (picked) {
      const stats = await api(`/v1/cache/stats?namespace=${encodeURIComponent(picked)}`);
      if (!samples.length || samples[0].ns !== picked) samples = [];
      samples.push({ ...stats, ns: picked, t: Date.now() });
      if (samples.length > MAX_SAMPLES) samples.shift();
      renderStats(picked, stats);
    }
  } catch (error) {
    els.numbers.replaceChildren(h("p", { class: "banner error" }, error.describe ? error.describe() : String(error)));
  }
  if (visible) timer = setTimeout(poll, POLL_MS);
}

function renderNamespaces(list) {
  els.nsList.replaceChildren(...list.namespaces.map((n) => h("option", { value: n.name })));
  const head = h("thead", {}, h("tr", {}, ["Namespace", "Entries", "Lookups", "Exploit", "Explore", "Miss"].map((c) => h("th", { scope: "col" }, c))));
  const rows = list.namespaces.map((n) => h("tr", {},
    h("th", { scope: "row" }, h("button", { type: "button", class: "link", onclick: () => { els.ns.value = n.name; pickNamespace(n.name); } }, n.name)),
    ...["entries", "lookups", "exploit", "explore", "miss"].map((k) => h("td", { class: "num" }, fmt(n[k])))));
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "6", class: "muted" }, list.redis === "ok" ? "No namespaces yet: store an answer." : "Redis is unavailable: the cache answers miss.")));
  els.nsTable.replaceChildren(head, h("tbody", {}, rows));
}

function renderStats(ns, s) {
  els.statsNs.textContent = `· ${ns}`;
  const cell = (label, value) => h("div", { class: "number" }, h("span", { class: "muted small" }, label), h("b", {}, value));
  els.numbers.replaceChildren(
    cell("entries", fmt(s.entries)), cell("lookups", fmt(s.lookups)),
    cell("exploit (hit)", pct(s.exploit_rate)), cell("explore", pct(s.explore_rate)), cell("miss", pct(s.miss_rate)),
    cell("estimated error", pct(s.estimated_error_rate)), cell("observed exploit error", pct(s.observed_exploit_error_rate)),
    cell("redis", s.redis));
  drawChart();
}

// An SVG line chart of the namespace's rates (cumulative, from its counters) at each poll, over time.
// Drawn at the element's own pixel width so text is never stretched; redrawn when that width changes.
function drawChart() {
  const W = Math.max(els.chart.clientWidth, 240), H = 180, L = 40, R = 10, T = 8, B = 22;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", String(W));
  svg.setAttribute("height", String(H));
  const el = (tag, attrs) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    svg.append(e);
    return e;
  };
  const n = samples.length;
  const t0 = n ? samples[0].t : 0;
  const span = n > 1 ? Math.max(samples[n - 1].t - t0, 1) : 1;
  const x = (p) => L + ((p.t - t0) * (W - L - R)) / span;
  const y = (v) => T + (1 - v) * (H - T - B);
  for (const v of [0, 0.5, 1]) {
    el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" });
    el("text", { x: 4, y: y(v) + 4, class: "axis" }).textContent = `${v * 100}%`;
  }
  for (const s of SERIES) {
    const pts = samples.filter((p) => p[s.key] !== null && p[s.key] !== undefined).map((p) => `${x(p).toFixed(1)},${y(p[s.key]).toFixed(1)}`);
    if (pts.length === 1) {
      const [cx, cy] = pts[0].split(",");
      el("circle", { cx, cy, r: 3, class: `dot ${s.cls}` });
    } else if (pts.length) el("polyline", { points: pts.join(" "), class: `series ${s.cls}` });
  }
  const label = n > 1 ? `${n} polls over ${Math.round(span / 1000)} s (every ${POLL_MS / 1000} s while this view is open)` : "waiting for polls";
  el("text", { x: L, y: H - 6, class: "axis" }).textContent = label;
  const legend = h("p", { class: "legend" }, SERIES.map((s) => h("span", { class: `key ${s.cls}` }, s.label)));
  els.chart.replaceChildren(svg, legend);
  chartWidth = els.chart.clientWidth;
}

let chartWidth = 0;
window.addEventListener("resize", () => {
  if (els.chart && samples.length && els.chart.clientWidth !== chartWidth) drawChart();
});
