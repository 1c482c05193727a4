// Bookbag Gateway dashboard: reads /v1/balance, /v1/usage and /v1/ledger with the session cookie.
// No framework, no build step; the chart is plain SVG. Data goes in with textContent only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fde", "#e8833a", "#2aa876", "#c2457a", "#8a63d2", "#d4b106", "#3aa6c9",
  "#7f8c8d", "#b85c38", "#5b8c2a"];
const TZ = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
const $ = (id) => document.getElementById(id);
const fmt = (n) => Number(n).toLocaleString("en-US");

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) {
    const err = new Error("signed out");
    err.signedOut = true;
    throw err;
  }
  if (!r.ok) {
    let message = r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return r;
}

function localDate(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

function daysBack(n) {
  const d = new Date();
  d.setDate(d.getDate() - (n - 1));
  return localDate(d);
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function showSignin(message) {
  $("app").hidden = true;
  $("who").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("key");
  const key = input.value.trim();
  input.value = ""; // the key never stays in the page
  $("signin-error").textContent = "";
  const r = await fetch("/dashboard/session", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ key }),
  });
  if (!r.ok) {
    let message = "Sign-in failed.";
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    showSignin(message);
    return;
  }
  await load();
}

async function signOut() {
  await fetch("/dashboard/logout", { method: "POST", credentials: "same-origin" });
  showSignin("Signed out.");
}

// "a + b" or "a − b": a negative term (an adjustment below zero) is subtracted, never "+ -300".
function signed(n) {
  return Number(n) < 0 ? `− ${fmt(-n)}` : `+ ${fmt(n)}`;
}

function renderBalance(b, who) {
  $("workspace").textContent = who.workspace_name || b.workspace_id;
  $("workspace").title = b.workspace_id;
  $("balance").textContent = fmt(b.balance);
  $("balance-split").textContent =
    `${fmt(b.allotment_remaining)} allotment ${signed(b.topups_remaining)} top-ups`;
  $("plan").textContent = b.plan.charAt(0).toUpperCase() + b.plan.slice(1);
  $("period").textContent = `Period ${b.period_start} → ${b.period_end}`;
  $("allotment").textContent = fmt(b.allotment);
  $("allotment-remaining").textContent = fmt(b.allotment_remaining);
  $("topups").textContent = fmt(b.topups_remaining);
  $("reserved").textContent = fmt(b.reserved);
  $("renews").textContent = b.period_end;
}

// Spend caps bind the signed-in key (and its agent): shown only when the key has any.
function renderCaps(b) {
  const caps = b.caps || [];
  $("caps-card").hidden = caps.length === 0;
  const body = $("caps").querySelector("tbody");
  body.replaceChildren(...caps.map((c) => {
    const row = document.createElement("tr");
    row.dataset.kind = c.kind;
    const cells = [`${c.kind} ${c.id}`, fmt(c.credits), fmt(c.used), fmt(c.remaining), c.resets_on];
    cells.forEach((value, i) => {
      const cell = document.createElement("td");
      cell.textContent = value;
      if (i > 0 && i < 4) cell.className = "num";
      row.append(cell);
    });
    return row;
  }));
}

function renderProjection(b, week) {
  const rate = week.total.credits / 7;
  $("rate").textContent = `Current rate: ${rate.toFixed(1)} credits/day (last 7 days, ` +
    `${fmt(b.credits_used_30d)} in the last 30 days)`;
  const out = $("projection");
  if (rate <= 0) {
    out.textContent = "No credits spent in the last 7 days: the balance is not running down.";
    return;
  }
  const days = b.balance / rate;
  const when = new Date(Date.now() + days * 86400000);
  const date = localDate(when);
  if (date >= b.period_end) {
    out.textContent = `At this rate the balance lasts past the renewal on ${b.period_end} ` +
      `(about ${Math.floor(days)} days of credits left).`;
  } else {
    out.textContent = `At this rate the balance runs out around ${date} ` +
      `(in about ${Math.max(Math.floor(days), 0)} days), before the renewal on ${b.period_end}.`;
  }
}

