/* The llmgw dashboard: plain DOM and hand-drawn SVG over the admin listener's JSON routes.
   The token lives in this tab's sessionStorage and goes out as a bearer token; the gateway
   decides what it may see. Pages poll only while they are shown and the tab is visible. */
"use strict";

const TOKEN_KEY = "llmgw.token";
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2457c5", "#d9480f", "#2f9e44", "#ae3ec9", "#0c8599", "#e67700", "#c2255c", "#5f3dc4"];
const PAGES = { decisions: decisionsPage, models: modelsPage, spend: spendPage, canaries: canariesPage, policy: policyPage };

const state = { who: null, timer: null, page: null, generation: 0 };

/* ---------- small helpers ---------- */

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c) node.append(c);
  return node;
}

function badge(text) {
  return el("span", { class: "badge " + String(text || "").replace(/[^a-z_]/g, "") }, text || "–");
}

const fmt = {
  usd: (v) => (v === null || v === undefined ? "–" : "$" + (Math.abs(v) < 0.01 && v !== 0 ? v.toFixed(6) : v.toFixed(2))),
  ms: (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms"),
  pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"),
  time: (t) => new Date(t).toLocaleTimeString([], { hour12: false }),
  clock: (t) => { const d = new Date(t); return d.toISOString().slice(11, 19); },
};

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || "HTTP " + status);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(path, options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const resp = await fetch(path, {
    method: (options && options.method) || "GET",
    headers: { authorization: "Bearer " + token, "content-type": "application/json" },
    body: options && options.body,
    cache: "no-store",
    credentials: "omit",
  });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) throw new HttpError(resp.status, body);
  return body;
}

function isAdmin() { return state.who && state.who.kind === "admin"; }

/* ---------- charts ---------- */

