// vecq console. Plain JS, no build step, nothing loaded from outside this API. Every figure comes from a public
// /v1 call made with the key typed into the page (kept in this tab's sessionStorage), so the page shows exactly
// what a client with that key can see. Data is always put into the page as text, never parsed as HTML.
"use strict";

const KEY_STORAGE = "vecq.console.key";
const BASE = location.pathname.replace(/\/console\/?$/, "");
const REFRESH_MS = Math.max(500, 1000 * (Number(new URLSearchParams(location.search).get("refresh")) || 3));
const QUEUE_WINDOW_S = 600;
const GONE_KEEP_S = 600;
const PAGES = ["collections", "workers", "queue", "jobs", "search", "ingest"];
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  page: "collections",
  paused: false,
  needKey: false,
  workers: null, // the last GET /v1/workers
  collections: [], // the last GET /v1/collections
  samples: [], // queue samples: {t, queued, running, workers}
  seen: new Map(), // worker id -> {view, goneAt}: workers seen by this page, so the ones that went away show
  collection: null, // the collection whose detail is open
  job: null, // the job whose record is open: {id, record}
};

// HTTP ----------------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error ? body.error : null;
    super(err ? `${err.message}${err.field ? ` (${err.field})` : ""}` : `HTTP ${status}`);
    this.status = status;
    this.code = err ? err.code : null;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(BASE + path, {
    method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (resp.status === 401) {
    askForKey(state.key ? (data && data.error ? data.error.message : "unknown API key") : "");
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return { status: resp.status, data };
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

const path = (...parts) => parts.map(encodeURIComponent).join("/");

// DOM helpers ---------------------------------------------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function show(node, visible) {
  node.hidden = !visible;
}

// Formatting ----------------------------------------------------------------------------------------------------

const now = () => Date.now() / 1000;

function clock(t) {
  if (!t) return "—";
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function dateTime(t) {
  return t ? new Date(t * 1000).toLocaleString([], { hour12: false }) : "—";
}

function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const count = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
const shortId = (id) => (id && id.length > 12 ? `${id.slice(0, 8)}…` : id || "—");

function duration(job) {
  if (!job.started_at) return null;
  return (job.finished_at || now()) - job.started_at;
}

function badge(status) {
  return el("span", { class: `badge ${status}`, text: status });
}

function value(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// Key -------------------------------------------------------------------------------------------------------------

function askForKey(message) {
  state.needKey = true;
  show($("#key-form"), true);
  show($("#key-error"), Boolean(message));
  $("#key-error").textContent = message || "";
  $("#updated").textContent = "waiting for an API key";
  $("#key-input").focus();
}

function useKey(key) {
  state.key = key;
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  state.needKey = false;
  show($("#key-form"), false);
  show($("#forget-key"), Boolean(key));
  refresh();
}

// Errors ----------------------------------------------------------------------------------------------------------

function showError(err) {
  const box = $("#error");
  if (!err) { show(box, false); return; }
  box.textContent = err instanceof ApiError ? `${err.status}: ${err.message}` : `Cannot reach the API: ${err.message}`;
  show(box, true);
}

// Refresh loop -------------------------------------------------------------------------------------------------------

let timer = 0;
let ticking = false;
let again = false;

async function refresh() {
  clearTimeout(timer);
  if (ticking) { again = true; return; }
  ticking = true;
  try {
    await tick();
  } finally {
    ticking = false;
  }
  if (again) { again = false; refresh(); return; }
  timer = setTimeout(refresh, REFRESH_MS);
}

async function tick() {
  if (state.paused || state.needKey) return;
  try {
    await sample();
    if (!document.hidden) await RENDER[state.page]();
    $("#updated").textContent = `updated ${clock(now())} · every ${REFRESH_MS / 1000} s`;
    showError(null);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
  }
}

// Workers and queue samples: one GET /v1/workers per refresh, whatever the page --------------------------------

async function sample() {
  const { data } = await api("/v1/workers");
  state.workers = data;
  const t = now();
  const queued = Object.values(data.queues || {}).reduce((a, b) => a + b, 0);
  state.samples.push({ t, queued, running: data.unacked || 0, workers: data.workers.length });
  while (state.samples.length && state.samples[0].t < t - QUEUE_WINDOW_S) state.samples.shift();
  const alive = new Set();
  for (const w of data.workers) {
    alive.add(w.worker);
    state.seen.set(w.worker, { view: w, goneAt: null });
  }
  for (const [id, seen] of state.seen) {
    if (alive.has(id)) continue;
    if (seen.goneAt === null) seen.goneAt = t;
    else if (t - seen.goneAt > GONE_KEEP_S) state.seen.delete(id);
  }
}

function copiesOf(name) {
  const out = [];
  for (const w of (state.workers && state.workers.workers) || []) {
    const c = (w.collections || []).find((x) => x.name === name);
    if (c) out.push({ worker: w, copy: c });
  }
  return out;
}

function workerLabel(w) {
  return w.pid ? `pid ${w.pid}` : shortId(w.worker);
}

function lagText(copy) {
  if (copy.caught_up) return "caught up";
  return `${seconds(copy.lag_s || 0)} behind`;
}

// Collections ------------------------------------------------------------------------------------------------------

async function loadCollections() {
  const { data } = await api("/v1/collections");
  state.collections = data.collections;
  for (const sel of [$("#jobs-collection"), $("#search-collection")]) {
    options(sel, data.collections.map((c) => c.name), sel.id === "jobs-collection");
  }
}

function options(select, names, withAny) {
  const wanted = (withAny ? [""] : []).concat(names);
  const have = Array.from(select.options).map((o) => o.value);
  if (wanted.join("\n") === have.join("\n")) return;
  const current = select.value;
  select.replaceChildren(...wanted.map((n) => el("option", { value: n, text: n || "any" })));
  if (wanted.includes(current)) select.value = current;
}

async function renderCollections() {
  await loadCollections();
  const rows = state.collections.map((c) => {
    const copies = copiesOf(c.name);
    const lag = copies.length
      ? copies.map(({ worker, copy }) => `${workerLabel(worker)}: ${lagText(copy)}`).join(" · ")
      : "no worker holds it yet";
    return el("tr", {
      "data-name": c.name, class: c.name === state.collection ? "selected" : null,
      onclick: () => { state.collection = c.name === state.collection ? null : c.name; refresh(); },
    },
    el("td", { class: "name", text: c.name }), el("td", { text: c.dim }), el("td", { text: c.metric }),
    el("td", { class: "spec", text: c.index }), el("td", { class: "num count", text: count(c.count) }),
    el("td", { class: "lsn", text: c.lsn }), el("td", { class: "copies", text: lag }));
  });
  fill($("#collections-table tbody"), rows);
  show($("#collections-empty"), rows.length === 0);
  await renderCollectionDetail();
}

async function renderCollectionDetail() {
  const box = $("#collection-detail");
  if (!state.collection) { show(box, false); return; }
  let record;
  try {
    ({ data: record } = await api(`/v1/collections/${path(state.collection)}`));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) { state.collection = null; show(box, false); return; }
    throw err;
  }
  const fields = Object.entries(record).filter(([, v]) => v === null || typeof v !== "object");
  const facts = el("dl", { class: "facts" }, ...fields.flatMap(([k, v]) => [
    el("dt", { text: k }), el("dd", { text: k.endsWith("_at") && typeof v === "number" ? dateTime(v) : value(v) }),
  ]));
  const copyRows = copiesOf(record.name).map(({ worker, copy }) => el("tr", { "data-worker": worker.worker },
    el("td", { text: workerLabel(worker), title: worker.worker }), el("td", { class: "num", text: count(copy.count) }),
    el("td", { class: "lsn", text: copy.applied_lsn }), el("td", { text: lagText(copy) }),
    el("td", { class: "num", text: bytes(copy.index_bytes) })));
  const parts = [el("h3", { text: record.name }), facts, el("h4", { text: "Copies in workers" })];
  parts.push(copyRows.length
    ? el("table", { class: "copies-table" }, el("thead", {}, el("tr", {}, ...["worker", "rows", "applied lsn",
      "lag", "index"].map((h) => el("th", { text: h })))), el("tbody", {}, ...copyRows))
    : el("p", { class: "empty", text: "No live worker holds a copy yet (a worker loads it on its first job)." }));
  if (Array.isArray(record.segments) && record.segments.length) {
    parts.push(el("h4", { text: `Sealed segments (${record.segments.length})` }), segmentsTable(record.segments));
  }
  box.replaceChildren(...parts);
  show(box, true);
}

function segmentsTable(segments) {
  const columns = [];
  for (const s of segments) for (const k of Object.keys(s)) if (!columns.includes(k)) columns.push(k);
  const cell = (k, v) => {
    if (k === "bytes" && typeof v === "number") return bytes(v);
    if (k.endsWith("_at") && typeof v === "number") return dateTime(v);
    return value(v);
  };
  return el("table", { id: "segments-table" },
    el("thead", {}, el("tr", {}, ...columns.map((k) => el("th", { text: k })))),
    el("tbody", {}, ...segments.map((s) => el("tr", {}, ...columns.map((k) => el("td", { text: cell(k, s[k]) }))))));
}

// Workers ------------------------------------------------------------------------------------------------------------

function memoryText(w) {
  const m = w.memory;
  if (m && typeof m === "object" && Object.keys(m).length) {
    return Object.entries(m).map(([k, v]) => `${k} ${bytes(v)}`).join(" · ");
  }
  const indexes = (w.collections || []).reduce((a, c) => a + (c.index_bytes || 0), 0);
  return indexes ? `indexes ${bytes(indexes)}` : "—";
}

function lastJobText(job) {
  if (!job) return "—";
  const what = [job.type, job.collection, job.status].filter(Boolean).join(" · ");
  const took = job.duration_ms !== undefined ? ` in ${seconds(job.duration_ms / 1000)}` : "";
  return `${what}${took}${job.at ? ` at ${clock(job.at)}` : ""}`;
}

async function renderWorkers() {
  const data = state.workers;
  const t = now();
  const alive = data.workers.length;
  const gone = Array.from(state.seen.values()).filter((s) => s.goneAt !== null);
  $("#workers-summary").textContent = `${alive} alive${gone.length ? `, ${gone.length} gone` : ""} · `
    + `a worker that misses heartbeats for ${data.heartbeat_ttl_s} s is gone`;
  const rows = [];
  for (const { view: w, goneAt } of state.seen.values()) {
    const beat = w.beat_at ? `beat ${seconds(Math.max(0, t - w.beat_at))} ago` : "";
    rows.push(el("tr", { "data-worker": w.worker, class: goneAt === null ? "alive" : "gone" },
      el("td", { class: "name", text: w.worker, title: `${w.host || ""} pid ${w.pid || ""}` }),
      el("td", { class: "state", text: goneAt === null ? `alive · ${beat}` : `gone since ${clock(goneAt)}` }),
      el("td", { text: goneAt === null ? seconds(w.uptime_s) : "—" }),
      el("td", { class: "num", text: count(w.jobs_done) }),
      el("td", { text: lastJobText(w.last_job) }),
      el("td", { text: memoryText(w) }),
      el("td", { text: (w.collections || []).map((c) => c.name).join(", ") || "—" })));
  }
  rows.sort((a, b) => (a.className === b.className ? 0 : a.className === "alive" ? -1 : 1));
  fill($("#workers-table tbody"), rows);
}

// Queue -------------------------------------------------------------------------------------------------------------

function niceTop(v) {
  if (v <= 4) return Math.max(1, Math.ceil(v));
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawQueue(samples) {
  const W = 760; const H = 230; const L = 46; const R = 14; const T = 14; const B = 30;
  const t1 = now();
  const span = Math.min(QUEUE_WINDOW_S, Math.max(60, samples.length ? t1 - samples[0].t : 60));
  const t0 = t1 - span;
  const peakQueued = Math.max(0, ...samples.map((s) => s.queued));
  const top = niceTop(Math.max(1, peakQueued, ...samples.map((s) => s.running)));
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const chart = svg("svg", {
    id: "queue-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "queue depth over time",
    "data-samples": samples.length, "data-max-queued": peakQueued,
  });
  const ticks = top <= 4 ? Array.from({ length: top + 1 }, (_, i) => i) : [0, top / 2, top];
  for (const v of ticks) {
    chart.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    chart.append(svg("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
  }
  const step = span > 240 ? 60 : span > 90 ? 30 : 15;
  for (let s = 0; s <= span; s += step) {
    const label = s === 0 ? "now" : s % 60 === 0 ? `−${s / 60} min` : `−${s} s`;
    chart.append(svg("text", { class: "axis", x: x(t1 - s), y: H - 10, "text-anchor": "middle" }, label));
  }
  const gap = (3 * REFRESH_MS) / 1000;
  for (const [key, cls] of [["running", "running"], ["queued", "queued"]]) {
    let d = "";
    let prev = null;
    for (const s of samples) {
      d += `${prev === null || s.t - prev > gap ? "M" : "L"}${x(s.t).toFixed(1)},${y(s[key]).toFixed(1)} `;
      prev = s.t;
    }
    if (d) chart.append(svg("path", { class: `series ${cls}`, d: d.trim() }));
    const last = samples[samples.length - 1];
    if (last) chart.append(svg("circle", { class: `dot ${cls}`, cx: x(last.t), cy: y(last[key]), r: 3 }));
  }
  const legend = svg("g", { class: "legend" });
  const lx = W - R - 150;
  legend.append(svg("rect", { class: "key queued", x: lx, y: T + 2, width: 12, height: 4 }));
  legend.append(svg("text", { x: lx + 16, y: T + 8 }, "waiting"));
  legend.append(svg("rect", { class: "key running", x: lx + 80, y: T + 2, width: 12, height: 4 }));
  legend.append(svg("text", { x: lx + 96, y: T + 8 }, "running"));
  chart.append(legend);
  return chart;
}

async function renderQueue() {
  const last = state.samples[state.samples.length - 1];
  const peak = Math.max(0, ...state.samples.map((s) => s.queued));
  $("#queue-summary").textContent = last
    ? `${count(last.queued)} waiting · ${count(last.running)} running · ${last.workers} workers · `
      + `peak ${count(peak)} waiting in the last ${seconds(last.t - state.samples[0].t)}`
    : "no sample yet";
  $("#queue-chart-box").replaceChildren(drawQueue(state.samples));
}

// Jobs --------------------------------------------------------------------------------------------------------------

function errorText(job) {
  return job.error ? `${job.error.code}: ${job.error.message}` : "";
}

function jobRow(job) {
  return el("tr", {
    "data-job": job.job_id, class: state.job && state.job.id === job.job_id ? "selected" : null,
    onclick: () => openJob(job.job_id),
  },
  el("td", { text: clock(job.submitted_at) }), el("td", { class: "id", text: shortId(job.job_id), title: job.job_id }),
  el("td", { text: job.type }), el("td", { text: job.collection || "—" }), el("td", {}, badge(job.status)),
  el("td", { class: "num", text: seconds(duration(job)) }), el("td", { class: "worker", text: job.worker || "—" }),
  el("td", { class: "error-text", text: errorText(job) }));
}

async function renderJobs() {
  await loadCollections();
  const q = query({
    collection: $("#jobs-collection").value, status: $("#jobs-status").value, type: $("#jobs-type").value, limit: 50,
  });
  const { data } = await api(`/v1/jobs${q}`);
  fill($("#jobs-table tbody"), data.jobs.map(jobRow));
  show($("#jobs-empty"), data.jobs.length === 0);
  if (state.job && (!state.job.record || !TERMINAL.has(state.job.record.status))) await loadJob(state.job.id);
  renderJobDetail();
}

async function openJob(id) {
  state.job = { id, record: null };
  for (const tr of document.querySelectorAll("#jobs-table tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.job === id);
  }
  try {
    await loadJob(id);
  } catch (err) {
    showError(err);
  }
  renderJobDetail();
}

async function loadJob(id) {
  try {
    const { data } = await api(`/v1/jobs/${path(id)}`);
    if (state.job && state.job.id === id) state.job.record = data;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404 && state.job) state.job.record = { gone: true };
    else throw err;
  }
}

function renderJobDetail() {
  const box = $("#job-detail");
  if (!state.job || !state.job.record) { show(box, false); return; }
  const job = state.job.record;
  if (job.gone) {
    box.replaceChildren(el("p", { class: "empty", text: `Job ${state.job.id}: unknown or expired.` }));
    show(box, true);
    return;
  }
  const facts = [
    ["job", job.job_id], ["type", job.type], ["collection", job.collection], ["status", job.status],
    ["submitted", clock(job.submitted_at)],
    ["waited in queue", job.started_at && job.submitted_at ? seconds(job.started_at - job.submitted_at) : "—"],
    ["ran for", seconds(duration(job))], ["worker", job.worker], ["attempts", job.attempts],
  ];
  if (job.progress) facts.push(["progress", `${count(job.progress.done)} / ${count(job.progress.total)}`]);
  const parts = [
    el("h3", {}, "Job ", el("code", { text: job.job_id }), " ", badge(job.status),
      el("button", { type: "button", class: "close", text: "close", onclick: () => { state.job = null; renderJobDetail(); } })),
    el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: value(v) })])),
  ];
  if (job.error) {
    parts.push(el("p", { class: "error job-error", text: `${job.error.code}: ${job.error.message}`
      + `${job.error.field ? ` (field ${job.error.field})` : ""}` }));
  }
  parts.push(el("h4", { text: `GET /v1/jobs/${job.job_id}` }), el("pre", { class: "record", text: JSON.stringify(job, null, 2) }));
  box.replaceChildren(...parts);
  show(box, true);
}

// Search playground -------------------------------------------------------------------------------------------------

async function renderSearch() {
  await loadCollections();
}

function parseVector(text) {
  const t = text.trim();
  if (!t) throw new Error("paste a query vector, or load a stored one by its id");
  let v;
  if (t.startsWith("[")) {
    try { v = JSON.parse(t); } catch { throw new Error("the query vector is not valid JSON"); }
  } else {
    v = t.split(/[\s,]+/).filter(Boolean).map(Number);
  }
  const isRow = (r) => Array.isArray(r) && r.length && r.every((n) => typeof n === "number" && Number.isFinite(n));
  if (isRow(v)) return { vector: v };
  if (Array.isArray(v) && v.length && v.every(isRow)) return { vectors: v };
  throw new Error("a query vector is a list of numbers, e.g. [0.1, 0.2, 0.3]");
}

function searchMessage(text) {
  $("#search-error").textContent = text || "";
  show($("#search-error"), Boolean(text));
}

async function loadStored() {
  const name = $("#search-collection").value;
  const id = $("#search-id").value.trim();
  searchMessage("");
  if (!name || !id) { searchMessage("pick a collection and type a vector id"); return; }
  $("#search-load-status").textContent = "loading…";
  try {
    const { data } = await api(`/v1/collections/${path(name)}/vectors/${path(id)}`);
    $("#search-vector").value = JSON.stringify(data.vector);
    $("#search-load-status").textContent = `vector of ${data.id} (${data.vector.length} numbers)`;
  } catch (err) {
    $("#search-load-status").textContent = "";
    searchMessage(err.message);
  }
}

async function runSearch(event) {
  event.preventDefault();
  searchMessage("");
  const name = $("#search-collection").value;
  let body;
  try {
    if (!name) throw new Error("pick a collection");
    body = parseVector($("#search-vector").value);
    const params = $("#search-params").value.trim();
    if (params) {
      try { body.params = JSON.parse(params); } catch { throw new Error("params must be a JSON object"); }
    }
  } catch (err) {
    searchMessage(err.message);
    return;
  }
  body.k = Number($("#search-k").value) || 10;
  body.include_metadata = $("#search-metadata").checked;
  body.consistency = $("#search-consistency").value;
  $("#search-run").disabled = true;
  try {
    let { status, data } = await api(`/v1/collections/${path(name)}/search?wait=30`, { method: "POST", body });
    while (status === 202) { // the wait ran out: the job goes on, poll its record
      const job = (await api(`/v1/jobs/${path(data.job_id)}?wait=10`)).data;
      if (job.status === "succeeded") { data = job.result; status = 200; }
      else if (TERMINAL.has(job.status)) throw new Error(job.error ? job.error.message : `search ${job.status}`);
    }
    showHits(name, data);
  } catch (err) {
    searchMessage(err.message);
  } finally {
    $("#search-run").disabled = false;
  }
}

function showHits(name, data) {
  const meta = $("#search-meta");
  meta.replaceChildren(`${name}: served by worker `, el("b", { id: "search-worker", text: data.worker || "—" }),
    " in ", el("b", { id: "search-took", text: `${data.took_ms}` }), " ms · lsn ",
    el("code", { text: data.lsn || "—" }));
  show(meta, true);
  const hitRow = (h, i) => el("tr", { "data-id": h.id },
    el("td", { class: "num", text: i + 1 }),
    el("td", { class: "id" }, el("a", {
      href: "#search", text: h.id, title: "search with this vector",
      onclick: (e) => { e.preventDefault(); $("#search-id").value = h.id; loadStored(); },
    })),
    el("td", { class: "num score", "data-score": String(h.score), text: Number(h.score).toPrecision(6) }),
    el("td", { class: "metadata", text: h.metadata === undefined ? "" : value(h.metadata) }));
  const head = el("thead", {}, el("tr", {}, ...["#", "id", "score", "metadata"].map((h) => el("th", { text: h }))));
  const tables = data.results.map((hits, q) => el("div", { class: "hits" },
    data.results.length > 1 ? el("h4", { text: `query ${q + 1}` }) : null,
    el("table", { class: "hits-table" }, head.cloneNode(true), el("tbody", {}, ...hits.map(hitRow))),
    hits.length ? null : el("p", { class: "empty", text: "no hit" })));
  $("#search-results").replaceChildren(...tables);
}

// Ingest ------------------------------------------------------------------------------------------------------------

async function renderIngest() {
  const { data } = await api(`/v1/jobs${query({ type: "ingest", limit: 20 })}`);
  const jobs = data.jobs.slice().sort((a, b) => Number(TERMINAL.has(a.status)) - Number(TERMINAL.has(b.status)));
  const cards = jobs.map((job) => {
    const p = job.progress || { done: 0, total: 0 };
    const ran = duration(job);
    const rate = ran && p.done ? `${count(Math.round(p.done / ran))} vectors/s` : "";
    const pct = p.total ? Math.floor((100 * p.done) / p.total) : 0;
    return el("div", { class: `ingest ${job.status}`, "data-job": job.job_id },
      el("div", { class: "ingest-head" }, el("b", { text: job.collection || "—" }), " ", badge(job.status), " ",
        el("code", { text: shortId(job.job_id), title: job.job_id })),
      el("progress", { max: p.total || 1, value: p.done }),
      el("div", { class: "ingest-numbers" },
        el("span", { class: "done", text: `${count(p.done)} / ${count(p.total)} vectors (${pct}%)` }),
        el("span", { text: [seconds(ran), rate].filter((s) => s && s !== "—").join(" · ") }),
        el("span", { text: `submitted ${clock(job.submitted_at)}` })),
      job.error ? el("p", { class: "error", text: errorText(job) }) : null);
  });
  $("#ingest-list").replaceChildren(...cards);
  show($("#ingest-empty"), cards.length === 0);
}

const RENDER = {
  collections: renderCollections, workers: renderWorkers, queue: renderQueue, jobs: renderJobs,
  search: renderSearch, ingest: renderIngest,
};

// Pages ---------------------------------------------------------------------------------------------------------------

function openPage() {
  const page = location.hash.slice(1);
  state.page = PAGES.includes(page) ? page : "collections";
  for (const p of PAGES) show($(`#page-${p}`), p === state.page);
  for (const a of document.querySelectorAll("#tabs a")) {
    if (a.dataset.page === state.page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  refresh();
}

function start() {
  $("#key-form").addEventListener("submit", (e) => { e.preventDefault(); useKey($("#key-input").value.trim()); });
  $("#forget-key").addEventListener("click", () => { $("#key-input").value = ""; useKey(""); });
  show($("#forget-key"), Boolean(state.key));
  $("#pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("#pause").textContent = state.paused ? "Resume" : "Pause";
    $("#updated").textContent = state.paused ? "paused" : $("#updated").textContent;
    if (!state.paused) refresh();
  });
  $("#jobs-filter").addEventListener("change", () => refresh());
  $("#jobs-filter").addEventListener("submit", (e) => e.preventDefault());
  $("#search-form").addEventListener("submit", runSearch);
  $("#search-load").addEventListener("click", loadStored);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  window.addEventListener("hashchange", openPage);
  openPage();
}

start();
