// The search page: a text / image / id query (or rarest first), metadata filters, a grid of hits, the UMAP map with
// the hits. Plain JS against the JSON API of job/serve/app.py; ids are strings (63-bit hashes). The curation views
// (duplicates, rarest first, the subset on the map) are in curation.js, the quality panel in quality.js.
"use strict";

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
const $ = (id) => document.getElementById(id);
const state = { query: null, hits: [], map: null, info: null, queryPoint: null };
window.searchTimings = [];  // {what, roundTripMs, serverMs, sinceLoadMs} per query, for tests and the curious

function filterParams() {
  const p = new URLSearchParams();
  const channels = [...$("channel").selectedOptions].map((o) => o.value);
  if (channels.length) p.set("channel", channels.join(","));
  for (const name of ["location", "scene", "night", "rain", "where"]) {
    const v = $(name).value.trim();
    if (v) p.set(name, v);
  }
  p.set("k", $("k").value || "24");
  return p;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!isError);
}

async function runQuery(query) {
  state.query = query;
  const p = filterParams();
  let url = "/api/search", init = {};
  if (query.rare) { url = "/api/rare"; p.set("offset", String(query.offset || 0)); }
  if (query.text !== undefined) p.set("text", query.text);
  if (query.id !== undefined) p.set("id", query.id);
  if (query.image !== undefined) init = { method: "POST", body: query.image, headers: { "Content-Type": query.image.type || "application/octet-stream" } };
  document.body.dataset.state = "searching";
  setStatus("searching…");
  const t0 = performance.now();
  let body;
  try {
    const resp = await fetch(`${url}?${p}`, init);
    body = await resp.json();
    if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  } catch (err) {
    document.body.dataset.state = "error";
    setStatus(String(err.message || err), true);
    return;
  }
  window.lastResponse = body;
  render(body);
  const roundTrip = performance.now() - t0;
  window.searchTimings.push({ what: describe(query), roundTripMs: roundTrip, serverMs: body.took_ms,
                              sinceLoadMs: performance.now() });
  const filtered = body.where ? ` among ${body.matches.toLocaleString()} matching (${body.where})` : "";
  const how = query.rare ? "ordered by uniqueness (rarest first)" : `${body.space} vectors (${body.column})`;
  setStatus(`${body.hits.length} hits${filtered} · ${how} · ` +
            `server ${body.took_ms} ms, round trip ${roundTrip.toFixed(0)} ms`);
  document.body.dataset.state = "results";
}

function describe(query) {
  if (query.rare) return "rarest first: images by descending uniqueness";
  if (query.text !== undefined) return `text “${query.text}”`;
  if (query.id !== undefined) return `images like ${query.label || "id " + query.id}`;
  return `images like ${query.image.name || "the uploaded image"}`;
}

function render(body) {
  state.hits = body.hits;
  $("query-shown").textContent = describe(state.query);
  const grid = $("grid");
  grid.replaceChildren();
  for (const h of body.hits) {
    const card = document.createElement("div");
    card.className = "hit";
    card.dataset.id = h.id;
    card.title = h.path;
    const img = document.createElement("img");
    img.src = h.thumb;
    img.alt = h.path;
    img.loading = "lazy";
    const meta = document.createElement("div");
    meta.className = "meta";
    const line = (text, cls) => { const d = document.createElement("div"); d.textContent = text; if (cls) d.className = cls; return d; };
    const head = line(`${state.query.rare ? "uniqueness" : "score"} ${h.score.toFixed(3)}`, "score");
    const rank = document.createElement("span"); rank.className = "rank"; rank.textContent = `#${h.rank}`;
    head.appendChild(rank);
    meta.append(head, line(`${h.scene_name || "-"} · ${h.channel || "-"}`), line(h.time ? `${h.time} UTC` : (h.path || "")));
    decorateCard(card, meta, h);
    card.append(img, meta);
    card.addEventListener("click", () => runQuery({ id: h.id, label: `${h.scene_name || ""} ${h.channel || h.path}`.trim() }));
    grid.appendChild(card);
  }
  if (!body.hits.length) grid.textContent = "no image matches";
  updatePager(body);
  state.queryPoint = null;
  if (state.query.id !== undefined && state.map) {
    const i = state.map.id.indexOf(state.query.id);
    if (i >= 0) state.queryPoint = [state.map.x[i], state.map.y[i]];
  }
  drawMap();
}

function mapScale() {
  const m = state.map, c = $("map"), pad = 10;
  const xs = m.x, ys = m.y;
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (c.width - 2 * pad) / (x1 - x0 || 1), sy = (c.height - 2 * pad) / (y1 - y0 || 1);
  return { px: (x) => pad + (x - x0) * sx, py: (y) => c.height - pad - (y - y0) * sy };
}