/* Tick labels with as many decimals as the step between ticks needs. */
function tickFormat(step) {
  const decimals = step >= 1 ? 0 : Math.min(6, Math.ceil(-Math.log10(step)));
  return (v) => v.toFixed(decimals);
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/* A line chart: series [{name, points: [[x, y]]}], x is unix ms unless opts.xLabel says. */
function lineChart(opts) {
  const W = opts.width || 560, H = opts.height || 190;
  const L = 56, R = 12, T = 22, B = 34;
  const all = opts.series.flatMap((s) => s.points);
  const lines = opts.lines || [];
  const xs = all.map((p) => p[0]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (!isFinite(x0)) { x0 = 0; x1 = 1; }
  if (x1 === x0) x1 = x0 + 1;
  const ymin = opts.yMin !== undefined ? opts.yMin : Math.min(0, ...all.map((p) => p[1]), ...lines.map((l) => l.value));
  const ymax = niceMax(Math.max(...all.map((p) => p[1]), ...lines.map((l) => l.value), opts.yFloor || 0) - Math.min(0, ymin)) + Math.min(0, ymin);
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - ymin) / (ymax - ymin || 1)) * (H - T - B);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H + 18 * Math.ceil((opts.series.length + lines.length) / 4)}`, role: "img", "aria-label": opts.title });
  root.append(svg("text", { class: "title", x: L, y: 14, text: opts.title + (opts.unit ? ` (${opts.unit})` : "") }));
  for (let i = 0; i <= 4; i++) {
    const v = ymin + ((ymax - ymin) * i) / 4;
    root.append(svg("line", { class: "gridline", x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
    root.append(svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", text: (opts.yFormat || tickFormat((ymax - ymin) / 4))(v) }));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  const xFormat = opts.xFormat || fmt.clock;
  for (let i = 0; i <= 3; i++) {
    const v = x0 + ((x1 - x0) * i) / 3;
    root.append(svg("text", { x: sx(v), y: H - B + 14, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle", text: xFormat(v) }));
  }
  root.append(svg("text", { x: W - R, y: H - 4, "text-anchor": "end", text: opts.xLabel || "time (UTC)" }));
  for (const l of lines) {
    root.append(svg("line", { class: l.kind || "limit", x1: L, x2: W - R, y1: sy(l.value), y2: sy(l.value) }));
  }
  opts.series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    if (s.points.length === 1) {
      root.append(svg("circle", { cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 3, fill: color }));
    } else if (s.points.length > 1) {
      const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
      root.append(svg("path", { class: "series", d, stroke: color }));
    }
  });
  if (!all.length) root.append(svg("text", { x: (L + W) / 2, y: (T + H - B) / 2, "text-anchor": "middle", text: "no data yet" }));
  const legend = opts.series.map((s, i) => ({ name: s.name, color: s.color || COLORS[i % COLORS.length], kind: "line" }))
    .concat(lines.map((l) => ({ name: l.label, color: l.kind === "alert" ? "#b26b00" : "#c62828", kind: "dash" })));
  legend.forEach((item, i) => {
    const x = L + (i % 4) * ((W - L) / 4), y = H + 4 + Math.floor(i / 4) * 18;
    root.append(svg("line", { x1: x, x2: x + 16, y1: y, y2: y, stroke: item.color, "stroke-width": 3, "stroke-dasharray": item.kind === "dash" ? "4 2" : "none" }));
    root.append(svg("text", { x: x + 20, y: y + 4, text: item.name }));
  });
  return root;
}

/* Stacked bars: categories (x labels), series [{name, values[]}]. */
function barChart(opts) {
  const W = opts.width || 760, H = opts.height || 220;
  const L = 60, R = 12, T = 22, B = 40;
  const n = opts.categories.length;
  const totals = opts.categories.map((_, i) => opts.series.reduce((a, s) => a + (s.values[i] || 0), 0));
  const ymax = niceMax(Math.max(0, ...totals));
  const bw = n ? ((W - L - R) / n) * 0.7 : 0;
  const sx = (i) => L + ((i + 0.15) * (W - L - R)) / Math.max(n, 1);
  const sy = (y) => T + (1 - y / ymax) * (H - T - B);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H + 18 * Math.ceil(opts.series.length / 4)}`, role: "img", "aria-label": opts.title });
  root.append(svg("text", { class: "title", x: L, y: 14, text: opts.title + (opts.unit ? ` (${opts.unit})` : "") }));
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    root.append(svg("line", { class: "gridline", x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
    root.append(svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", text: tickFormat(ymax / 4)(v) }));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  const every = Math.max(1, Math.ceil(n / 10));
  opts.categories.forEach((c, i) => {
    let base = 0;
    opts.series.forEach((s, j) => {
      const v = s.values[i] || 0;
      if (v > 0) {
        root.append(svg("rect", { x: sx(i), width: bw, y: sy(base + v), height: sy(base) - sy(base + v), fill: COLORS[j % COLORS.length] },
          svg("title", { text: `${s.name} ${c}: ${v}` })));
      }
      base += v;
    });
    if (i % every === 0) root.append(svg("text", { x: sx(i) + bw / 2, y: H - B + 14, "text-anchor": "middle", text: c }));
  });
  root.append(svg("text", { x: W - R, y: H - 6, "text-anchor": "end", text: opts.xLabel || "day (UTC)" }));
  if (!n) root.append(svg("text", { x: (L + W) / 2, y: (T + H - B) / 2, "text-anchor": "middle", text: "no spend yet" }));
  opts.series.forEach((s, i) => {
    const x = L + (i % 4) * ((W - L) / 4), y = H + 4 + Math.floor(i / 4) * 18;
    root.append(svg("rect", { x, y: y - 6, width: 12, height: 12, fill: COLORS[i % COLORS.length] }));
    root.append(svg("text", { x: x + 18, y: y + 4, text: s.name }));
  });
  return root;
}

function progressBar(spent, limit, alerts) {
  const bar = el("div", { class: "bar", title: `${fmt.usd(spent)} of ${fmt.usd(limit)}` });
  const fill = el("div", { class: "fill" + (spent >= limit ? " over" : "") });
  fill.style.width = Math.min(100, limit > 0 ? (spent / limit) * 100 : 0) + "%";
  bar.append(fill);
  for (const a of alerts || []) {
    const tick = el("div", { class: "tick", title: `alert at ${Math.round(a * 100)} %` });
    tick.style.left = Math.min(100, a * 100) + "%";
    bar.append(tick);
  }
  return bar;
}

/* ---------- shell ---------- */

function setPage(node) {
  const page = document.getElementById("page");
  page.replaceChildren(node);
}

function poll(fn, every) {
  const generation = state.generation;
  let busy = false;
  const tick = async () => {
    if (generation !== state.generation || busy || document.hidden) return;
    busy = true;
    try { await fn(); } catch (e) { showError(e); } finally { busy = false; }
  };
  tick();
  state.timer = setInterval(tick, every);
}

function showError(e) {
  if (e instanceof HttpError && e.status === 401) { signOut("The token was not accepted."); return; }
  const box = document.getElementById("page-error");
  if (box) box.textContent = e.message;
}

async function route() {
  clearInterval(state.timer);
  state.generation++;
  const name = (location.hash || "#decisions").slice(1);
  const render = PAGES[name] || decisionsPage;
  state.page = PAGES[name] ? name : "decisions";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === state.page);
  const node = el("div", { id: "page-" + state.page });
  setPage(node);
  if (!isAdmin() && ["models", "canaries"].includes(state.page)) {
    node.append(el("h1", { text: "Not available" }), el("p", { text: "This page needs the gateway's admin token." }));
    return;
  }
  node.append(el("p", { id: "page-error", class: "error", role: "alert" }));
  render(node);
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  const status = await api("/admin/status");
  state.who = status.tenant ? { kind: "tenant", tenant: status.tenant } : { kind: "admin" };
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = isAdmin() ? "admin token: every tenant" : "tenant admin: " + state.who.tenant;
  for (const a of document.querySelectorAll("#nav a[data-admin-only]")) a.hidden = !isAdmin();
  route();
}

function signOut(message) {
  clearInterval(state.timer);
  state.generation++;
  sessionStorage.removeItem(TOKEN_KEY);
  state.who = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  setPage(el("div"));
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

/* ---------- Live decisions ---------- */

function decisionsPage(root) {
  const filters = { rule: "", model: "", tenant: "", text: "" };
  const input = (name, placeholder) => el("input", { id: "filter-" + name, placeholder, oninput: (e) => { filters[name] = e.target.value.trim(); refresh(); } });
  root.append(
    el("h1", { text: "Live decisions" }),
    el("div", { class: "filters" },
      input("rule", "rule"), input("model", "model (asked or served)"),
      isAdmin() ? input("tenant", "tenant") : null,
      input("text", "search provider, arm, id…"),
      el("span", { class: "muted", id: "decisions-count" })),
  );
  const body = el("tbody", { id: "decisions" });
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ["time", "tenant", "rule", "requested → served", "provider", "arm", "budget", "cache", "status", "cost", "latency", "failovers"]
      .map((h, i) => el("th", { class: i >= 9 ? "num" : null, text: h })))),
    body);
  const detail = el("div", { class: "panel trace", id: "decision-detail" }, el("p", { class: "muted", text: "Choose a decision to see its trace." }));
  root.append(el("div", { class: "split" }, el("div", { class: "scroll" }, table), detail));
  let selected = null;
  let records = [];

  function matches(r) {
    if (!filters.text) return true;
    const hay = [r.id, r.provider, r.canary_arm, r.served_model, r.requested_model, r.budget_action].join(" ").toLowerCase();
    return hay.includes(filters.text.toLowerCase());
  }

  function render() {
    const shown = records.filter(matches);
    document.getElementById("decisions-count").textContent = `${shown.length} shown, newest first, refreshed ${fmt.time(Date.now())}`;
    body.replaceChildren(...shown.map((r) => {
      const o = r.outcome || {};
      const tenant = r.input && r.input.identity && r.input.identity.tenant ? r.input.identity.tenant.id : "";
      const served = r.served_model || "—";
      const tr = el("tr", { class: "clickable" + (r.id === selected ? " selected" : ""), "data-decision-id": r.id, onclick: () => open(r) },
        el("td", { text: fmt.time(r.time) }),
        el("td", { text: tenant }),
        el("td", { text: r.rule }),
        el("td", { text: r.requested_model + " → " + served }),
        el("td", { text: r.provider || "—" }),
        el("td", { text: r.canary_arm || "" }),
        el("td", {}, badge(r.budget_action)),
        el("td", {}, o.cache ? badge(o.cache) : ""),
        el("td", { text: r.status }),
        el("td", { class: "num", text: fmt.usd(r.cost_usd) }),
        el("td", { class: "num", text: o.latency_ms !== undefined ? fmt.ms(o.latency_ms) : "–" }),
        el("td", { class: "num", text: o.failovers !== undefined ? o.failovers : "–" }));
      return tr;
    }));
  }

  async function refresh() {
    const q = new URLSearchParams({ limit: "100" });
    for (const k of ["rule", "model", "tenant"]) if (filters[k]) q.set(k, filters[k]);
    try {
      const page = await api("/admin/decisions?" + q.toString());
      records = page.data;
      document.getElementById("page-error").textContent = "";
      render();
      body.dataset.query = q.toString();
    } catch (e) {
      if (e.code === "decision_log_disabled") {
        document.getElementById("page-error").textContent = "The decision log is off: start the gateway with --decision-log PATH to see decisions here.";
      } else throw e;
    }
  }

  async function open(r) {
    selected = r.id;
    render();
    const o = r.outcome || {};
    const kv = (pairs) => el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
    detail.replaceChildren(
      el("h2", { text: "Decision " + r.id }),
      kv([
        ["time", new Date(r.time).toISOString()],
        ["policy revision", el("span", { class: "loc", id: "detail-revision", text: r.revision })],
        ["rule", r.rule],
        ["model", r.requested_model + " → " + (r.served_model || "not served")],
        ["provider", r.provider || "—"],
        ["canary arm", r.canary_arm || "—"],
        ["budget action", r.budget_action],
        ["tokens", `${r.tokens_in} in, ${r.tokens_out} out`],
        ["cost", fmt.usd(r.cost_usd)],
        ["latency", fmt.ms(o.latency_ms) + (o.ttft_ms !== undefined ? `, first token ${fmt.ms(o.ttft_ms)}` : "")],
        ["failovers / retries", `${o.failovers || 0} / ${o.retries || 0}`],
        ["cache", o.cache || "—"],
        ["status", String(r.status)],
      ]),
    );
    if (!isAdmin()) {
      detail.append(el("p", { class: "muted", text: "The rule-by-rule trace needs the admin token (it shows every rule's condition)." }));
      return;
    }
    const traceBox = el("div", { id: "decision-trace" }, el("p", { class: "muted", text: "Replaying…" }));
    detail.append(el("h3", { text: "Trace" }), traceBox);
    try {
      const t = await api("/admin/decisions/" + encodeURIComponent(r.id) + "/trace");
      if (selected !== r.id) return;
      const note = t.same_revision
        ? el("p", { class: "muted", text: `Replayed on revision ${t.revision}, the one that decided.` })
        : el("p", { class: "error", text: `Decided by revision ${t.revision}; replayed on the serving revision ${t.replayed_revision}.` });
      traceBox.replaceChildren(note, el("ol", {}, t.steps.map(describeStep)));
      if (t.decision) {
        traceBox.append(el("p", {}, `Decision: rule `, el("b", { text: t.decision.rule }), `, attempts: `,
          (t.decision.attempts || []).map((a) => a.deployment).join(" → ") || "none"));
      }
      if (t.error) traceBox.append(el("p", { class: "error", text: t.error }));
    } catch (e) {
      traceBox.replaceChildren(el("p", { class: "error", text: e.message }));
    }
  }

  poll(refresh, 400);
}

