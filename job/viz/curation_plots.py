"""Figures of a run's curation: the largest duplicate groups, the subset on the map, its coverage per value."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .curation import RunCuration, duplicate_groups, group_members, selected_points
from .gallery import thumbnails
from .plots import scatter_map
from .run import Run

KIND_COLORS = {"kept": "#1d2733", "exact": "#b00020", "still": "#c76a00", "near": "#1d4ab0"}
PICK_COLOR = "#00a36c"


def _frame(ax: Any, color: str, width: float = 3.0) -> None:
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def groups_figure(run: Run, cur: RunCuration, *, groups: int = 4, per_group: int = 6) -> Any:
    """The ``groups`` largest duplicate groups, one row each: the image kept (dark frame), then up to
    ``per_group - 1`` images that repeat it in time order, each with its kind and its cosine to the image it
    repeats; a row that cannot show its whole group says how many more there are."""
    from matplotlib.figure import Figure

    table = duplicate_groups(run, cur).head(groups)
    n = max(1, len(table))
    per_group = max(2, min(per_group, int(table["size"].max()) if len(table) else 2))
    fig = Figure(figsize=(2.75 * per_group, 2.05 * n + 0.8), dpi=100, layout="constrained")
    total = int(cur.duplicates["keep_id"].nunique())
    fig.suptitle(f"The {len(table)} largest of {total:,} duplicate groups\n(the image kept first, then those that "
                 "repeat it, in time order)" if len(table) else "No duplicate groups in this run", fontsize=12)
    axes = fig.subplots(n, per_group, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for g, group in enumerate(table.itertuples(index=False)):
        members = group_members(run, cur, int(group.root))
        shown = members.head(per_group)
        images = thumbnails(run, shown["id"].tolist())
        for j, m in enumerate(shown.itertuples(index=False)):
            ax = axes[g, j]
            ax.imshow(np.asarray(images[int(m.id)]))
            color = KIND_COLORS.get(str(m.kind), "black")
            if m.kind == "kept":
                head = f"kept, group of {int(group.size)} · {_time(m.timestamp)}\n{m.scene_name} · {m.channel}"
            else:
                head = f"{m.kind}  cos {m.cosine:.5f}"
                more = int(group.size) - per_group
                head += f"\n(+{more} more in the group)" if j == per_group - 1 and more > 0 else f"\n{_time(m.timestamp)}"
            ax.set_title(head, fontsize=8.5, color=color)
            _frame(ax, color, 3.0 if m.kind == "kept" else 1.5)
    return fig


def _time(us: Any) -> str:
    from ..search import time_text

    text = time_text(us)
    return text[11:] + " UTC" if text else ""


def selection_map(df: pd.DataFrame, cur: RunCuration, *, column: str = "location", label_first: int = 10) -> Any:
    """The map coloured by ``column`` with the subset's picks drawn over it as diamonds (the first
    ``label_first`` numbered by pick order): where in the embedding space the subset lies."""
    from matplotlib.lines import Line2D

    picks = selected_points(df, cur)
    sel = cur.summary.selection if cur.summary is not None else None
    radius = sel.radius_cosine if sel is not None else None
    title = (f"The diverse subset: {len(picks):,} picks of {len(df):,} images on the map"
             + (f"\n(every unique image is within cosine {radius:.3f} of a pick)" if radius else ""))
    fig = scatter_map(df, column, title=title)
    ax = fig.axes[0]
    size = float(np.clip(9000.0 / max(len(picks), 1), 18.0, 90.0))
    from matplotlib import patheffects

    ax.scatter(picks["x"], picks["y"], s=size, marker="D", facecolors="none", edgecolors="black", linewidths=1.5,
               zorder=5)  # hollow: the pick's own colour (its location) shows inside
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for rec in picks.head(label_first).itertuples(index=False):
        ax.annotate(str(int(rec.rank) + 1), (rec.x, rec.y), xytext=(5, 5), textcoords="offset points", fontsize=9,
                    color="black", fontweight="bold", zorder=6, path_effects=halo)
    old = ax.get_legend()
    handles = list(old.legend_handles) + [Line2D([], [], ls="", marker="D", ms=7, markerfacecolor="none",
                                                 markeredgecolor="black", markeredgewidth=1.5)]
    labels = [t.get_text() for t in old.get_texts()] + [f"subset pick ({len(picks):,}; numbers: pick order)"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
              title=column.replace("_name", "").replace("_", " "), title_fontsize=10, alignment="left")
    return fig


def coverage_figure(tables: dict[str, pd.DataFrame], *, top: int = 12) -> Any:
    """Per column (e.g. location, channel): for each value, its share of the unique images beside its share of the
    subset's picks (bars, per cent), with the counts written at the end (picks / unique / images)."""
    from matplotlib.figure import Figure

    rows = max(min(len(t), top) for t in tables.values()) if tables else 1
    fig = Figure(figsize=(6.6 * max(1, len(tables)), 0.62 * rows + 1.6), dpi=100, layout="constrained")
    fig.suptitle("Coverage of the subset: share of the unique images vs share of the picks, per value", fontsize=12)
    axes = fig.subplots(1, max(1, len(tables)), squeeze=False)[0]
    for ax, (column, table) in zip(axes, tables.items()):
        t = table.head(top).iloc[::-1]
        y = np.arange(len(t))
        ax.barh(y + 0.2, t["unique_%"], height=0.38, color="#b8c2cc", label="share of the unique images")
        ax.barh(y - 0.2, t["picks_%"], height=0.38, color=PICK_COLOR, label="share of the picks")
        ax.set_yticks(y, [str(v) for v in t.index], fontsize=9)
        peak = float(max(t["unique_%"].max(), t["picks_%"].max(), 1.0))
        for yi, u, p, picks, unique, images in zip(y, t["unique_%"], t["picks_%"], t["picks"], t["unique"],
                                                   t["images"]):
            ax.text(max(u, p) + peak * 0.02, yi, f"{picks} / {unique} / {images}", va="center", fontsize=8,
                    color="#333333")
        ax.set_xlim(0, peak * 1.35)
        ax.set_xlabel("per cent  (labels: picks / unique images / images)", fontsize=9)
        ax.set_title(column.replace("_", " "), fontsize=11)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return fig