function drawMap() {
  const c = $("map"), ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const m = state.map;
  if (!m || !m.x.length) { ctx.fillStyle = "#888"; ctx.fillText("this run has no UMAP map (job project)", 20, 30); return; }
  const { px, py } = mapScale();
  ctx.globalAlpha = m.x.length > 5000 ? 0.25 : 0.6;
  for (let i = 0; i < m.x.length; i++) {
    ctx.fillStyle = m.channel[i] >= 0 ? COLORS[m.channel[i] % COLORS.length] : "#999";
    ctx.fillRect(px(m.x[i]) - 1.5, py(m.y[i]) - 1.5, 3, 3);
  }
  ctx.globalAlpha = 1;
  drawSelection(ctx, px, py);
  for (const h of state.hits) {
    if (h.x === undefined) continue;
    ctx.beginPath(); ctx.arc(px(h.x), py(h.y), 5, 0, 2 * Math.PI);
    ctx.fillStyle = "#000"; ctx.fill(); ctx.lineWidth = 2; ctx.strokeStyle = "#ffd400"; ctx.stroke();
  }
  if (state.queryPoint) {
    ctx.beginPath(); ctx.arc(px(state.queryPoint[0]), py(state.queryPoint[1]), 9, 0, 2 * Math.PI);
    ctx.lineWidth = 3; ctx.strokeStyle = "#e0004d"; ctx.stroke();
  }
}

function mapClick(ev) {
  const m = state.map;
  if (!m || !m.x.length) return;
  const c = $("map"), r = c.getBoundingClientRect();
  const cx = (ev.clientX - r.left) * (c.width / r.width), cy = (ev.clientY - r.top) * (c.height / r.height);
  const { px, py } = mapScale();
  let best = -1, bestD = Infinity;
  for (let i = 0; i < m.x.length; i++) {
    const d = (px(m.x[i]) - cx) ** 2 + (py(m.y[i]) - cy) ** 2;
    if (d < bestD) { bestD = d; best = i; }
  }
  if (best >= 0) runQuery({ id: m.id[best], label: "the point clicked on the map" });
}

function restart(query) {
  return query.rare ? { rare: true, offset: 0 } : query;  // a new filter starts the rarest-first pages again
}

function fillSelect(el, values) {
  for (const v of values) { const o = document.createElement("option"); o.value = o.textContent = v; el.appendChild(o); }
}

async function init() {
  try {
    const info = await (await fetch("/api/info")).json();
    state.info = info;
    $("run-info").textContent = `${info.run} · ${info.images.toLocaleString()} images · ${info.model || "model unknown"}` +
      ` · pool ${info.pool} · index ${info.index}`;
    $("k").max = info.k_max;
    fillSelect($("channel"), info.channels);
    fillSelect($("location"), info.locations);
    for (const s of info.scenes) { const o = document.createElement("option"); o.value = s; $("scenes").appendChild(o); }
    if (!info.channels.length) $("channel").disabled = true;
    state.map = await (await fetch("/api/map")).json();
    $("map-note").textContent = state.map.points ? `${state.map.points.toLocaleString()} images` +
      (state.map.points > state.map.x.length ? ` (${state.map.x.length.toLocaleString()} drawn)` : "") : "";
    $("legend").replaceChildren(...state.map.channels.map((ch, i) => {
      const s = document.createElement("span"); s.textContent = ch; s.style.setProperty("--c", COLORS[i]); return s; }));
    if (state.map.selected && state.map.selected.length) {
      const s = document.createElement("span"); s.className = "subset"; s.textContent = "subset pick";
      s.style.setProperty("--c", SELECTION_COLOR); $("legend").appendChild(s);
    }
    initCuration(info);
    await initQuality(info);
    drawMap();
    document.body.dataset.state = "ready";
    setStatus("type a query, pick an image, or click a point of the map");
  } catch (err) {
    document.body.dataset.state = "error";
    setStatus(`could not load the run: ${err.message || err}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("query-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value.trim();
    if (text) runQuery({ text });
  });
  $("image").addEventListener("change", () => { const f = $("image").files[0]; if (f) runQuery({ image: f }); });
  for (const id of ["channel", "location", "scene", "night", "rain", "k"]) {
    $(id).addEventListener("change", () => { if (state.query) runQuery(restart(state.query)); });
  }
  $("where").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && state.query) runQuery(restart(state.query)); });
  $("map").addEventListener("click", mapClick);
  init();
});