function describeStep(s) {
  const loc = (l) => el("span", { class: "loc", text: " " + l });
  switch (s.step) {
    case "rule": return el("li", {}, s.matched ? "✔ " : "✘ ", "rule ", el("b", { text: s.rule }), s.matched ? " matched" : " did not match", loc(s.location));
    case "budget": return el("li", {}, `budget ${s.budget} for ${s.principal}: ${fmt.usd(s.spent_usd)} spent of ${fmt.usd(s.limit_usd)}, request up to ${fmt.usd(s.request_usd)}`);
    case "downgrade": return el("li", {}, `downgrade ${s.rule}: ${s.from} → ${s.to} ${s.fired ? "applied" : "not applied"}`);
    case "blocked": return el("li", {}, `blocked by budget ${s.budget}`);
    case "candidate_dropped": return el("li", {}, `candidate ${s.model} dropped: ${s.reason}`);
    case "deployment_skipped": return el("li", {}, `deployment ${s.deployment} skipped: ${s.reason}`);
    case "eval_error": return el("li", { class: "error" }, `condition failed to evaluate (taken as ${s.taken_as}): ${s.message}`, loc(s.location));
    case "canary": return el("li", {}, `canary ${s.canary} at ${s.weight_percent} %: arm ${s.arm}`);
    default: return el("li", { text: JSON.stringify(s) });
  }
}

