// Calls to this server's API (same origin only) and small DOM helpers shared by the views.
// An API key, when the server asks for one, lives in sessionStorage only (gone when the tab closes).

const KEY_ITEM = "dowse.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.type = (body && body.type) || "http_error";
    this.field = body ? body.field : undefined;
    this.limit = body ? body.limit : undefined;
  }

  // One line a person can act on: status, type, message, and which field broke which limit.
  describe() {
    const head = this.status ? `${this.status} ${this.type}` : this.type;
    let text = `${head}: ${this.message}`;
    const extra = [];
    const named = this.field !== undefined && this.field !== null;
    if (named && !this.message.startsWith(`${this.field}:`)) extra.push(`field ${this.field}`);
    if (Array.isArray(this.limit)) extra.push(`allowed: ${this.limit.map((x) => (x === null ? "null" : String(x))).join(", ")}`);
    else if (this.limit !== undefined && this.limit !== null) extra.push(`limit ${JSON.stringify(this.limit)}`);
    if (extra.length) text += ` (${extra.join("; ")})`;
    return text;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

// fetch() against this origin; JSON in and out. Throws ApiError for any non-2xx answer.
export async function api(path, { method = "GET", body, raw = false } = {}) {
  if (!path.startsWith("/")) throw new Error(`not a same-origin path: ${path}`);
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const key = apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (exc) {
    throw new ApiError(0, { type: "network_error", message: `the server did not answer (${exc.message})` });
  }
  if (!res.ok) {
    let err = null;
    try {
      err = (await res.json()).error;
    } catch {
      err = null;
    }
    const error = new ApiError(res.status, err || { type: "http_error", message: res.statusText });
    if (res.status === 401 || res.status === 403) {
      document.dispatchEvent(new CustomEvent("dowse:auth", { detail: error }));
    }
    throw error;
  }
  return raw ? res : res.json();
}

// Build an element: h("p", {class: "x", onclick: fn}, "text", child, ...). Text is never parsed as HTML.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function showError(el, error) {
  if (!error) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  el.hidden = false;
  el.textContent = error instanceof ApiError ? error.describe() : String(error.message || error);
}

export function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 0.001 || a >= 100000)) return x.toExponential(2);
  return x.toFixed(digits).replace(/\.?0+$/, "") || "0";
}

export function pct(x) {
  return x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`;
}

export function when(ts) {
  if (!ts) return "—";
  const d = new Date(ts * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
