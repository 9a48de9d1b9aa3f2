// The curation views of the search page (a run curated by `job curate`): badges and a "duplicates" control on every
// hit, the duplicate group in a dialog, "rarest first" paging, the diverse subset on the map.
// app.js calls initCuration, decorateCard, drawSelection and updatePager; ids are strings (63-bit hashes).
"use strict";

const KIND_TEXT = { exact: "exact copy", still: "standing still", near: "near duplicate" };
const SELECTION_COLOR = "#00a36c";

function badge(text, cls, title) {
  const b = document.createElement("span");
  b.className = `badge ${cls}`;
  b.textContent = text;
  if (title) b.title = title;
  return b;
}

function initCuration(info) {
  const c = info.curation, box = $("curation-info");
  if (!c) {
    box.replaceChildren("Not curated: duplicate groups, rarest first and the subset on the map need ",
      Object.assign(document.createElement("code"), { textContent: info.curate_hint }), ".");
    box.classList.add("hint");
    return;
  }
  const kinds = ["exact", "still", "near"].map((k) => `${k} ${(c.by_kind[k] || 0).toLocaleString()}`).join(" · ");
  const threshold = c.threshold !== undefined ? ` · near threshold cosine ≥ ${Number(c.threshold).toFixed(5)}` : "";
  const subset = c.selection ? ` · subset of ${c.selection.toLocaleString()} picks` +
    (c.radius_cosine ? ` (every unique image within cosine ${Number(c.radius_cosine).toFixed(3)} of one)` : "") : "";
  box.textContent = `Curated: ${c.duplicates.toLocaleString()} of ${info.images.toLocaleString()} images repeat ` +
    `another (${kinds}) in ${c.groups.toLocaleString()} groups${threshold}${subset}`;
  box.title = c.rule || "";
  $("rare").hidden = false;
  if (c.selection) {
    $("selection-toggle").hidden = false;
    $("selection-note").textContent = `the subset on the map (${c.selection.toLocaleString()} picks)`;
  }
}

function decorateCard(card, meta, h) {
  const c = h.curation;
  if (!c) return;
  const row = document.createElement("div");
  row.className = "cur";
  if (c.pick !== null) row.appendChild(badge(`pick #${c.pick + 1}`, "pick", "in the diverse subset (job curate --select)"));
  if (c.kind) row.appendChild(badge(c.kind, `kind-${c.kind}`, `${KIND_TEXT[c.kind]} of image ${c.keep_id}`));
  if (c.uniqueness !== null && !state.query.rare) row.appendChild(badge(`rare ${c.uniqueness.toFixed(2)}`, "rarity",
    "uniqueness: 0 = a crowd of look-alikes, 1 = the rarest image of the run"));
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "dup-btn";
  btn.dataset.id = h.id;
  btn.textContent = `duplicates: ${c.group - 1}`;
  btn.title = c.group > 1 ? `its group: ${c.group} images (the one kept and those that repeat it)` : "repeats nothing";
  btn.addEventListener("click", (ev) => { ev.stopPropagation(); openGroup(h.id); });
  row.appendChild(btn);
  meta.appendChild(row);
}

function groupCard(m) {
  const card = document.createElement("div");
  card.className = `hit member ${m.role}`;
  card.dataset.id = m.id;
  card.title = m.path;
  const img = document.createElement("img");
  img.src = m.thumb;
  img.alt = m.path;
  const meta = document.createElement("div");
  meta.className = "meta";
  const head = document.createElement("div");
  if (m.role === "kept") head.appendChild(badge("kept", "kept", "the image kept for the group (earliest)"));
  else {
    head.appendChild(badge(m.kind, `kind-${m.kind}`, KIND_TEXT[m.kind]));
    const cos = document.createElement("span");
    cos.className = "cos";
    cos.textContent = ` cos ${m.cosine.toFixed(5)}`;
    cos.title = m.keep_id === window.lastGroup.root ? "cosine to the image kept" : `cosine to image ${m.keep_id}, which repeats the one kept`;
    head.appendChild(cos);
  }
  const line = (text) => { const d = document.createElement("div"); d.textContent = text; return d; };
  meta.append(head, line(`${m.scene_name || "-"} · ${m.channel || "-"}`), line(m.time ? `${m.time} UTC` : (m.path || "")));
  card.append(img, meta);
  card.addEventListener("click", () => {
    $("dup-dialog").close();
    runQuery({ id: m.id, label: `${m.scene_name || ""} ${m.channel || m.path}`.trim() });
  });
  return card;
}