/* ---------- Models and providers ---------- */

function modelsPage(root) {
  root.append(el("h1", { text: "Models and providers" }),
    el("p", { class: "muted", text: "Live view per deployment; latency is the gateway's whole request, TTFT the first streamed token. Charts: the last 15 minutes, one point every 2 s." }));
  const tableBox = el("div", { class: "scroll" });
  const charts = el("div", { class: "grid two", id: "model-charts" });
  root.append(tableBox, el("h2", { text: "Over time" }), charts);
  let samples = [];
  let last = 0;
  async function refresh() {
    const [status, history] = await Promise.all([api("/admin/status"), api("/admin/history?since=" + last)]);
    samples = samples.concat(history.samples).slice(-450);
    if (samples.length) last = samples[samples.length - 1].t;
    const prices = Object.fromEntries(history.deployments.map((d) => [d.deployment, d]));
    const rows = status.deployments.map((d) => {
      const l = d.live || {};
      const p = prices[d.deployment] || {};
      return el("tr", { "data-deployment": d.deployment },
        el("td", { text: d.deployment }), el("td", { text: d.model }), el("td", { text: d.provider + " / " + d.region }),
        el("td", {}, badge(l.circuit)),
        el("td", { class: "num", text: fmt.ms(l.p50_ms) }), el("td", { class: "num", text: fmt.ms(l.p95_ms) }), el("td", { class: "num", text: fmt.ms(l.p99_ms) }),
        el("td", { class: "num", text: fmt.ms(l.ttft_ms) }), el("td", { class: "num", text: fmt.pct(l.error_rate) }),
        el("td", { class: "num", text: l.in_flight !== undefined ? l.in_flight : "–" }),
        quotaCell(d.quota, l),
        el("td", { class: "num", text: p.input_per_mtok !== undefined ? `$${p.input_per_mtok} / $${p.output_per_mtok}` : "–" }));
    });
    tableBox.replaceChildren(el("table", { id: "deployments" },
      el("thead", {}, el("tr", {}, ["deployment", "model", "provider / region", "circuit", "p50", "p95", "p99", "TTFT", "errors", "in flight", "quota headroom", "price in / out per Mtok"]
        .map((h, i) => el("th", { class: i >= 4 ? "num" : null, text: h })))),
      el("tbody", {}, rows)));
    const names = status.deployments.map((d) => d.deployment);
    const series = (field, scale) => names.map((n) => ({
      name: n,
      points: samples.filter((s) => s.deployments[n] && s.deployments[n][field] !== null && s.deployments[n][field] !== undefined)
        .map((s) => [s.t, s.deployments[n][field] * (scale || 1)]),
    }));
    charts.replaceChildren(
      el("div", { class: "panel" }, lineChart({ title: "Latency p95", unit: "ms", series: series("p95_ms") })),
      el("div", { class: "panel" }, lineChart({ title: "Latency p50", unit: "ms", series: series("p50_ms") })),
      el("div", { class: "panel" }, lineChart({ title: "Time to first token", unit: "ms", series: series("ttft_ms") })),
      el("div", { class: "panel" }, lineChart({ title: "Error rate", unit: "%", series: series("error_rate", 100), yFloor: 1 })),
    );
    const quoted = status.deployments.filter((d) => d.quota).map((d) => d.deployment);
    if (quoted.length) {
      charts.append(el("div", { class: "panel" }, lineChart({ title: "Provider quota headroom", unit: "%", yMin: 0, yFloor: 100,
        series: series("quota_headroom", 100).filter((s) => quoted.includes(s.name)) })));
    }
  }
  poll(refresh, 2000);
}

/* The share of a deployment's provider quota left this minute (the tighter of RPM and TPM,
   what filters read as m.quota_headroom), with what is left of each; "–" without a quota. */
function quotaCell(quota, live) {
  if (!quota) return el("td", { class: "num quota", text: "–" });
  const h = live.quota_headroom;
  const level = h === null || h === undefined ? "" : h < 0.1 ? "open" : h < 0.5 ? "half_open" : "closed";
  const left = (v, of, unit) => (of ? `${v === null || v === undefined ? "?" : Math.floor(v).toLocaleString("en")} of ${of.toLocaleString("en")} ${unit}` : null);
  const detail = [left(live.quota_requests_left, quota.requests_per_minute, "req/min"), left(live.quota_tokens_left, quota.tokens_per_minute, "tok/min")]
    .filter(Boolean).join(", ") + " left";
  return el("td", { class: "num quota", title: detail }, el("span", { class: "badge " + level, text: fmt.pct(h) }), el("div", { class: "muted small", text: detail }));
}

