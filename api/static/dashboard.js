// marketpoll dashboard. Reads dashboard.json at load and every 15 s (jobs, sessions, freshness),
// and follows /events (Server-Sent Events, event "bar") for live prices. Vanilla JS, no
// dependency, nothing fetched from another host. Text goes through textContent only.
"use strict";

(() => {
  const REFRESH_MS = 15000;
  const FILTERS = ["symbols", "provider", "interval"]; // for the snapshot and /events
  const SNAPSHOT_ONLY = ["exchanges"]; // more exchanges to show than the jobs' own
  const SVG = "http://www.w3.org/2000/svg";
  const SPARK_W = 120;
  const SPARK_H = 28;

  const query = new URLSearchParams();
  const given = new URLSearchParams(location.search);
  for (const k of FILTERS) if (given.get(k)) query.set(k, given.get(k));
  const suffix = query.toString() ? "?" + query.toString() : "";
  for (const k of SNAPSHOT_ONLY) if (given.get(k)) query.set(k, given.get(k));
  const snapSuffix = query.toString() ? "?" + query.toString() : "";

  const state = {
    series: new Map(), // "provider|symbol|interval" -> {provider, symbol, interval, ts, close, ..., closes: [[ts, close]]}
    jobs: [],
    polling: null, // a polling run's state (modes without named jobs)
    offsetMs: 0, // server clock minus browser clock
    intervals: {},
    points: 60,
    loaded: false,
    pending: [], // bars that arrived before the first snapshot
  };

  const $ = (id) => document.getElementById(id);
  const key = (s) => `${s.provider}|${s.symbol}|${s.interval}`;
  const serverNow = () => Date.now() + state.offsetMs;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function human(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? (s % 60) + " s" : ""}`.trim();
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  // "2024-03-11T15:04:00Z" -> "2024-03-11 15:04:00"
  const utcText = (iso) => (iso ? iso.replace("T", " ").replace(/(\.\d+)?(Z|[+-]00:00)$/, "") : "—");
  // an instant with its exchange offset -> "09:30 (-04:00)" local to that exchange, plus the date when not today
  function localText(iso) {
    if (!iso) return "—";
    const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.exec(iso);
    if (!m) return iso;
    const today = new Date(serverNow()).toISOString().slice(0, 10);
    return `${m[1] === today ? "" : m[1] + " "}${m[2]} ${m[3] === "Z" || m[3] === "+00:00" ? "UTC" : m[3]}`;
  }

  // ---- series: prices, sparklines, freshness --------------------------------------------

  function merge(incoming, fromSnapshot) {
    const k = key(incoming);
    const old = state.series.get(k);
    if (fromSnapshot) {
      if (old && old.ts > incoming.ts) return; // an event already brought something newer
      state.series.set(k, { ...incoming, closes: incoming.closes.slice() });
      return;
    }
    const s = old || { ...incoming, closes: [] };
    if (old && incoming.ts < old.ts) return; // a late, older bar: the newest stays
    Object.assign(s, incoming, { closes: s.closes });
    const last = s.closes[s.closes.length - 1];
    if (last && last[0] === incoming.ts) last[1] = incoming.close;
    else s.closes.push([incoming.ts, incoming.close]);
    while (s.closes.length > state.points) s.closes.shift();
    state.series.set(k, s);
  }

  function sparkline(closes) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", SPARK_W);
    svg.setAttribute("height", SPARK_H);
    svg.setAttribute("viewBox", `0 0 ${SPARK_W} ${SPARK_H}`);
    svg.dataset.points = String(closes.length);
    const ys = closes.map((c) => parseFloat(c[1])).filter((v) => isFinite(v));
    if (ys.length === 0) return svg;
    const lo = Math.min(...ys);
    const hi = Math.max(...ys);
    const span = hi - lo || 1;
    const step = ys.length > 1 ? (SPARK_W - 4) / (ys.length - 1) : 0;
    const pts = ys.map((v, i) => [2 + i * step, SPARK_H - 2 - ((v - lo) / span) * (SPARK_H - 4)]);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" "));
    svg.appendChild(line);
    const dot = document.createElementNS(SVG, "circle");
    const [x, y] = pts[pts.length - 1];
    dot.setAttribute("cx", x.toFixed(1));
    dot.setAttribute("cy", y.toFixed(1));
    dot.setAttribute("r", "2");
    svg.appendChild(dot);
    svg.classList.add(ys[ys.length - 1] >= ys[0] ? "up" : "down");
    return svg;
  }

  function ageCell(td, s) {
    const age = (serverNow() - Date.parse(s.ts)) / 1000;
    const bar = state.intervals[s.interval] || 60;
    td.textContent = human(age);
    td.classList.toggle("stale", age > 3 * bar + 60);
    td.title = `newest bar started ${human(age)} ago (a ${s.interval} bar)`;
  }

  function seriesRow(s) {
    const tr = el("tr");
    tr.dataset.key = key(s);
    tr.dataset.symbol = s.symbol;
    tr.append(el("td", s.symbol, "sym"), el("td", s.provider, "muted"), el("td", s.interval, "muted"));
    tr.append(el("td", s.close, "num last"));
    const first = s.closes.length ? parseFloat(s.closes[0][1]) : NaN;
    const pct = ((parseFloat(s.close) - first) / first) * 100;
    const change = el("td", isFinite(pct) && s.closes.length > 1 ? `${pct >= 0 ? "+" : ""}${pct.toFixed(2)} %` : "—", "num change");
    if (isFinite(pct) && s.closes.length > 1) change.classList.add(pct >= 0 ? "up" : "down");
    change.title = `since the first of the last ${s.closes.length} bars`;
    const trend = el("td", undefined, "trend");
    trend.appendChild(sparkline(s.closes));
    tr.append(change, trend, el("td", utcText(s.ts), "ts muted"));
    const age = el("td", undefined, "num age");
    ageCell(age, s);
    tr.appendChild(age);
    return tr;
  }

  function order(a, b) {
    return a.symbol.localeCompare(b.symbol) || a.provider.localeCompare(b.provider) || a.interval.localeCompare(b.interval);
  }

  function renderSeries(flashKey) {
    const body = $("series").tBodies[0];
    const rows = [...state.series.values()].sort(order).map(seriesRow);
    body.replaceChildren(...rows);
    $("series-empty").hidden = rows.length > 0;
    if (flashKey) {
      const tr = rows.find((r) => r.dataset.key === flashKey);
      if (tr) tr.classList.add("flash");
    }
  }

  // ---- jobs, exchanges, errors ----------------------------------------------------------

  function renderJobs() {
    const body = $("jobs").tBodies[0];
    const rows = state.jobs.map((j) => {
      const tr = el("tr");
      tr.dataset.job = j.name;
      tr.appendChild(el("td", j.name, "sym"));
      if (j.error) {
        tr.appendChild(el("td", j.error, "down"));
        return tr;
      }
      tr.appendChild(el("td", `${j.exchange} / ${j.session}`));
      const syms = (j.symbols || []).join(" ");
      tr.appendChild(el("td", syms.length > 40 ? syms.slice(0, 39) + "…" : syms, "muted"));
      const next = el("td", undefined, "next");
      if (j.paused) next.textContent = "paused";
      else if (!j.next_run_utc) next.textContent = "—";
      else {
        const due = (Date.parse(j.next_run_utc) - serverNow()) / 1000;
        next.textContent = `${localText(j.next_run_exchange || j.next_run_utc)} (${due > 0 ? "in " + human(due) : "due"})`;
        next.title = j.next_run_utc;
      }
      tr.appendChild(next);
      tr.appendChild(el("td", j.last_run_status || "—", j.last_run_status ? `status-${j.last_run_status}` : "muted"));
      return tr;
    });
    const p = state.polling;
    if (p) rows.push(pollingRow(p));
    body.replaceChildren(...rows);
    $("jobs-empty").hidden = rows.length > 0;
  }

  function pollingRow(p) {
    const tr = el("tr");
    tr.dataset.job = p.job || "";
    tr.appendChild(el("td", p.job || p.mode, "sym"));
    tr.appendChild(el("td", `${String(p.mode).replace(/^--/, "")} (${p.provider}, ${p.interval})`));
    const syms = (p.symbols || []).join(" ");
    tr.appendChild(el("td", syms.length > 40 ? syms.slice(0, 39) + "…" : syms, "muted"));
    const next = el("td", undefined, "next");
    if (!p.polling_running) next.textContent = "stopped";
    else if (!p.next_poll_at) next.textContent = "polling now";
    else {
      const due = (Date.parse(p.next_poll_at) - serverNow()) / 1000;
      next.textContent = `${localText(p.next_poll_at)} (${due > 0 ? "in " + human(due) : "due"})`;
      next.title = p.next_poll_at;
    }
    tr.appendChild(next);
    const last = p.last_cycle && p.last_cycle.status;
    tr.appendChild(el("td", last || "—", last ? `status-${last}` : "muted"));
    return tr;
  }

  function renderMarkets(markets) {
    const rows = markets.map((m) => {
      const tr = el("tr");
      tr.dataset.exchange = m.exchange;
      tr.appendChild(el("td", m.exchange, "sym"));
      if (m.error) {
        const cell = el("td");
        cell.appendChild(el("span", "error", "badge error"));
        tr.append(cell, el("td", m.error, "down"), el("td"));
        return tr;
      }
      const badge = el("span", m.session, `badge ${m.session}`);
      const cell = el("td");
      cell.appendChild(badge);
      tr.append(cell, el("td", localText(m.next_session_boundary)), el("td", m.timezone, "muted"));
      return tr;
    });
    $("markets").tBodies[0].replaceChildren(...rows);
    $("markets-empty").hidden = rows.length > 0;
  }

  function renderErrors(errors) {
    const items = errors.map((e) => el("li", `${utcText(e.started_at)}  ${e.job_name}: ${e.status}${e.error_summary ? ": " + e.error_summary : ""}`));
    $("errors").replaceChildren(...items);
    $("errors-section").hidden = items.length === 0;
  }

  function showNow() {
    $("now").textContent = utcText(new Date(serverNow()).toISOString()) + " UTC";
  }

  function tick() {
    showNow();
    for (const tr of $("series").tBodies[0].rows) {
      const s = state.series.get(tr.dataset.key);
      if (s) ageCell(tr.querySelector("td.age"), s);
    }
    renderJobs();
  }

  function problem(text) {
    $("problem").textContent = text || "";
    $("problem").hidden = !text;
  }

  // ---- data flow ------------------------------------------------------------------------

  async function load() {
    let snap;
    try {
      const r = await fetch("dashboard.json" + snapSuffix, { cache: "no-store" });
      snap = await r.json();
      if (!r.ok) throw new Error(snap.error || `HTTP ${r.status}`);
    } catch (err) {
      problem(`Could not read the snapshot: ${err.message}`);
      return;
    }
    problem("");
    state.offsetMs = Date.parse(snap.now) - Date.now();
    state.intervals = snap.intervals || {};
    state.points = snap.spark_points || state.points;
    state.jobs = snap.jobs || [];
    state.polling = snap.polling || null;
    for (const s of snap.series || []) merge(s, true);
    if (!state.loaded) {
      state.loaded = true;
      for (const bar of state.pending.splice(0)) {
        merge(bar, false);
        document.body.dataset.bars = String(Number(document.body.dataset.bars || 0) + 1);
      }
    }
    showNow();
    renderSeries();
    renderJobs();
    renderMarkets(snap.markets || []);
    renderErrors(snap.recent_errors || []);
    document.body.dataset.loaded = "true";
  }

  function onBar(ev) {
    let bar;
    try {
      bar = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (!bar || !bar.symbol || !bar.ts || bar.close === null || bar.close === undefined) return; // (values cut: too long)
    if (!state.loaded) {
      state.pending.push(bar);
      return;
    }
    merge(bar, false);
    renderSeries(key(bar));
    document.body.dataset.bars = String(Number(document.body.dataset.bars || 0) + 1); // live bars applied
  }

  function follow() {
    if (!window.EventSource) return;
    const conn = $("conn");
    const es = new EventSource("events" + suffix);
    es.addEventListener("bar", onBar);
    es.onopen = () => {
      conn.dataset.state = "live";
      conn.textContent = "live";
    };
    es.onerror = () => {
      conn.dataset.state = "reconnecting";
      conn.textContent = "reconnecting";
    };
  }

  follow(); // subscribe first, so no bar falls between the snapshot and the stream
  load();
  setInterval(tick, 1000);
  setInterval(load, REFRESH_MS);
})();