function renderChart(usage, days) {
  const chart = $("chart");
  chart.replaceChildren();
  const labels = [];
  for (let i = days - 1; i >= 0; i--) labels.push(daysBack(i + 1));
  const agents = [];
  const byDay = new Map(labels.map((d) => [d, new Map()]));
  const totals = new Map();
  for (const row of usage.data) {
    const agent = row.agent || "(no agent)";
    if (!byDay.has(row.day)) continue;
    byDay.get(row.day).set(agent, (byDay.get(row.day).get(agent) || 0) + row.credits);
    totals.set(agent, (totals.get(agent) || 0) + row.credits);
  }
  agents.push(...[...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a)));
  const color = new Map(agents.map((a, i) => [a, COLORS[i % COLORS.length]]));
  $("chart-total").textContent =
    `${fmt(usage.total.credits)} credits, ${fmt(usage.total.replies)} replies (${usage.tz})`;

  const width = chart.clientWidth || 900;
  const height = 300;
  const m = { left: 48, right: 12, top: 12, bottom: 40 };
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const max = Math.max(1, ...labels.map((d) => [...byDay.get(d).values()].reduce((s, v) => s + v, 0)));
  const step = niceStep(max);
  const top = Math.ceil(max / step) * step;
  for (let v = 0; v <= top; v += step) {
    const y = m.top + plotH - (v / top) * plotH;
    chart.append(svg("line", { x1: m.left, x2: width - m.right, y1: y, y2: y, class: "axis" }));
    chart.append(svg("text", { x: m.left - 6, y: y + 4, "text-anchor": "end" }, fmt(v)));
  }
  const slot = plotW / labels.length;
  const barW = Math.max(2, Math.min(28, slot * 0.7));
  const every = Math.ceil(labels.length / 12);
  labels.forEach((day, i) => {
    const x = m.left + i * slot + (slot - barW) / 2;
    let y = m.top + plotH;
    for (const agent of agents) {
      const credits = byDay.get(day).get(agent) || 0;
      if (!credits) continue;
      const h = (credits / top) * plotH;
      y -= h;
      const rect = svg("rect", { x, y, width: barW, height: Math.max(h, 0.5), fill: color.get(agent),
        "data-day": day, "data-agent": agent, "data-credits": credits });
      rect.append(svg("title", {}, `${day} · ${agent}: ${fmt(credits)} credits`));
      chart.append(rect);
    }
    if (i % every === 0) {
      chart.append(svg("text", { x: x + barW / 2, y: height - m.bottom + 16, "text-anchor": "middle" },
        day.slice(5)));
    }
  });
  if (!agents.length) {
    chart.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
      "No replies in this window"));
  }
  const legend = $("legend");
  legend.replaceChildren();
  for (const agent of agents) {
    const item = el("li");
    const swatch = el("span", null, "swatch");
    swatch.style.background = color.get(agent);
    item.append(swatch, el("span", `${agent} — ${fmt(totals.get(agent))}`));
    legend.append(item);
  }
}

function niceStep(max) {
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  for (const f of [1, 2, 5, 10]) if (f * mag >= raw) return Math.max(1, f * mag);
  return Math.max(1, 10 * mag);
}

function note(text, span) {
  const tr = el("tr");
  const td = el("td", text, "small");
  td.colSpan = span;
  tr.append(td);
  return tr;
}

function renderModels(usage) {
  const body = $("models").tBodies[0];
  body.replaceChildren();
  const max = Math.max(1, ...usage.data.map((r) => r.credits));
  for (const row of usage.data) {
    const tr = el("tr");
    const bar = el("div", null, "bar");
    bar.style.width = `${(100 * row.credits) / max}%`;
    const cell = el("td", null, "barcell");
    cell.append(bar);
    tr.append(el("td", row.model || "(none)"), el("td", fmt(row.credits), "num"),
      el("td", fmt(row.replies), "num"), cell);
    body.append(tr);
  }
  if (!usage.data.length) body.append(note("No replies in this window", 4));
}

function renderRecent(text) {
  const body = $("recent").tBodies[0];
  body.replaceChildren();
  const rows = text.split("\n").filter(Boolean).map((line) => JSON.parse(line));
  for (const e of rows) {
    const when = new Date(e.created_ms);
    const tr = el("tr");
    tr.append(el("td", `${localDate(when)} ${when.toTimeString().slice(0, 5)}`),
      el("td", e.agent_id || "–"), el("td", e.model || "–"), el("td", e.billing_mode || "–"),
      el("td", fmt(e.credits), "num"));
    body.append(tr);
  }
  if (!rows.length) body.append(note("No replies yet", 5));
}

async function load() {
  const days = Number($("window").value);
  const tz = encodeURIComponent(TZ);
  try {
    // Asked first, answered 200 either way: no 401s from the data calls before sign-in.
    const who = await api("/dashboard/session").then((r) => r.json());
    if (!who.signed_in) {
      showSignin("");
      return;
    }
    const [balance, byAgent, byModel, week, recent] = await Promise.all([
      api("/v1/balance").then((r) => r.json()),
      api(`/v1/usage?group_by=day,agent&start=${daysBack(days)}&tz=${tz}`).then((r) => r.json()),
      api(`/v1/usage?group_by=model&start=${daysBack(days)}&tz=${tz}`).then((r) => r.json()),
      api(`/v1/usage?group_by=day&start=${daysBack(7)}&tz=${tz}`).then((r) => r.json()),
      api("/v1/ledger?kind=reply&order=desc&limit=15").then((r) => r.text()),
    ]);
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").hidden = false;
    renderBalance(balance, who);
    renderCaps(balance);
    renderChart(byAgent, days);
    renderModels(byModel);
    renderProjection(balance, week);
    renderRecent(recent);
    $("tz").textContent = `Days are in ${TZ}. Updated ${new Date().toLocaleTimeString()}.`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    if (err.signedOut) showSignin("");
    else showSignin(`Could not load the dashboard: ${err.message}`);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("window").addEventListener("change", load);
  load();
});