/* ---------- Spend ---------- */

function spendPage(root) {
  const since = new Date(Date.now() - 30 * 86400e3).toISOString().slice(0, 10);
  const monthStart = new Date().toISOString().slice(0, 8) + "01";
  let groupBy = "tenant";
  const select = el("select", { id: "spend-group", onchange: (e) => { groupBy = e.target.value; refresh(); } },
    ["tenant", "project", "key", "model"].map((g) => el("option", { value: g, text: g })));
  root.append(el("h1", { text: "Spend" }),
    el("div", { class: "filters" }, el("label", { for: "spend-group", text: "group by" }), select,
      el("span", { class: "muted", text: `ledger since ${since}` })));
  const budgetsBox = el("div", { class: "panel", id: "spend-budgets" });
  const chartBox = el("div", { class: "grid two" });
  const tableBox = el("div", { class: "scroll" });
  root.append(budgetsBox, chartBox, el("h2", { text: "Totals" }), tableBox);

  async function refresh() {
    const tenantQ = isAdmin() ? "" : "&tenant=" + encodeURIComponent(state.who.tenant);
    const [ledger, status, history] = await Promise.all([
      api("/admin/spend?since=" + since + tenantQ),
      api("/admin/status"),
      isAdmin() ? api("/admin/history?since=" + Date.now()) : Promise.resolve(null),
    ]);
    const rows = ledger.data;
    const key = (r) => (r[groupBy] === null || r[groupBy] === undefined || r[groupBy] === "" ? "(none)" : r[groupBy]);
    const totals = {};
    for (const r of rows) {
      const t = (totals[key(r)] ||= { cost: 0, requests: 0, tokens_in: 0, tokens_out: 0 });
      t.cost += r.cost_usd; t.requests += r.requests; t.tokens_in += r.tokens_in; t.tokens_out += r.tokens_out;
    }
    const groups = Object.keys(totals).sort((a, b) => totals[b].cost - totals[a].cost);
    const top = groups.slice(0, 7);
    const days = [...new Set(rows.map((r) => r.day))].sort();
    const bucket = (g) => (top.includes(g) ? g : "other");
    const seriesNames = groups.length > 7 ? top.concat(["other"]) : top;
    const series = seriesNames.map((name) => ({ name, values: days.map((d) => rows.filter((r) => r.day === d && bucket(key(r)) === name).reduce((a, r) => a + r.cost_usd, 0)) }));
    /* Cumulative spend this month per group, against the month's budgets of that scope. */
    const monthDays = days.filter((d) => d >= monthStart);
    const cumulative = seriesNames.map((name) => {
      let acc = 0;
      return { name, points: monthDays.map((d) => { acc += rows.filter((r) => r.day === d && bucket(key(r)) === name).reduce((a, r) => a + r.cost_usd, 0); return [Date.parse(d + "T00:00:00Z"), acc]; }) };
    });
    const budgetSpecs = isAdmin() ? history.budgets : [];
    const scoped = budgetSpecs.filter((b) => b.scope === groupBy && b.period === "monthly" && !b.when);
    const lines = scoped.flatMap((b) => [{ value: b.limit_usd, label: `${b.name} limit` }]
      .concat((b.alert_at || []).map((a) => ({ value: b.limit_usd * a, label: `${b.name} alert ${Math.round(a * 100)} %`, kind: "alert" }))));
    chartBox.replaceChildren(
      el("div", { class: "panel" }, barChart({ title: `Spend per day by ${groupBy}`, unit: "USD", categories: days.map((d) => d.slice(5)), series })),
      el("div", { class: "panel" }, lineChart({ title: `Spend this month by ${groupBy}, cumulative`, unit: "USD", series: cumulative, lines, xFormat: (t) => new Date(t).toISOString().slice(5, 10), xLabel: "day (UTC)" })),
    );
    tableBox.replaceChildren(el("table", { id: "spend-totals" },
      el("thead", {}, el("tr", {}, [groupBy, "requests", "tokens in", "tokens out", "cost"].map((h, i) => el("th", { class: i ? "num" : null, text: h })))),
      el("tbody", {}, groups.map((g) => el("tr", { "data-group": g }, el("td", { text: g }), el("td", { class: "num", text: totals[g].requests }),
        el("td", { class: "num", text: totals[g].tokens_in }), el("td", { class: "num", text: totals[g].tokens_out }), el("td", { class: "num", text: fmt.usd(totals[g].cost) })))),
      el("tfoot", {}, el("tr", {}, el("th", { text: "total" }), el("th"), el("th"), el("th"), el("th", { class: "num", text: fmt.usd(ledger.total_usd) })))));
    budgetsBox.replaceChildren(el("h2", { text: "Budgets" }));
    if (!isAdmin()) {
      const list = status.budgets || [];
      if (!list.length) budgetsBox.append(el("p", { class: "muted", text: "No budget applies to this tenant." }));
      budgetsBox.append(el("table", { id: "budgets" }, el("tbody", {}, list.map((b) => el("tr", { "data-budget": b.budget },
        el("td", { text: b.budget }), el("td", { text: b.period }), el("td", {}, progressBar(b.spent_usd, b.limit_usd, b.alert_at)),
        el("td", { class: "num", text: `${fmt.usd(b.spent_usd)} of ${fmt.usd(b.limit_usd)}` }), el("td", {}, badge(b.on_exceed)),
        el("td", { class: "muted", text: "resets " + b.resets_at }))))));
      return;
    }
    if (!budgetSpecs.length) budgetsBox.append(el("p", { class: "muted", text: "The policy sets no budget." }));
    const monthRows = rows.filter((r) => r.day >= monthStart);
    for (const b of budgetSpecs) {
      const field = b.scope === "key" ? "key" : b.scope;
      const per = {};
      for (const r of monthRows) if (r[field]) per[r[field]] = (per[r[field]] || 0) + r.cost_usd;
      const note = b.period === "monthly" ? (b.when ? "ledger spend this month; the budget counts only requests its condition selects" : "spend this month") : `period ${b.period}: the ledger's month shown for scale`;
      budgetsBox.append(el("h3", { text: `${b.name}: ${fmt.usd(b.limit_usd)} per ${b.scope}, ${b.period}, on exceed ${b.on_exceed}` + ((b.alert_at || []).length ? `, alerts at ${b.alert_at.map((a) => Math.round(a * 100) + " %").join(", ")}` : "") }),
        el("p", { class: "muted", text: note }),
        el("table", { "data-budget": b.name }, el("tbody", {}, Object.entries(per).sort((x, y) => y[1] - x[1]).map(([who, spent]) => el("tr", {},
          el("td", { text: who }), el("td", {}, progressBar(spent, b.limit_usd, b.alert_at)), el("td", { class: "num", text: `${fmt.usd(spent)} of ${fmt.usd(b.limit_usd)}` }))))));
    }
  }
  poll(refresh, 5000);
}

