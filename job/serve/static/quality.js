// The quality panel: how well this run's vectors retrieve what nuScenes' own annotations say an image shows
// (job eval's eval/, from /api/quality). Per task and vector column: MAP@100 beside what a random ranking scores;
// the better column of each task in bold; a link to the per-category figure. A run never scored shows the command.
"use strict";

function cell(tag, text, cls) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function qualityRows(scores) {
  const best = {};
  for (const s of scores) best[s.task] = Math.max(best[s.task] ?? -1, s["MAP@100"]);
  return scores.map((s) => {
    const tr = document.createElement("tr");
    const bar = document.createElement("td");
    bar.className = "q-bar";
    bar.title = `MAP@100 ${s["MAP@100"].toFixed(3)} (random ranking: ${s["chance MAP@100"].toFixed(3)}), ` +
      `R-Precision ${s["R-Precision"].toFixed(3)}, P@5 ${s["P@5"].toFixed(3)}, ${s.queries} queries`;
    bar.style.setProperty("--v", `${(100 * s["MAP@100"]).toFixed(1)}%`);
    bar.style.setProperty("--c", `${(100 * s["chance MAP@100"]).toFixed(1)}%`);
    tr.append(cell("td", s.task), cell("td", s.column, "q-col"),
      cell("td", s["MAP@100"].toFixed(3), s["MAP@100"] === best[s.task] ? "q-num best" : "q-num"),
      cell("td", s["chance MAP@100"].toFixed(3), "q-num muted"), bar);
    return tr;
  });
}

async function initQuality(info) {
  const body = $("quality-body");
  if (!info.quality) {
    $("quality-note").textContent = "not scored";
    body.replaceChildren(cell("div", info.quality_hint || "this run has no eval/", "muted q-hint"));
    return;
  }
  const q = await (await fetch("/api/quality")).json();
  $("quality-note").textContent = `${q.images.toLocaleString()} images · ${q.version || ""} labels, visibility ≥ ${q.min_visibility}`;
  const table = document.createElement("table");
  table.id = "quality-table";
  const head = document.createElement("tr");
  head.append(cell("th", "task"), cell("th", "vectors"), cell("th", "MAP@100"), cell("th", "chance"), cell("th", ""));
  table.append(head, ...qualityRows(q.scores));
  const parts = [table, cell("div", "bar: MAP@100 (0 to 1) · mark: a random ranking · bold: the better vectors",
    "muted q-extra")];
  if (q.selection) {
    const s = q.selection;
    parts.push(cell("div", `subset of ${s.subset}: ${s.rare_images_in_subset} images of ${s.rare_categories} rare ` +
      `categories (random: ${s.random_rare_images_mean.toFixed(1)} ± ${s.random_rare_images_sd.toFixed(1)})`, "muted q-extra"));
  }
  for (const s of q.searchad || []) {
    parts.push(cell("div", `SearchAD ${s.task.replace("searchad-", "")} · ${s.column}: MAP ${s.MAP.toFixed(3)} ` +
      `over ${s.labels} labels`, "muted q-extra"));
  }
  if (q.figure) {
    const a = cell("a", "per category ↗");
    a.href = q.figure;
    a.target = "_blank";
    a.id = "quality-figure";
    parts.push(a);
  }
  body.replaceChildren(...parts);
}
