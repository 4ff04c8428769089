// Cogo dashboard: polls GET /api/dashboard and draws the cards as inline SVG.
// No framework and nothing from outside this origin: it must work offline.
"use strict";

const TOKEN_KEY = "cogo.apiToken";
const REFRESH_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#d93b3b", "#e08a1e", "#8e5bd9", "#1f9bb5", "#c2417f", "#6b7587", "#3d8b37"];
const STAGES = [
  ["dev_e2e", "Dev E2E"], ["smoke", "CI smoke"], ["canary", "Canary"], ["promote", "Promote 100%"],
];

const state = { timer: null, busy: false, lag: [], dlq: [], selectedRun: null, errorColors: {},
  watching: null };

class AuthError extends Error {}

// -- small DOM helpers -------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// draw at the container's own width: text stays at its CSS size, lines stay crisp
function widthOf(container, fallback) {
  return Math.max(240, Math.round(container.clientWidth || fallback));
}

function titled(node, text) { node.append(svg("title", {}, text)); return node; }

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1) return ms.toFixed(2) + " ms";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  return (ms / 60000).toFixed(1) + " min";
}
function fmtPct(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%"; }
function fmtInt(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function shortId(id) { return id && id.length > 14 ? id.slice(0, 12) + "…" : id; }
function errorColor(code) {
  if (!(code in state.errorColors)) {
    state.errorColors[code] = PALETTE[Object.keys(state.errorColors).length % PALETTE.length];
  }
  return state.errorColors[code];
}
function niceMax(v) {
  if (!v || v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
function setValue(key, text, unit) {
  const node = document.querySelector(`[data-testid="${key}"]`);
  node.replaceChildren(text, unit ? " " : "", unit ? el("span", { class: "unit" }, unit) : "");
}
function empty(container, text) {
  container.replaceChildren(el("div", { class: "empty" }, text));
}

// -- the API -----------------------------------------------------------------------------

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, { text = false, method = "GET", body = undefined } = {}) {
  const headers = token() ? { Authorization: "Bearer " + token() } : {};
  const init = { headers, cache: "no-store", method };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new AuthError("the API refused the token");
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${response.status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return text ? response.text() : response.json();
}

function takeTokenFromLink() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of history
  }
}

function showLogin(why) {
  clearTimeout(state.timer);
  $("main").hidden = true;
  $("login").hidden = false;
  if (why) $("login-why").textContent = why;
  $("token-input").focus();
}

// -- charts ------------------------------------------------------------------------------

function hbars(container, rows, { max = 1, format = fmtPct, color = "#2f6fed" } = {}) {
  if (!rows.length) return empty(container, "no finished tasks in this window");
  rows = rows.map((r) => ({ ...r, label: String(r.label ?? "–") }));
  const W = widthOf(container, 360), row = 22, labelW = 120, H = rows.length * row + 4;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  rows.forEach((r, i) => {
    const y = i * row + 3, bw = W - labelW - 52;
    const w = Math.max(0, Math.min(1, (r.value || 0) / max)) * bw;
    g.append(
      svg("text", { x: 0, y: y + 12, class: "label" }, r.label.length > 18 ? r.label.slice(0, 17) + "…" : r.label),
      svg("rect", { x: labelW, y, width: bw, height: 14, rx: 3, class: "track" }),
      titled(svg("rect", { x: labelW, y, width: w, height: 14, rx: 3, fill: r.color || color }), r.title || ""),
      svg("text", { x: W, y: y + 12, "text-anchor": "end", class: "strong" }, format(r.value)),
    );
  });
  container.replaceChildren(g);
}

function groupedBars(container, rows) {
  if (!rows.length) return empty(container, "no attempts in this window");
  const W = widthOf(container, 360), row = 30, labelW = 120, H = rows.length * row + 4;
  const max = niceMax(Math.max(...rows.map((r) => r.p90_ms || 0)));
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const bw = W - labelW - 62;
  rows.forEach((r, i) => {
    const y = i * row + 2;
    g.append(
      svg("text", { x: 0, y: y + 15, class: "label" }, r.route),
      titled(svg("rect", { x: labelW, y, width: Math.max(1, (r.p50_ms || 0) / max * bw), height: 10, rx: 2, fill: "#7fa6f5" }), `p50 ${fmtMs(r.p50_ms)}`),
      titled(svg("rect", { x: labelW, y: y + 12, width: Math.max(1, (r.p90_ms || 0) / max * bw), height: 10, rx: 2, fill: "#2f6fed" }), `p90 ${fmtMs(r.p90_ms)}`),
      svg("text", { x: W, y: y + 9, "text-anchor": "end" }, fmtMs(r.p50_ms)),
      svg("text", { x: W, y: y + 21, "text-anchor": "end", class: "strong" }, fmtMs(r.p90_ms)),
    );
  });
  container.replaceChildren(g);
}

// minute slots covering the window, oldest first, at most 60 bars
function slots(summary) {
  const since = new Date(summary.since).getTime(), until = new Date(summary.generated_at).getTime();
  const minutes = Math.max(1, Math.round((until - since) / 60000));
  const n = Math.min(60, minutes), width = Math.ceil(minutes / n) * 60000;
  const start = Math.floor(until / 60000) * 60000 - (n - 1) * width;
  const index = (iso) => Math.floor((new Date(iso).getTime() - start) / width);
  return { n, start, width, index };
}

function columns(container, s, series, { keys, colors, unit }) {
  const W = widthOf(container, 720), H = 150, left = 34, bottom = 18, top = 6;
  const totals = series.map((b) => keys.reduce((a, k) => a + (b[k] || 0), 0));
  const max = niceMax(Math.max(1, ...totals));
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const plotH = H - bottom - top, slotW = (W - left) / s.n;
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    g.append(svg("line", { x1: left, x2: W, y1: y, y2: y, class: f ? "grid" : "axis" }));
    // counts are whole: a gridline at a fraction (0.5 of 1) gets no label, never a rounded one
    if (Number.isInteger(max * f)) {
      g.append(svg("text", { x: left - 5, y: y + 3, "text-anchor": "end" }, fmtInt(max * f)));
    }
  }
  series.forEach((b, i) => {
    let y = top + plotH;
    const x = left + i * slotW + slotW * 0.14;
    keys.forEach((k) => {
      const v = b[k] || 0;
      if (!v) return;
      const h = (v / max) * plotH;
      y -= h;
      g.append(titled(svg("rect", { x, y, width: slotW * 0.72, height: Math.max(h, 1), rx: 1.5, fill: colors[k] }),
        `${fmtTime(new Date(s.start + i * s.width).toISOString())}  ${k}: ${v} ${unit}`));
    });
  });
  for (const i of [0, Math.floor(s.n / 2), s.n - 1]) {
    g.append(svg("text", { x: left + (i + 0.5) * slotW, y: H - 4, "text-anchor": "middle" },
      fmtTime(new Date(s.start + i * s.width).toISOString()).slice(0, 5)));
  }
  container.replaceChildren(g);
}

function area(container, values, { color = "#2f6fed", label = "" } = {}) {
  const W = 200, H = 60;
  if (values.length < 2) values = [values[0] || 0, values[0] || 0];
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) => [(i / (values.length - 1)) * W, H - 4 - (v / max) * (H - 10)]);
  const line = pts.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join(" ");
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", preserveAspectRatio: "none" },
    svg("path", { d: `${line} L${W} ${H} L0 ${H} Z`, fill: color, "fill-opacity": 0.12 }),
    svg("path", { d: line, fill: "none", stroke: color, "stroke-width": 1.8, "vector-effect": "non-scaling-stroke" }));
  if (label) titled(g, label);
  container.replaceChildren(g);
}