async function openGroup(id) {
  document.body.dataset.dup = "loading";
  let body;
  try {
    const resp = await fetch(`/api/duplicates?id=${encodeURIComponent(id)}`);
    body = await resp.json();
    if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  } catch (err) {
    document.body.dataset.dup = "error";
    setStatus(String(err.message || err), true);
    return;
  }
  window.lastGroup = body;
  const kinds = Object.entries(body.by_kind).map(([k, n]) => `${n} ${KIND_TEXT[k] || k}${n > 1 ? "s" : ""}`).join(", ");
  $("dup-title").textContent = body.size > 1 ? `Duplicate group: ${body.size} images` : "No duplicates";
  $("dup-summary").textContent = body.size > 1
    ? `The image kept (the earliest) and ${body.size - 1} that repeat it: ${kinds}` +
      (body.shown < body.size ? ` (the first ${body.shown} shown, in time order)` : ", in time order") +
      (body.threshold ? `; each within cosine ≥ ${Number(body.threshold).toFixed(5)} of the image it repeats` : "") +
      (body.by_kind.still && body.still_metres ? `, the standing-still ones taken while the car moved less than ` +
        `${body.still_metres} m` : "") + "."
    : "This image repeats no other and no image repeats it.";
  $("dup-grid").replaceChildren(...body.members.map(groupCard));
  const dlg = $("dup-dialog");
  if (!dlg.open) dlg.showModal();
  document.body.dataset.dup = "open";
}

function drawSelection(ctx, px, py) {
  const m = state.map;
  if (!m || !m.selected || !m.selected.length || !$("show-selection").checked) return;
  ctx.lineWidth = 2;
  ctx.strokeStyle = SELECTION_COLOR;
  ctx.fillStyle = "rgba(255,255,255,0.85)";
  for (const i of m.selected) {
    const x = px(m.x[i]), y = py(m.y[i]);
    ctx.beginPath();
    ctx.moveTo(x, y - 6); ctx.lineTo(x + 6, y); ctx.lineTo(x, y + 6); ctx.lineTo(x - 6, y); ctx.closePath();
    ctx.fill(); ctx.stroke();
  }
}

function updatePager(body) {
  const pager = $("pager");
  pager.hidden = !(state.query && state.query.rare);
  if (pager.hidden) return;
  const from = body.offset + (body.hits.length ? 1 : 0), to = body.offset + body.hits.length;
  $("page-note").textContent = `${from}–${to} of ${body.matches.toLocaleString()}, rarest first`;
  $("prev").disabled = body.offset === 0;
  $("next").disabled = to >= body.matches;
}

function pageBy(step) {
  if (!state.query || !state.query.rare) return;
  const k = Number($("k").value || 24);
  runQuery({ rare: true, offset: Math.max(0, (state.query.offset || 0) + step * k) });
}

document.addEventListener("DOMContentLoaded", () => {
  $("rare").addEventListener("click", () => runQuery({ rare: true, offset: 0 }));
  $("prev").addEventListener("click", () => pageBy(-1));
  $("next").addEventListener("click", () => pageBy(1));
  $("show-selection").addEventListener("change", () => drawMap());
  $("dup-close").addEventListener("click", () => $("dup-dialog").close());
  $("dup-dialog").addEventListener("close", () => { document.body.dataset.dup = "closed"; });
});