/* ---------- Canaries ---------- */

/* A phase ({state, step}) or reason ({kind, …}) of a canary transition, in words. */
function name(x) {
  if (typeof x === "string") return x;
  if (x === null || x === undefined) return "—";
  if (x.state) return x.state + (typeof x.step === "number" ? ` (step ${x.step + 1})` : "");
  if (x.kind) return x.kind.replace(/_/g, " ");
  return JSON.stringify(x);
}

/* Per-arm counts ({baseline, candidate}) in words. */
function counts(v) {
  if (v === null || typeof v !== "object") return String(v);
  return Object.entries(v).map(([k, n]) => `${k} ${n}`).join(", ");
}

function canariesPage(root) {
  root.append(el("h1", { text: "Canaries" }),
    el("p", { class: "muted", text: "Each rollout's step, weight and per-arm requests; log E is the evidence against the candidate, and the rollout rolls back when it crosses the threshold." }));
  const list = el("div", { id: "canaries" });
  root.append(list);
  let samples = [];
  let last = 0;
  async function command(name, action) {
    try {
      await api("/admin/canaries/" + name.split("/").map(encodeURIComponent).join("/") + "/" + action, { method: "POST", body: "{}" });
      document.getElementById("page-error").textContent = "";
    } catch (e) { document.getElementById("page-error").textContent = `${action} ${name}: ${e.message}`; }
    await refresh();
  }
  async function refresh() {
    const [canaries, history] = await Promise.all([api("/admin/canaries"), api("/admin/history?since=" + last)]);
    samples = samples.concat(history.samples).slice(-450);
    if (samples.length) last = samples[samples.length - 1].t;
    if (!canaries.data.length) { list.replaceChildren(el("p", { class: "muted", text: "The policy has no canary." })); return; }
    list.replaceChildren(...canaries.data.map((c) => {
      const r = c.requests || {};
      const card = el("div", { class: "panel", "data-canary": c.canary },
        el("h2", {}, c.canary + " ", el("span", { class: "canary-state" }, badge(c.state))),
        el("dl", { class: "kv" },
          el("dt", { text: "model" }), el("dd", { text: `${c.model}: ${c.baseline} (baseline) → ${c.candidate} (candidate)` }),
          el("dt", { text: "step" }), el("dd", { class: "canary-step", text: c.step === null || c.step === undefined ? "—" : `${c.step + 1} of ${c.steps}` }),
          el("dt", { text: "candidate weight" }), el("dd", { class: "canary-weight", text: `${c.weight_percent} %` }),
          el("dt", { text: "requests" }), el("dd", { text: counts(r) }),
          c.alarm ? [el("dt", { text: "alarm" }), el("dd", { class: "error", text: JSON.stringify(c.alarm) })] : null,
          c.error ? [el("dt", { text: "error" }), el("dd", { class: "error", text: c.error })] : null),
        el("div", { class: "actions" },
          ["pause", "resume", "rollback"].map((a) => el("button", { type: "button", class: a === "rollback" ? "danger" : null, "data-action": a, onclick: () => command(c.canary, a) }, a))));
      const metrics = c.metrics || [];
      if (metrics.length) {
        card.append(el("table", {}, el("thead", {}, el("tr", {}, ["metric", "log E", "threshold", "events", "tested"].map((h) => el("th", { text: h })))),
          el("tbody", {}, metrics.map((m) => el("tr", {}, el("td", { text: m.metric }), el("td", { class: "num", text: Number(m.log_e).toFixed(3) }),
            el("td", { class: "num", text: Number(m.threshold).toFixed(3) }), el("td", { class: "num", text: counts(m.events) }), el("td", { class: "num", text: counts(m.tested) }))))));
      }
      const mine = samples.filter((s) => s.canaries[c.canary]);
      const threshold = metrics.length ? metrics[0].threshold : null;
      const series = metrics.map((m, i) => ({ name: "log E " + m.metric, points: mine.map((s) => [s.t, (s.canaries[c.canary].metrics[i] || {}).log_e]).filter((p) => typeof p[1] === "number") }));
      card.append(el("div", { class: "grid" },
        lineChart({ title: "log E against the threshold", unit: "nats", series, lines: threshold !== null ? [{ value: threshold, label: "rollback threshold" }] : [] }),
        lineChart({ title: "Candidate weight", unit: "%", series: [{ name: "weight", points: mine.map((s) => [s.t, s.canaries[c.canary].weight_percent || 0]) }], yFloor: 10 })));
      const transitions = c.transitions || [];
      if (transitions.length) {
        card.append(el("h3", { text: "Transitions" }), el("ol", { class: "muted canary-transitions" }, transitions.map((t) => el("li", { text: `${t.at_ms ? new Date(t.at_ms).toISOString().slice(11, 19) + " " : ""}${name(t.from)} → ${name(t.to)}: ${name(t.reason)}` }))));
      }
      return card;
    }));
  }
  poll(refresh, 2000);
}

