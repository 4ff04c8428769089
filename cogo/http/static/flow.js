// Cogo dashboard, the flow control panel: polls GET /api/flow (cogo/http/flow.py) and lists,
// per flow-controlled route and key, what runs, what waits and the rate of starts.
// Uses dashboard.js's helpers (el, $, api, fmtInt), loaded before it.
"use strict";

const FLOW_REFRESH_MS = 3000;

function flowLimits(limits) {
  const parts = [];
  if (limits.concurrency !== null) parts.push(`${limits.concurrency} at once`);
  if (limits.concurrency_per_key !== null) parts.push(`${limits.concurrency_per_key} per key`);
  if (limits.rate_per_key_s !== null) parts.push(`${limits.rate_per_key_s}/s per key (burst ${limits.burst})`);
  return parts.join(" · ") || "none";
}

// the route's own row (first: its totals and limits), then one row per key
function flowRow(route, key, first) {
  const held = key.held_by ? el("span", { class: "badge waiting" }, key.held_by) : "";
  const attrs = first ? { "data-route": route.route, class: "total" }
    : { "data-route": route.route, "data-key": key.key };
  return el("tr", attrs,
    el("td", { class: "mono" }, first ? route.route : ""),
    first ? el("td", {}, "all keys") : el("td", { class: "mono" }, key.key === "" ? "(no key)" : key.key),
    el("td", { class: "num" }, fmtInt(key.running)),
    el("td", { class: "num" }, fmtInt(key.waiting)),
    el("td", { class: "num" }, key.rate_per_s.toFixed(1)),
    el("td", {}, held),
    el("td", {}, first ? flowLimits(route.limits) : ""));
}

function drawFlow(body) {
  const tbody = $("flow").tBodies[0];
  if (!body.routes.length) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "no route has flow limits")));
    return;
  }
  const rows = [];
  for (const route of body.routes) {
    const total = { running: route.running, waiting: route.waiting, rate_per_s: route.rate_per_s,
      held_by: null };
    rows.push(flowRow(route, total, true));
    route.keys.forEach((key) => rows.push(flowRow(route, key, false)));
    if (route.keys_omitted) {
      rows.push(el("tr", {}, el("td", {}), el("td", { colspan: 6, class: "empty" },
        `${fmtInt(route.keys_omitted)} quieter keys not shown`)));
    }
  }
  tbody.replaceChildren(...rows);
}

async function refreshFlow() {
  try {
    if (token()) drawFlow(await api("/api/flow"));
  } catch (e) {
    // the main loop reports errors and asks for the token; this panel just waits for it
  }
  setTimeout(refreshFlow, FLOW_REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", refreshFlow);