function timeline(container, run) {
  const nodes = run.nodes.filter((n) => n.startedAt);
  const head = el("h3", {}, `Run ${run.runId} · ${run.workflowId} · `,
    el("span", { class: "badge " + run.status }, run.status),
    run.durationMs ? `  ${fmtMs(run.durationMs)}` : "");
  if (!nodes.length) {
    container.replaceChildren(head, el("div", { class: "empty-note" }, "no node has started yet"));
    return;
  }
  const t0 = Math.min(...nodes.map((n) => Date.parse(n.startedAt)));
  const now = Date.now();
  const t1 = Math.max(...nodes.map((n) => (n.endedAt ? Date.parse(n.endedAt) : now)), t0 + 1);
  const W = widthOf(container, 900), row = 26, labelW = 170, right = 90, H = run.nodes.length * row + 22;
  const x = (t) => labelW + ((t - t0) / (t1 - t0)) * (W - labelW - right);
  const colors = { succeeded: "#15935b", failed: "#d93b3b", running: "#2f6fed", retrying: "#c97a0a",
    skipped: "#a3acbb", cancelled: "#a3acbb", pending: "#d5dae3" };
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-testid": "timeline" });
  run.nodes.forEach((n, i) => {
    const y = i * row + 4;
    g.append(svg("text", { x: 0, y: y + 13, class: "label" }, `${n.id}`),
      svg("text", { x: 90, y: y + 13 }, n.type + (n.verdict ? ` · ${n.verdict}` : "")));
    g.append(svg("rect", { x: labelW, y: y + 2, width: W - labelW - right, height: 14, rx: 3, class: "track" }));
    const attempts = n.attempts.length ? n.attempts : [{ startedAt: n.startedAt, endedAt: n.endedAt, status: n.status }];
    for (const a of attempts) {
      if (!a.startedAt) continue;
      const s = Date.parse(a.startedAt), e = a.endedAt ? Date.parse(a.endedAt) : now;
      g.append(titled(svg("rect", { x: x(s), y: y + 2, width: Math.max(3, x(e) - x(s)), height: 14, rx: 3,
        fill: colors[a.status] || colors.pending }),
      `${n.id} attempt ${a.attempt || 1}: ${a.status} ${fmtMs(e - s)}${a.error ? " · " + a.error : ""}`));
    }
    const end = n.endedAt ? Date.parse(n.endedAt) : null;
    g.append(svg("text", { x: W, y: y + 13, "text-anchor": "end", class: "strong" },
      n.status === "skipped" ? "skipped" : end ? fmtMs(end - Date.parse(n.startedAt)) : n.status));
  });
  g.append(svg("line", { x1: labelW, x2: W - right, y1: H - 14, y2: H - 14, class: "axis" }),
    svg("text", { x: labelW, y: H - 2 }, "0"),
    svg("text", { x: W - right, y: H - 2, "text-anchor": "end" }, fmtMs(t1 - t0)));
  container.replaceChildren(head, g, runLinks(run));
}

