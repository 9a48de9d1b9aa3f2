"""The figure of an evaluation: MAP@100 per category, text→image and image→image, one bar per vector column, with
what a random ranking scores marked, categories from the most to the least frequent (their image counts named)."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from .tasks import IMAGE_TASK

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")


def per_category_png(per_query: pa.Table, positives: dict[str, int]) -> bytes:
    """PNG bytes: per category, mean MAP@100 of its text query and of its image queries, per vector column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = {c: np.asarray(per_query.column(c).to_pylist(), dtype=object) for c in per_query.column_names}
    tasks = [t for t in ("text", IMAGE_TASK) if len(d.get("task", [])) and (d["task"] == t).any()]
    columns = list(dict.fromkeys(d["column"].tolist())) if len(d.get("column", [])) else []
    cats = sorted({q for t, q in zip(d.get("task", []), d.get("query", [])) if t in tasks},
                  key=lambda c: (-positives.get(c, 0), c))
    height = max(2.6, 0.34 * max(1, len(cats)) + 1.6)
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.2 * max(1, len(tasks)) + 1.6, height), dpi=110,
                             sharey=True, squeeze=False)
    y = np.arange(len(cats))
    bar = 0.8 / max(1, len(columns))
    for ax, task in zip(axes[0], tasks or ["text"]):
        for ci, column in enumerate(columns):
            vals, chance = [], []
            for c in cats:
                m = (d["task"] == task) & (d["column"] == column) & (d["query"] == c)
                vals.append(float(d["map_at_100"][m].astype(float).mean()) if m.any() else np.nan)
                chance.append(float(d["chance_map_at_100"][m].astype(float).mean()) if m.any() else np.nan)
            pos = y - 0.4 + bar * (ci + 0.5)
            ax.barh(pos, np.nan_to_num(vals), height=bar * 0.92, color=COLORS[ci % len(COLORS)], label=column)
            ax.scatter(chance, pos, marker="|", s=60, color="black", zorder=3,
                       label="random ranking" if ci == 0 else None)
        ax.set_xlim(0, 1)
        ax.set_title({"text": "text → image", IMAGE_TASK: "image → image (other scenes)"}.get(task, task))
        ax.set_xlabel("MAP@100")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([f"{c} ({positives.get(c, 0)})" for c in cats], fontsize=8)
    axes[0][0].invert_yaxis()
    if not cats:
        axes[0][0].text(0.5, 0.5, "no category with enough images to ask", ha="center", va="center",
                        transform=axes[0][0].transAxes)
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Retrieval per nuScenes category (images showing it in brackets)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