/* ---------- Policy ---------- */

/* A value of a policy field as text: strings as written, lists and objects as in YAML's flow
   style without their absent members, absent as a dash. */
function fieldText(v) {
  if (v === null || v === undefined) return "—";
  if (Array.isArray(v)) return "[" + v.map(fieldText).join(", ") + "]";
  if (typeof v === "object") {
    return "{ " + Object.entries(v).filter(([, x]) => x !== null).map(([k, x]) => `${k}: ${fieldText(x)}`).join(", ") + " }";
  }
  return String(v);
}

function policyPage(root) {
  root.append(el("h1", { text: "Policy" }));
  const servingBox = el("div");
  const diffBox = el("div", { class: "panel", id: "policy-diff" });
  const historyBox = el("div");
  root.append(el("div", { id: "policy" }, servingBox, isAdmin() ? diffBox : null, historyBox));
  const revisionRow = (r, when) => el("tr", { "data-revision": r.id },
    el("td", {}, badge(r.result || "applied")), el("td", { class: "loc", text: (r.id || "").slice(0, 12) }),
    el("td", { text: r.summary || "—" }), el("td", { text: r.author || "—" }), el("td", { text: r[when] || r.time || "—" }));
  const rank = (d) => (d.severity === "error" ? 0 : 1);
  const diagnostics = (r) => (Array.isArray(r.diagnostics) ? r.diagnostics : []).slice().sort((a, b) => rank(a) - rank(b));

  /* The comparison: two applied revisions, by default the serving one and the one before it. */
  const diff = { from: "", to: "", chosen: false, shown: "", options: "" };
  const fromSelect = el("select", { id: "diff-from", onchange: (e) => { diff.from = e.target.value; diff.chosen = true; compare(); } });
  const toSelect = el("select", { id: "diff-to", onchange: (e) => { diff.to = e.target.value; diff.chosen = true; compare(); } });
  const diffResult = el("div", { id: "policy-changes" });
  const pickers = el("div", { class: "filters" }, el("label", { for: "diff-from", text: "from" }), fromSelect, el("label", { for: "diff-to", text: "to" }), toSelect);
  diffBox.append(el("h2", { text: "Changes between revisions" }),
    el("p", { class: "muted", text: "What differs in the decision table: rules, models, deployments, providers, budgets, rate limits, downgrades, canaries and cache settings, compared by name and field by field. A rule's `after` is its place in the order (the rule before it)." }),
    pickers, diffResult);

  /* The applied revisions, newest first (as the gateway keeps them), then the serving one
     when the history does not hold it (a last good revision served since start-up). */
  function choices(p) {
    const list = [];
    for (const r of p.history || []) if (r.result === "applied" && !list.some((x) => x.id === r.id)) list.push(r);
    if (!list.some((x) => x.id === p.applied_revision.id)) list.push(p.applied_revision);
    return list;
  }

  function offer(p) {
    const list = choices(p);
    const key = list.map((r) => r.id).join(" ");
    if (key !== diff.options) {
      diff.options = key;
      const option = (r) => el("option", { value: r.id, text: `${r.id.slice(0, 12)}  ${(r.summary || "").slice(0, 60)}` });
      fromSelect.replaceChildren(...list.map(option));
      toSelect.replaceChildren(...list.map(option));
    }
    if (!diff.chosen || !list.some((r) => r.id === diff.to) || !list.some((r) => r.id === diff.from)) {
      diff.chosen = false;
      const serving = list.findIndex((r) => r.id === p.applied_revision.id);
      diff.to = serving >= 0 ? list[serving].id : "";
      diff.from = serving >= 0 && list[serving + 1] ? list[serving + 1].id : "";
    }
    fromSelect.value = diff.from;
    toSelect.value = diff.to;
    pickers.style.display = list.length < 2 ? "none" : "";
    if (list.length < 2) {
      diff.shown = "";
      diffResult.replaceChildren(el("p", { class: "muted", text: "One revision applied since the gateway started: nothing to compare yet." }));
      return;
    }
    compare();
  }

  async function compare() {
    const pair = diff.from + ".." + diff.to;
    if (pair === diff.shown) return;
    diff.shown = pair;
    try {
      const d = await api("/admin/policy/diff?" + new URLSearchParams({ from: diff.from, to: diff.to }).toString());
      if (diff.shown !== pair) return;
      renderChanges(d);
    } catch (e) {
      diff.shown = "";
      diffResult.replaceChildren(el("p", { class: "error", text: e.message }));
    }
  }

  function renderChanges(d) {
    const s = d.summary;
    const head = el("p", { id: "diff-summary" }, el("span", { class: "loc", text: d.from.id.slice(0, 12) }), " → ", el("span", { class: "loc", text: d.to.id.slice(0, 12) }),
      `: ${d.changes.length} ${d.changes.length === 1 ? "entry" : "entries"} differ (${s.added} added, ${s.removed} removed, ${s.changed} changed)`);
    if (!d.changes.length) { diffResult.replaceChildren(head, el("p", { class: "muted", text: "The decision tables are the same." })); return; }
    const groups = d.changes.map((c) => {
      const fields = c.fields.length ? c.fields : [{ field: "", from: null, to: null }];
      const where = c.location ? `${c.location.file}:${c.location.line}` : "";
      return el("tbody", { "data-change": `${c.kind}/${c.name}` }, fields.map((f, i) => el("tr", {},
        i ? null : [el("td", { rowspan: fields.length, text: c.kind.replace(/_/g, " ") }), el("td", { rowspan: fields.length }, el("b", { text: c.name })),
          el("td", { rowspan: fields.length }, badge(c.change))],
        el("td", { class: "loc", text: f.field }),
        el("td", { class: "value removed", text: c.change === "added" ? "" : fieldText(f.from) }),
        el("td", { class: "value added", text: c.change === "removed" ? "" : fieldText(f.to) }),
        i ? null : el("td", { rowspan: fields.length, class: "loc muted", text: where }))));
    });
    diffResult.replaceChildren(head, el("table", { class: "changes" },
      el("thead", {}, el("tr", {}, ["kind", "name", "change", "field", "from", "to", "where"].map((h) => el("th", { text: h })))), groups));
  }

  async function refresh() {
    const status = await api("/admin/status");
    if (!isAdmin()) {
      servingBox.replaceChildren(el("div", { class: "panel" }, el("p", {}, "Serving revision ", el("span", { class: "loc", id: "policy-revision", text: status.policy.revision })),
        el("p", { class: "muted", text: "Commit messages, authors, diagnostics and the changes between revisions are shown to the admin token only." })));
      return;
    }
    const p = status.policy;
    const a = p.applied_revision;
    servingBox.replaceChildren(el("div", { class: "panel" }, el("h2", { text: "Serving" }), el("dl", { class: "kv" },
      el("dt", { text: "revision" }), el("dd", { class: "loc", id: "policy-revision", text: a.id }),
      el("dt", { text: "summary" }), el("dd", { text: a.summary || "—" }),
      el("dt", { text: "author" }), el("dd", { text: a.author || "—" }),
      el("dt", { text: "applied at" }), el("dd", { text: a.applied_at || "—" }),
      el("dt", { text: "source" }), el("dd", { class: "loc", text: p.source }),
      el("dt", { text: "reloads" }), el("dd", { text: `${p.reloads.applied} applied, ${p.reloads.failed} failed, ${p.reloads.unchanged} unchanged` }),
      p.serving_last_known_good ? [el("dt", { text: "note" }), el("dd", { class: "error", text: "the newest revision does not load: the last good one serves" })] : null,
      p.source_error ? [el("dt", { text: "source error" }), el("dd", { class: "error", text: p.source_error })] : null)));
    offer(p);
    const history = p.history || [];
    const parts = [el("h2", { text: "Revisions tried, newest first" }),
      el("table", { id: "policy-history" }, el("thead", {}, el("tr", {}, ["result", "revision", "summary", "author", "tried at"].map((h) => el("th", { text: h })))),
        el("tbody", {}, history.map((r) => revisionRow(r, "attempted_at"))))];
    for (const r of history) {
      const d = diagnostics(r);
      if (r.result === "failed" && d.length) {
        parts.push(el("div", { class: "panel", "data-rejected": r.id }, el("h3", { text: `Rejected ${String(r.id).slice(0, 12)}: ${r.summary || ""}` }),
          d.map((x) => el("pre", { class: "diag " + (x.severity || ""), text: `${x.severity || ""} ${x.code || ""} ${x.file || ""}${x.line ? ":" + x.line : ""}\n${x.message || JSON.stringify(x)}` }))));
      }
    }
    historyBox.replaceChildren(...parts);
  }
  poll(refresh, 3000);
}

/* ---------- start ---------- */

document.getElementById("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = document.getElementById("token").value.trim();
  try {
    await signIn(token);
    document.getElementById("token").value = "";
  } catch (err) {
    signOut(err instanceof HttpError && (err.status === 401 || err.status === 403) ? "That token is not an admin token or a tenant admin key." : err.message);
  }
});
document.getElementById("logout").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", () => { if (state.who) route(); });
document.addEventListener("visibilitychange", () => { if (state.who && !document.hidden) route(); });

(async () => {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) { signOut(""); return; }
  try { await signIn(token); } catch (e) { signOut("Sign in again."); }
})();