// parent and child runs of a run, each opening its own timeline
function runLinks(run) {
  const link = (id, label) => el("a", { href: "#", class: "run-link", "data-open-run": id, title: id,
    onclick: (ev) => { ev.preventDefault(); openRun(id); } }, label);
  const children = [];
  for (const n of run.nodes) {
    if (n.childRunId) children.push([n.childRunId, `${n.id}: ${shortId(n.childRunId)}`]);
    for (const item of n.items || []) if (item.runId) children.push([item.runId, `${n.id}[${item.index}]: ${item.status}`]);
  }
  const parts = [];
  if (run.parent) parts.push(el("span", {}, "parent ", link(run.parent.runId, shortId(run.parent.runId))));
  if (children.length) parts.push(el("span", {}, "children ", children.map(([id, label]) => link(id, label))));
  if (run.waitingFor && run.waitingFor.length) parts.push(el("span", {}, "waiting for " + run.waitingFor.map((w) => w.name).join(", ")));
  return parts.length ? el("div", { class: "run-links", "data-testid": "run-links" }, parts) : "";
}

function stepper(rollout) {
  const W = Math.min(760, widthOf($("rollouts"), 560) - 30), H = 46, step = W / STAGES.length;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "stepper" });
  const byName = Object.fromEntries(rollout.stages.map((s) => [s.name, s]));
  STAGES.forEach(([name, title], i) => {
    const s = byName[name];
    let fill = "#d5dae3";
    if (s && s.status === "passed") fill = "#15935b";
    else if (s && s.status === "failed") fill = "#d93b3b";
    else if (s && s.status === "running") fill = rollout.status === "paused" ? "#c97a0a" : "#2f6fed";
    else if (s && s.status === "aborted") fill = "#a3acbb";
    else if (rollout.status === "promoted") fill = "#9ccfb6";
    const cx = step * i + step / 2;
    if (i) g.append(svg("line", { x1: step * (i - 1) + step / 2 + 9, x2: cx - 9, y1: 12, y2: 12, stroke: "#d5dae3", "stroke-width": 2 }));
    const pct = name === "canary" ? ` ${rollout.canary_percent}%` : "";
    g.append(titled(svg("circle", { cx, cy: 12, r: 8, fill }), s ? `${title}: ${s.status}` : `${title}: not reached`),
      svg("text", { x: cx, y: 36, "text-anchor": "middle", class: s && s.status === "running" ? "strong" : "label" }, title + pct));
  });
  return g;
}

