// Entry point: view switching by URL hash, the API key bar, and the collection list shared by views.
import { apiKey, setApiKey } from "./api.js";
import { initCache, showCache } from "./cache.js";
import { initEval, showEval } from "./eval.js";
import { initOps, loadCollections, showOps } from "./ops.js";
import { initSearch, runSearch } from "./search.js";

const VIEWS = ["search", "collections", "cache", "eval"];
const SHOW = { collections: showOps, cache: showCache, eval: showEval };
let current = null;

function setCollections(list) {
  const sel = document.getElementById("collection");
  sel.hidden = false; // listing works (again): the picker, not the free-text fallback
  document.getElementById("collection-name").hidden = true;
  const names = list.map((c) => c.name);
  const keep = sel.value || sessionStorage.getItem("dowse.collection") || "";
  const now = [...sel.options].map((o) => o.value).join("\n");
  if (now !== names.join("\n")) {
    sel.replaceChildren(...list.map((c) => {
      const o = document.createElement("option");
      o.value = c.name;
      const docs = c.stats && c.stats.documents !== undefined ? ` (${c.stats.documents} docs)` : "";
      o.textContent = `${c.name}${docs}`;
      return o;
    }));
  }
  if (names.includes(keep)) sel.value = keep;
}

function route() {
  const name = (location.hash.replace(/^#/, "").split("?")[0] || "search").toLowerCase();
  const view = VIEWS.includes(name) ? name : "search";
  if (view === current) return;
  for (const v of VIEWS) {
    document.getElementById(`view-${v}`).hidden = v !== view;
    const tab = document.querySelector(`.tabs a[data-view="${v}"]`);
    if (v === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (current && SHOW[current]) SHOW[current](false);
  current = view;
  if (SHOW[view]) SHOW[view](true);
  if (view === "search") document.getElementById("q").focus();
}

function initKeyBar() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  const msg = document.getElementById("key-message");
  const show = (text) => {
    form.hidden = false;
    msg.hidden = !text;
    msg.textContent = text || "";
  };
  if (apiKey()) show("");
  document.addEventListener("dowse:auth", (ev) => {
    const err = ev.detail;
    show(err.status === 401
      ? `This server wants an API key: ${err.message}. Type it above; it is kept in this tab only (sessionStorage).`
      : `Your API key may not do this: ${err.message}.`);
    if (err.status === 401) input.focus();
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    setApiKey(input.value.trim());
    input.value = "";
    msg.hidden = true;
    loadCollections().catch(() => {});
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    setApiKey("");
    show("Key forgotten.");
  });
}

function init() {
  initKeyBar();
  initSearch();
  initOps(setCollections);
  initCache();
  initEval();
  document.getElementById("collection").addEventListener("change", (ev) => {
    sessionStorage.setItem("dowse.collection", ev.target.value);
  });
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", (ev) => {
    // "/" focuses the query box, as on most search pages
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (ev.key === "/" && !typing && current === "search") {
      ev.preventDefault();
      document.getElementById("q").focus();
    }
  });
  route();
  loadCollections().catch((error) => {
    // e.g. a gateway-only process whose origin does not route the indexer's /v1/collections: type a name
    if (error.status === 401 || error.status === 403) return;
    document.getElementById("collection").hidden = true;
    document.getElementById("collection-name").hidden = false;
    const status = document.getElementById("search-status");
    status.textContent = `Collections could not be listed here (${error.describe ? error.describe() : error}); type a collection name.`;
  }).then(() => {
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    if (params.get("q") && current === "search") {
      document.getElementById("q").value = params.get("q");
      if (params.get("collection")) {
        document.getElementById("collection").value = params.get("collection");
        document.getElementById("collection-name").value = params.get("collection");
      }
      runSearch();
    }
  }).catch(() => {});
}

init();
