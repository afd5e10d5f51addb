// Eval view: the result files of `dowse eval` and the benches (GET /v1/eval/results), grouped by name:
// Markdown tables rendered, PNG plots shown, JSON on request. Files are fetched with the API key if any.
import { api, h, showError, when } from "./api.js";

let els = {};
let files = [];
let groups = [];
const blobs = [];

export function initEval() {
  els = {
    pick: document.getElementById("eval-pick"),
    folders: document.getElementById("eval-folders"),
    error: document.getElementById("eval-error"),
    body: document.getElementById("eval-body"),
  };
  els.pick.addEventListener("change", () => render(els.pick.value));
}

export async function showEval(on) {
  if (!on) return;
  try {
    const res = await api("/v1/eval/results");
    showError(els.error, null);
    files = res.files;
    els.folders.textContent = `From ${res.folders.join(" and ")}.`;
    const byStem = new Map();
    for (const f of files) {
      const key = `${f.source}/${f.stem}`;
      if (!byStem.has(key)) byStem.set(key, { key, stem: f.stem, folder: f.folder, source: f.source, modified: 0, files: {} });
      const g = byStem.get(key);
      g.files[f.kind] = f;
      g.modified = Math.max(g.modified, f.modified);
    }
    groups = [...byStem.values()].sort((a, b) => b.modified - a.modified || a.stem.localeCompare(b.stem));
    const keep = els.pick.value;
    els.pick.replaceChildren(...groups.map((g) => h("option", { value: g.key }, `${g.stem} (${Object.keys(g.files).sort().join(", ")}; ${when(g.modified)})`)));
    if (!groups.length) {
      els.body.replaceChildren(h("p", { class: "muted" }, "No result files yet: run `dowse eval` or a bench."));
      return;
    }
    const first = groups.find((g) => g.key === keep) || groups.find((g) => g.stem.startsWith("eval")) || groups[0];
    els.pick.value = first.key;
    render(first.key);
  } catch (error) {
    showError(els.error, error);
  }
}

async function fetchFile(f) {
  return api(`/v1/eval/results/${encodeURIComponent(f.source)}/${encodeURIComponent(f.name)}`, { raw: true });
}

async function render(key) {
  const g = groups.find((x) => x.key === key);
  if (!g) return;
  while (blobs.length) URL.revokeObjectURL(blobs.pop());
  const parts = [h("h2", {}, g.stem), h("p", { class: "muted small" }, `${g.folder} · updated ${when(g.modified)}`)];
  const body = h("div", { class: "eval-doc" });
  parts.push(body);
  els.body.replaceChildren(...parts);
  try {
    if (g.files.png) {
      const blob = await (await fetchFile(g.files.png)).blob();
      const url = URL.createObjectURL(blob);
      blobs.push(url);
      body.append(h("figure", {}, h("img", { src: url, alt: `plot ${g.files.png.name}` }), h("figcaption", { class: "muted small" }, g.files.png.name)));
    }
    if (g.files.md) body.append(markdown(await (await fetchFile(g.files.md)).text()));
    else if (g.files.csv) body.append(h("pre", {}, await (await fetchFile(g.files.csv)).text()));
    if (g.files.json) {
      const pre = h("pre", { class: "json" });
      const det = h("details", {}, h("summary", {}, `${g.files.json.name} (${g.files.json.bytes} bytes)`), pre);
      det.addEventListener("toggle", async () => {
        if (det.open && !pre.textContent) pre.textContent = JSON.stringify(await (await fetchFile(g.files.json)).json(), null, 2);
      });
      body.append(det);
    }
  } catch (error) {
    showError(els.error, error);
  }
}

// Enough Markdown for the result files: headings, pipe tables, code fences, lists, paragraphs,
// `code` and **bold**. Built from text nodes only (nothing is parsed as HTML).
function inline(text) {
  const out = [];
  const re = /(`[^`]+`|\*\*[^*]+\*\*)/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    const tok = m[0];
    out.push(tok.startsWith("`") ? h("code", {}, tok.slice(1, -1)) : h("b", {}, tok.slice(2, -2)));
    last = m.index + tok.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

export function markdown(src) {
  const root = h("div", { class: "md" });
  const lines = src.replace(/\r/g, "").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      for (i += 1; i < lines.length && !lines[i].startsWith("```"); i += 1) code.push(lines[i]);
      root.append(h("pre", {}, code.join("\n")));
      i += 1;
    } else if (/^#{1,6} /.test(line)) {
      const level = Math.min(line.match(/^#+/)[0].length + 2, 6);
      root.append(h(`h${level}`, {}, inline(line.replace(/^#+ /, ""))));
      i += 1;
    } else if (line.trim().startsWith("|")) {
      const rows = [];
      for (; i < lines.length && lines[i].trim().startsWith("|"); i += 1) rows.push(lines[i]);
      const sep = rows.length > 1 && /^[\s|:-]+$/.test(rows[1]);
      const head = sep ? cells(rows[0]) : null;
      const bodyRows = (sep ? rows.slice(2) : rows).map(cells);
      const numeric = (c) => /^[-+]?[\d.,]+(e[-+]?\d+)?\s*(x|%|ms|s)?$/i.test(c);
      root.append(h("div", { class: "table-wrap" }, h("table", { class: "grid" },
        head ? h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, inline(c))))) : null,
        h("tbody", {}, bodyRows.map((r) => h("tr", {}, r.map((c) => h("td", { class: numeric(c) ? "num" : c.length > 40 ? "long" : null }, inline(c)))))))));
    } else if (/^\s*[-*] /.test(line)) {
      const items = [];
      for (; i < lines.length && /^\s*[-*] /.test(lines[i]); i += 1) items.push(lines[i].replace(/^\s*[-*] /, ""));
      root.append(h("ul", {}, items.map((t) => h("li", {}, inline(t)))));
    } else if (!line.trim()) {
      i += 1;
    } else {
      const para = [line];
      for (i += 1; i < lines.length && lines[i].trim() && !/^(#|\||```|\s*[-*] )/.test(lines[i]); i += 1) para.push(lines[i]);
      root.append(h("p", {}, inline(para.join(" "))));
    }
  }
  return root;
}