// -- cards -------------------------------------------------------------------------------

function drawQuality(q) {
  setValue("quality", fmtPct(q.overall.quality));
  $("quality-caption").textContent = `${fmtInt(q.overall.accepted)} of ${fmtInt(q.overall.finished)} finished tasks accepted`;
  const rows = [
    ...q.by_route.map((r) => ({ label: r.route || "(no route)", value: r.quality, title: `${r.accepted}/${r.finished} accepted` })),
    ...q.by_version.map((r) => ({ label: "version " + r.version, value: r.quality, color: "#2ec4a6", title: `${r.accepted}/${r.finished} accepted` })),
  ];
  hbars($("chart-quality"), rows);
}

function drawQueue(rows) {
  const worst = rows.reduce((m, r) => Math.max(m, r.p90_ms || 0), 0);
  setValue("queue", rows.length ? fmtMs(worst) : "–", rows.length ? "worst p90" : "");
  groupedBars($("chart-queue"), rows);
}

function drawThroughput(summary, s) {
  const series = Array.from({ length: s.n }, () => ({ done: 0, failed: 0 }));
  for (const b of summary.throughput.series) {
    const i = s.index(b.minute);
    if (i >= 0 && i < s.n) { series[i].done += b.done; series[i].failed += b.failed; }
  }
  // the last five minutes, the current one included
  const recentSince = new Date(summary.generated_at).getTime() - 5 * 60000;
  const recent = summary.throughput.series
    .filter((b) => new Date(b.minute).getTime() >= recentSince - 60000)
    .reduce((a, b) => a + b.done + b.failed, 0);
  const rate = recent / 5;
  setValue("throughput", rate >= 10 ? fmtInt(Math.round(rate)) : rate.toFixed(1), "tasks/min");
  $("throughput-caption").textContent = `${fmtInt(summary.throughput.finished)} finished in the window`;
  area($("chart-throughput"), series.map((b) => b.done + b.failed), { label: "finished tasks per slot" });
}

function drawFailures(summary, s) {
  const codes = [...new Set(summary.failures.series.map((f) => f.error_code))].sort();
  const series = Array.from({ length: s.n }, () => ({}));
  for (const f of summary.failures.series) {
    const i = s.index(f.minute);
    if (i >= 0 && i < s.n) series[i][f.error_code] = (series[i][f.error_code] || 0) + f.failures;
  }
  setValue("failures", fmtInt(summary.failures.total), "failed tasks");
  const colors = Object.fromEntries(codes.map((c) => [c, errorColor(c)]));
  $("failures-legend").replaceChildren(...codes.map((c) =>
    el("span", {}, svgSwatch(colors[c]), c)));
  columns($("chart-failures"), s, series, { keys: codes, colors, unit: "failures" });
}

