"""The comparison's outputs: ``compare.json`` (every variant, every vector, every task's scores, throughput and where
the time went), the same as a markdown table, and one PNG (MAP@100 per task, a bar per variant and vector, what a
random ranking scores marked)."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from ..config import JobConfig, Variant
from ..runfolder import IMAGE_COLUMN, Manifest, RunLayout

TASK_ORDER = ("text", "image", "scene", "ego", "searchad-text", "searchad-image")
TASK_TITLES = {"text": "text → image (categories)", "image": "image → image (other scenes)",
               "scene": "text → image (scene words)", "ego": "text → image (ego motion)"}
METRICS = ("map_at_100", "r_precision", "p_at_5")


@dataclass
class VariantRun:
    """One variant after its run: where it is, what ran, and its manifest (with ``eval``): what the report shows."""

    variant: Variant
    layout: RunLayout
    manifest: Manifest
    resumed: bool  # the run folder was already complete: nothing was embedded this time


def _vector(column: str, r: VariantRun) -> str:
    """What a column holds, by pooling: ``embedding`` is the run's ``--pool``, the other its model's trained output."""
    return r.manifest.model.pool if column == IMAGE_COLUMN else r.manifest.model.trained_pool


def comparison(cfg: JobConfig, runs: list[VariantRun], out: str, *, started: str, wall_s: float) -> dict[str, Any]:
    """The ``compare.json`` document."""
    variants: list[dict[str, Any]] = []
    for r in runs:
        m, ev = r.manifest, r.manifest.eval
        t = m.timings
        variants.append({
            "label": r.variant.label, "spec": r.variant.spec(), "run": r.variant.label,
            "model": m.model.name, "pretrained": m.model.pretrained, "pool": m.model.pool,
            "trained_pool": m.model.trained_pool, "resize": r.variant.resize, "image_size": m.model.image_size,
            "embed_dim": m.model.embed_dim, "device": m.model.device, "precision": m.model.precision,
            "embedded": m.counts.embedded, "failed": m.counts.failed, "scored_images": ev.images if ev else 0,
            "images_per_s": m.images_per_s, "model_compute_s": t.get("model_compute_s"),
            "waiting_for_decode_s": t.get("waiting_for_decode_s"), "embed_loop_s": t.get("embed_loop_s"),
            "resumed": r.resumed,
            "scores": [{"task": s.task, "column": s.column, "vector": _vector(s.column, r), "queries": s.queries,
                        **{k: getattr(s, k) for k in METRICS}, **{f"chance_{k}": getattr(s, f"chance_{k}")
                                                                  for k in METRICS}}
                       for s in (ev.scores if ev else [])],
        })
    tasks = [t for t in TASK_ORDER if any(s["task"] == t for v in variants for s in v["scores"])]
    best: dict[str, dict[str, Any]] = {}
    for task in tasks:
        cands = [(s["map_at_100"], v["label"], s["vector"]) for v in variants for s in v["scores"] if s["task"] == task]
        score, label, vector = max(cands)
        best[task] = {"variant": label, "vector": vector, "map_at_100": score}
    return {
        "started": started, "wall_s": round(wall_s, 1), "out": out,
        "source": list(cfg.source.sources), "channels": list(cfg.source.channels), "limit": cfg.source.limit,
        "eval": {"min_visibility": cfg.eval.min_visibility, "min_positives": cfg.eval.min_positives,
                 "image_queries": cfg.eval.image_queries, "seed": cfg.eval.seed},
        "tasks": tasks, "variants": variants, "best": best,
    }


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(doc: dict[str, Any]) -> str:
    """One row per variant and vector: MAP@100 per task (the best in bold), P@5 of the category text queries,
    images/s; the last row is what a random ranking scores."""
    tasks = doc["tasks"]
    head = ["variant", "vector", *[f"{t} MAP@100" for t in tasks], "text P@5", "images/s", "model s", "decode wait s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    chance: dict[str, float] = {}
    for v in doc["variants"]:
        for vector in dict.fromkeys(s["vector"] for s in v["scores"]) or [v["pool"]]:
            by_task = {s["task"]: s for s in v["scores"] if s["vector"] == vector}
            cells = [f"`{v['label']}`", vector]
            for t in tasks:
                s = by_task.get(t)
                chance.setdefault(t, s["chance_map_at_100"] if s else 0.0)
                best = doc["best"].get(t, {})
                bold = s is not None and best.get("variant") == v["label"] and best.get("vector") == vector
                cells.append(f"**{_fmt(s['map_at_100'])}**" if bold and s else _fmt(s["map_at_100"] if s else None))
            cells.append(_fmt(by_task["text"]["p_at_5"]) if "text" in by_task else "–")
            cells += [_fmt(v["images_per_s"], 1), _fmt(v["model_compute_s"], 1), _fmt(v["waiting_for_decode_s"], 1)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("| random ranking | | " + " | ".join(_fmt(chance.get(t)) for t in tasks) + " | | | | |")
    spec = "\n".join(f"- `{v['label']}`: `{v['spec']}` ({v['embedded']} images, {v['embed_dim']}-d, "
                     f"{v['image_size']} px{', already complete' if v['resumed'] else ''})" for v in doc["variants"])
    limit = f", first {doc['limit']} images" if doc["limit"] else ""
    return (f"# job compare\n\n{', '.join(doc['source'])} — channels {', '.join(doc['channels'])}{limit}; "
            "min visibility "
            f"{doc['eval']['min_visibility']}, categories with ≥ {doc['eval']['min_positives']} images.\n\n"
            + "\n".join(lines) + "\n\n" + spec + "\n")


def compare_png(doc: dict[str, Any]) -> bytes:
    """PNG bytes: one panel per task, a horizontal bar per variant and vector (MAP@100), the random ranking marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = doc["tasks"] or ["text"]
    rows = [(v["label"], s["vector"]) for v in doc["variants"] for s in v["scores"]]
    rows = list(dict.fromkeys(rows)) or [(v["label"], v["pool"]) for v in doc["variants"]]
    colors = {vec: c for vec, c in zip(dict.fromkeys(vec for _, vec in rows), ("#1f77b4", "#ff7f0e", "#2ca02c"))}
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks) + 2.4, 0.42 * len(rows) + 1.8), dpi=110,
                             sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, (label, vector) in enumerate(rows):
            v = next(x for x in doc["variants"] if x["label"] == label)
            s = next((x for x in v["scores"] if x["task"] == task and x["vector"] == vector), None)
            if s is None:
                continue
            ax.barh(i, s["map_at_100"], height=0.7, color=colors[vector], label=vector)
            ax.plot([s["chance_map_at_100"]] * 2, [i - 0.4, i + 0.4], color="black", lw=1.5,
                    label="random ranking")
            ax.text(s["map_at_100"] + 0.01, i, f"{s['map_at_100']:.3f}", va="center", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(TASK_TITLES.get(task, task), fontsize=9)
        ax.set_xlabel("MAP@100")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)))
    axes[0][0].set_yticklabels([f"{label}\n{vector}" for label, vector in rows], fontsize=7)
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique), fontsize=8, frameon=False)
    fig.suptitle("job compare: retrieval on nuScenes' own annotations, per variant and vector", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