function svgSwatch(color) {
  return svg("svg", { width: 10, height: 10, viewBox: "0 0 10 10" }, svg("rect", { width: 10, height: 10, rx: 2, fill: color }));
}

function drawGauges(summary) {
  const dlq = summary.dlq.messages, lag = summary.projector.lag;
  setValue("dlq", fmtInt(dlq), "messages");
  setValue("lag", fmtInt(lag), "events");
  state.dlq.push(dlq || 0); state.lag.push(lag || 0);
  state.dlq = state.dlq.slice(-40); state.lag = state.lag.slice(-40);
  area($("chart-dlq"), state.dlq, { color: "#d93b3b", label: "DLQ size, recent polls" });
  area($("chart-lag"), state.lag, { color: "#8e5bd9", label: "projector lag, recent polls" });
}

function drawCohorts(rows) {
  const body = $("cohorts").tBodies[0];
  if (!rows.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "no finished tasks in this window")));
    return;
  }
  body.replaceChildren(...rows.map((r) => el("tr", {},
    el("td", { class: "mono" }, r.route || "(no route)"), el("td", {}, r.version),
    el("td", {}, el("span", { class: "badge " + r.cohort }, r.cohort)),
    el("td", { class: "num" }, fmtInt(r.finished)), el("td", { class: "num" }, fmtInt(r.failures)),
    el("td", { class: "num" }, fmtPct(r.quality)))));
}

// a run waiting at a signal node: its name, and Approve / Reject for a human gate
function waitingCell(r) {
  return el("div", { class: "waiting" }, r.waiting.map((w) => el("div", { class: "signal", "data-signal": w.name },
    el("span", { class: "badge waiting", title: `node ${w.node} waits for signal ${w.name}` }, `waiting: ${w.name}`),
    el("button", { type: "button", class: "approve", "data-testid": "approve",
      onclick: (ev) => sendSignal(ev, r.runId, w.name, true) }, "Approve"),
    el("button", { type: "button", class: "reject ghost", "data-testid": "reject",
      onclick: (ev) => sendSignal(ev, r.runId, w.name, false) }, "Reject"))));
}

function linksCell(r) {
  const parts = [];
  if (r.parentRunId) {
    parts.push(el("a", { href: "#", class: "run-link", "data-parent": r.parentRunId, title: r.parentRunId,
      onclick: (ev) => { ev.preventDefault(); ev.stopPropagation(); openRun(r.parentRunId); } },
    "child of " + shortId(r.parentRunId)));
  }
  if (r.children) parts.push(el("span", { class: "children", "data-children": r.children }, `${r.children} child run${r.children > 1 ? "s" : ""}`));
  return parts.length ? parts : "–";
}

async function sendSignal(ev, runId, name, approved) {
  ev.preventDefault();
  ev.stopPropagation();
  const box = ev.target.closest(".signal");
  for (const b of box.querySelectorAll("button")) b.disabled = true;
  try {
    await api("/api/orchestrator/signal", { method: "POST",
      body: { runId, name, data: { approved, by: "dashboard" } } });
    box.append(el("span", { class: "sent", "data-testid": "signal-sent" }, approved ? "approved" : "rejected"));
  } catch (e) {
    box.append(el("span", { class: "fail" }, String(e.message || e)));
    for (const b of box.querySelectorAll("button")) b.disabled = false;
  }
  setTimeout(refresh, 300);
}

function drawRuns(runs) {
  const body = $("runs").tBodies[0];
  if (!runs.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "no workflow runs yet")));
    return;
  }
  body.replaceChildren(...runs.map((r) => {
    const tr = el("tr", { "data-run": r.runId, "data-status": r.status,
      class: r.runId === state.selectedRun ? "selected" : null, onclick: () => openRun(r.runId) },
    el("td", { class: "mono", title: r.runId }, shortId(r.runId)),
    el("td", {}, r.workflowId || "–"),
    el("td", {}, el("span", { class: "badge " + r.status, title: r.error || "" }, r.status),
      r.waiting && r.waiting.length ? waitingCell(r) : null),
    el("td", { class: "num" }, fmtMs(r.durationMs)),
    el("td", {}, r.verdict ? el("span", { class: "badge " + r.verdict, "data-testid": "verdict",
      title: Object.entries(r.gates).map(([k, v]) => `${k}: ${v}`).join(", ") }, r.verdict) : "–"),
    el("td", {}, r.artifacts.length ? r.artifacts.map((key) => el("a", {
      href: "#", class: "artifact", "data-artifact": key, title: key,
      onclick: (ev) => { ev.preventDefault(); ev.stopPropagation(); openArtifact(key); },
    }, key.split("/").slice(1).join("/") || key)) : "–"),
    el("td", {}, linksCell(r)),
    el("td", {}, fmtTime(r.startedAt)));
    return tr;
  }));
}

function gateTable(stage) {
  if (!stage || !stage.gates.length) return el("div", { class: "empty-note" }, "no gate evaluated yet");
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, el("th", {}, "gate"), el("th", {}, "verdict"), el("th", {}, "figures"))),
    el("tbody", {}, stage.gates.map((g) => el("tr", {},
      el("td", {}, g.name), el("td", { class: g.passed ? "pass" : "fail" }, g.passed ? "pass" : "fail"),
      el("td", {}, g.detail)))));
}

function samplesTable(stage) {
  if (!stage || !stage.samples || !stage.samples.candidate) return el("div", { class: "empty-note" }, "no samples yet");
  const c = stage.samples.candidate, b = stage.samples.baseline || {};
  const line = (label, f) => el("tr", {}, el("td", {}, label), el("td", { class: "num" }, f(c)), el("td", { class: "num" }, f(b)));
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, el("th", {}, STAGES.find((s) => s[0] === stage.name)[1]),
      el("th", { class: "num" }, "candidate"), el("th", { class: "num" }, "baseline"))),
    el("tbody", {},
      line("finished tasks", (x) => fmtInt(x.finished)),
      line("failure rate", (x) => fmtPct(x.failure_rate)),
      line("decision quality", (x) => fmtPct(x.decision_quality)),
      line("latency p90", (x) => fmtMs(x.p90_ms))));
}

function drawRollouts(rollouts) {
  if (!rollouts.length) {
    $("rollouts").replaceChildren(el("div", { class: "empty-note" },
      "no rollouts yet: POST /api/rollouts {\"route\", \"candidate\"} starts one"));
    return;
  }
  $("rollouts").replaceChildren(...rollouts.map((r) => {
    const evaluated = [...r.stages].reverse().find((s) => s.gates.length) || null;
    const current = r.stages[r.stages.length - 1] || null;
    return el("div", { class: "rollout", "data-rollout": r.id },
      el("div", { class: "rollout-head" },
        el("span", { class: "title mono" }, r.route),
        el("span", {}, `${r.candidate} vs ${r.baseline || "unversioned baseline"}`),
        el("span", { class: "badge " + r.status }, r.status.replace("_", " ")),
        el("span", { class: "meta" }, `${r.percent}% to candidate · started ${fmtTime(r.created_at)} · id ${r.id}`)),
      stepper(r),
      r.reason ? el("div", { class: "reason" }, r.reason) : null,
      el("div", { class: "body" }, samplesTable(current && current.samples.candidate ? current : evaluated), gateTable(evaluated)));
  }));
}

function fmtUsd(x) {
  if (x === null || x === undefined) return "–";
  return "$" + (x >= 1 ? x.toFixed(2) : x >= 0.01 ? x.toFixed(3) : x.toFixed(5));
}

function drawSpend(spend) {
  setValue("spend", fmtUsd(spend.cost_usd));
  $("spend-caption").textContent = `${fmtInt(spend.tokens)} tokens in ${fmtInt(spend.calls)} LLM calls`
    + ` by ${fmtInt(spend.tasks)} tasks` + (spend.estimated_calls ? ` (${spend.estimated_calls} estimated)` : "");
  const max = Math.max(1e-9, ...spend.by_route.map((r) => r.cost_usd), ...spend.by_model.map((r) => r.cost_usd));
  const rows = [
    ...spend.by_route.map((r) => ({ label: r.route, value: r.cost_usd, title: `${fmtInt(r.tokens)} tokens, ${r.calls} calls` })),
    ...spend.by_model.map((r) => ({ label: "model " + r.model, value: r.cost_usd, color: "#2ec4a6", title: `${fmtInt(r.tokens)} tokens, ${r.calls} calls` })),
  ];
  if (!rows.length) return empty($("chart-spend"), "no LLM calls in this window");
  hbars($("chart-spend"), rows, { max, format: fmtUsd });
}

function drawTasks(tasks) {
  const body = $("tasks").tBodies[0];
  if (!tasks.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "no tasks in this window")));
    return;
  }
  body.replaceChildren(...tasks.map((t) => el("tr", { "data-task": t.task_id, "data-status": t.status,
    class: t.task_id === state.watching ? "selected" : null, onclick: () => watch(t.task_id) },
  el("td", { class: "mono", title: t.task_id }, shortId(t.task_id)), el("td", { class: "mono" }, t.route || "–"),
  el("td", {}, el("span", { class: "badge " + t.status }, t.status)),
  el("td", { class: "num" }, fmtInt(t.attempt)), el("td", { class: "num" }, fmtInt(t.llm_calls)),
  el("td", { class: "num" }, fmtInt(t.steps)), el("td", {}, fmtTime(t.enqueued_at)))));
}

// durable agents waiting: each child right under its parent (indented by its depth)
function drawSuspended(tasks) {
  const body = $("suspended").tBodies[0];
  if (!tasks || !tasks.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "no suspended tasks")));
    return;
  }
  const byId = new Map(tasks.map((t) => [t.task_id, t]));
  const roots = tasks.filter((t) => !t.parent_id || !byId.has(t.parent_id));
  const ordered = [];
  const visit = (t) => {
    ordered.push(t);
    tasks.filter((c) => c.parent_id === t.task_id).forEach(visit);
  };
  roots.forEach(visit);
  const waits = (t) => t.waiting_for.map((w) => w.kind + (w.name ? " " + w.name : "")).join(", ") || "–";
  body.replaceChildren(...ordered.map((t) => el("tr", { "data-task": t.task_id, onclick: () => watch(t.task_id) },
    el("td", { class: "mono", title: t.task_id, style: `padding-left:${0.5 + 1.2 * t.depth}em` },
      t.parent_id ? "…/" + t.task_id.slice(t.parent_id.length + 1) : shortId(t.task_id)),
    el("td", { class: "mono" }, t.route || "–"),
    el("td", { class: "mono", title: t.parent_id || "" }, t.parent_id ? shortId(t.parent_id) : "–"),
    el("td", { class: "mono" }, waits(t)), el("td", {}, fmtTime(t.suspended_at)))));
}

// a task's output: GET /api/tasks/{id}/stream read with fetch (EventSource cannot send the
// token), Server-Sent Events parsed here; chunks appear as they are emitted
async function watch(taskId) {
  if (state.watching === taskId) return;
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  state.watching = taskId;
  for (const tr of $("tasks").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.task === taskId);
  const box = $("output"), body = $("output-body"), badge = $("output-state");
  box.hidden = false;
  box.dataset.task = taskId;
  box.dataset.state = "connecting";
  $("output-title").textContent = "Output of " + taskId;
  badge.className = "badge running";
  badge.textContent = "connecting";
  body.replaceChildren();
  let attempt = null, buffer = "";
  const show = (event, data) => {
    if (event === "end") {
      box.dataset.state = "ended";
      box.dataset.status = data.status || "";
      badge.className = "badge " + (data.status || "");
      badge.textContent = data.status + (data.error_code ? " · " + data.error_code : "");
      return;
    }
    if (data.attempt !== attempt) {
      if (attempt !== null) body.append(el("span", { class: "attempt" }, `— attempt ${data.attempt} —`));
      attempt = data.attempt;
    }
    const text = typeof data.data === "string" ? data.data : JSON.stringify(data.data);
    body.append(el("span", { class: "chunk" + (typeof data.data === "string" ? "" : " json"),
      "data-seq": data.seq, "data-attempt": data.attempt }, text));
    body.scrollTop = body.scrollHeight;
  };
  try {
    const headers = token() ? { Authorization: "Bearer " + token() } : {};
    const response = await fetch("/api/tasks/" + encodeURIComponent(taskId) + "/stream",
      { headers, cache: "no-store", signal: controller.signal });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
      throw new Error(`${response.status} ${detail}`);
    }
    box.dataset.state = "live";
    badge.textContent = "live";
    const reader = response.body.getReader(), decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) show(event, JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
    box.dataset.state = "error";
    badge.className = "badge failed";
    badge.textContent = String(e.message || e);
  } finally {
    if (state.stream === controller) state.stream = null;
  }
}

// -- actions -----------------------------------------------------------------------------

async function openRun(runId) {
  state.selectedRun = runId;
  for (const tr of $("runs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.run === runId);
  const box = $("timeline");
  box.hidden = false;
  try {
    timeline(box, await api("/api/orchestrator/state?runId=" + encodeURIComponent(runId)));
  } catch (e) {
    box.replaceChildren(el("div", { class: "empty-note" }, String(e.message || e)));
  }
}

async function openArtifact(key) {
  const path = "/api/artifacts/" + key.split("/").map(encodeURIComponent).join("/");
  $("artifact-title").textContent = key;
  $("artifact-body").textContent = "loading…";
  $("artifact").showModal();
  try {
    let body = await api(path, { text: true });
    try { body = JSON.stringify(JSON.parse(body), null, 2); } catch (e) { /* not JSON: as is */ }
    $("artifact-body").textContent = body;
  } catch (e) {
    $("artifact-body").textContent = String(e.message || e);
  }
}

// -- the loop ----------------------------------------------------------------------------

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const summary = await api("/api/dashboard?window=" + encodeURIComponent($("window").value));
    $("login").hidden = true;
    $("main").hidden = false;
    const s = slots(summary);
    drawQuality(summary.decision_quality);
    drawQueue(summary.queue_wait);
    drawThroughput(summary, s);
    drawFailures(summary, s);
    drawGauges(summary);
    drawSpend(summary.spend);
    drawTasks(summary.tasks);
    drawSuspended(summary.suspended);
    drawRollouts(summary.rollouts);
    drawCohorts(summary.cohorts);
    drawRuns(summary.runs);
    $("status").textContent = "live · updated " + fmtTime(summary.generated_at);
    $("status").classList.remove("error");
    $("foot").textContent = `window ${summary.window} · since ${new Date(summary.since).toLocaleString()}`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    if (e instanceof AuthError) {
      // a first visit has no token at all: ask for one, do not say it was refused
      const given = localStorage.getItem(TOKEN_KEY);
      showLogin(given
        ? "The API refused this token. Paste the api_token from endpoints.json."
        : "This dashboard needs the API token: open the link `cogo up` printed, or paste the api_token from endpoints.json.");
      $("status").textContent = given ? "token refused" : "waiting for a token";
      return;
    }
    $("status").textContent = "update failed: " + (e.message || e);
    $("status").classList.add("error");
  } finally {
    state.busy = false;
  }
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function init() {
  takeTokenFromLink();
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    refresh();
  });
  $("forget").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); showLogin(); });
  $("window").addEventListener("change", () => { state.lag = []; state.dlq = []; refresh(); });
  $("artifact-close").addEventListener("click", () => $("artifact").close());
  $("follow-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("follow-input").value.trim();
    if (id) { state.watching = null; watch(id); }
  });
  window.addEventListener("hashchange", () => { takeTokenFromLink(); refresh(); });
  refresh();
}

document.addEventListener("DOMContentLoaded", init);
