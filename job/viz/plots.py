"""The 2-D map and its plots: projection, density shading, coloured scatter maps, PNGs saved and shown."""
from __future__ import annotations

import io
import logging
import os
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import fsutil
from ..runfolder import read_table
from .run import OTHER_COLOR, Run

log = logging.getLogger(__name__)


def projection(
    run: Run, *, max_points: int = 50_000, seed: int = 0, n_epochs: int | None = None
) -> tuple[pd.DataFrame, str]:
    """The run's 2-D map joined with its metadata, and a sentence saying where it came from.

    Uses ``umap2d.parquet`` when the run has it; otherwise computes UMAP here, on a random sample of
    ``max_points`` rows when the run is larger (and says so).
    """
    if fsutil.exists(run.layout.umap):
        coords = read_table(run.layout.umap).to_pandas()
        df = run.meta.merge(coords, on="id", how="inner")
        note = f"map: {run.layout.umap} ({len(df):,} points, precomputed by the job)"
        if len(df) < run.n:
            note += f"; {run.n - len(df):,} images have no coordinates (projection older than the embeddings?)"
        return df, note
    from ..project import UmapParams, compute_umap

    rows = np.arange(run.n)
    if run.n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(run.n, size=max_points, replace=False))
    t0 = time.perf_counter()
    coords, _ = compute_umap(run.vectors[rows], UmapParams(fit_sample=len(rows), seed=seed, n_epochs=n_epochs),
                             progress=lambda m: log.info(m))
    df = run.meta.iloc[rows].reset_index(drop=True).copy()
    df["x"], df["y"] = coords[:, 0], coords[:, 1]
    sample = f"a random sample of {len(rows):,} of {run.n:,} points" if len(rows) < run.n else f"all {run.n:,} points"
    note = (f"umap2d.parquet is missing from the run, so UMAP was computed here on {sample} "
            f"in {time.perf_counter() - t0:.0f} s. `python -m job project --run {run.uri}` stores the full map.")
    return df, note


# --------------------------------------------------------------------------------------------- plotting


SHADE_ABOVE = 5_000  # above this many points the map is rasterised (density-shaded) instead of scattered


def marker_style(n: int) -> tuple[float, float]:
    """Point size (pt^2) and alpha for a plain scatter of ``n`` points (used up to SHADE_ABOVE points)."""
    size = float(np.clip(6000.0 / max(n, 1), 2.0, 40.0))
    alpha = float(np.clip(3000.0 / max(n, 1), 0.55, 0.9))
    return size, alpha


def _palette(k: int) -> list[Any]:
    import matplotlib

    cmap: Any = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    base = list(cmap.colors)
    return [base[i % len(base)] for i in range(k)]


def shade(
    x: np.ndarray, y: np.ndarray, codes: np.ndarray, colors: np.ndarray, *,
    extent: tuple[float, float, float, float], shape: tuple[int, int] = (380, 500), min_alpha: float = 0.35,
) -> np.ndarray:
    """Categorical density image (datashader-style, in numpy): (H, W, 4) RGBA.

    Each pixel's colour is the count-weighted mean of its points' class colours; its opacity grows
    with the log of its count from ``min_alpha`` (one point) to 1 (the densest pixel), so sparse
    outliers stay visible and dense cores do not saturate into one blob.
    """
    h, w = shape
    x0, x1, y0, y1 = extent
    ix = np.clip(((x - x0) / max(x1 - x0, 1e-12) * w).astype(np.int64), 0, w - 1)
    iy = np.clip(((y1 - y) / max(y1 - y0, 1e-12) * h).astype(np.int64), 0, h - 1)  # row 0 at the top
    k = len(colors)
    counts = np.bincount((codes * h + iy) * w + ix, minlength=k * h * w).reshape(k, h, w).astype(np.float32)
    total = counts.sum(axis=0)
    rgb = np.einsum("khw,kc->hwc", counts, np.asarray(colors, np.float32)[:, :3]) / np.maximum(total, 1)[..., None]
    alpha = np.where(total > 0, min_alpha + (1 - min_alpha) * np.log1p(total) / np.log1p(max(total.max(), 1)), 0.0)
    return np.dstack([rgb, alpha]).astype(np.float32)


def scatter_map(
    df: pd.DataFrame,
    column: str,
    *,
    title: str | None = None,
    top: int = 10,
    order: Sequence[str] | None = None,
    colors: dict[str, Any] | None = None,
    seed: int = 0,
    figsize: tuple[float, float] = (10.5, 7.5),
    shade_above: int = SHADE_ABOVE,
) -> Any:
    """A 2-D map coloured by a categorical ``column``, with a legend (counts per class).

    The ``top`` most frequent classes (or those in ``order``) get their own colour; the rest are drawn
    in light grey underneath as "other". Small maps are scattered (random draw order so no class hides
    another); above ``shade_above`` points the map is a categorical density image (see ``shade``),
    which stays readable at 200k+ points.
    """
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    labels = df[column].astype(str).to_numpy()
    counts = pd.Series(labels).value_counts()
    shown = [c for c in (order if order is not None else counts.index[:top]) if c in counts.index]
    cmap = dict(zip(shown, _palette(len(shown))))
    if colors:
        cmap.update({k: v for k, v in colors.items() if k in cmap})
    rgba = np.array([to_rgba(cmap[v]) for v in shown]).reshape(-1, 4)
    code_of = {v: i for i, v in enumerate(shown)}
    x, y = df["x"].to_numpy(np.float64), df["y"].to_numpy(np.float64)
    is_other = ~np.isin(labels, shown)
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if len(df) > shade_above:
        pad_x, pad_y = 0.02 * (np.ptp(x) or 1), 0.02 * (np.ptp(y) or 1)
        extent = (x.min() - pad_x, x.max() + pad_x, y.min() - pad_y, y.max() + pad_y)
        if is_other.any():
            grey = shade(x[is_other], y[is_other], np.zeros(int(is_other.sum()), np.int64),
                         np.array([to_rgba(OTHER_COLOR)]), extent=extent, min_alpha=0.25)
            ax.imshow(grey, extent=extent, origin="upper", interpolation="nearest", aspect="auto")
        sel = ~is_other
        if sel.any():
            codes = np.array([code_of[v] for v in labels[sel]], np.int64)
            img = shade(x[sel], y[sel], codes, rgba, extent=extent, min_alpha=0.5 if is_other.any() else 0.3)
            ax.imshow(img, extent=extent, origin="upper", interpolation="nearest", aspect="auto")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        how = "density-shaded"
    else:
        size, alpha = marker_style(len(df))
        if is_other.any():
            ax.scatter(x[is_other], y[is_other], s=size, c=OTHER_COLOR, alpha=alpha, linewidths=0, rasterized=True)
        idx = np.flatnonzero(~is_other)
        idx = idx[np.random.default_rng(seed).permutation(len(idx))]
        if len(idx):
            ax.scatter(x[idx], y[idx], s=size, c=rgba[[code_of[v] for v in labels[idx]]], alpha=alpha, linewidths=0,
                       rasterized=True)
        how = ""
    handles = [Line2D([], [], ls="", marker="o", ms=7, color=cmap[v], label=f"{v} ({counts[v]:,})") for v in shown]
    if is_other.any():
        noun = column.replace("_name", "")
        handles.append(Line2D([], [], ls="", marker="o", ms=7, color=OTHER_COLOR,
                              label=f"{len(counts) - len(shown):,} other {noun}s ({int(is_other.sum()):,})"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
              title=column.replace("_name", "").replace("_", " "), title_fontsize=10, alignment="left")
    ax.set_title(title or f"UMAP of {len(df):,} images, coloured by {column.replace('_', ' ')}", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"UMAP 1  ({how + ', ' if how else ''}{len(df):,} points)", fontsize=9)
    ax.set_ylabel("UMAP 2", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def save_figure(fig: Any, figures_dir: str | None, name: str, *, dpi: int = 110) -> str | None:
    """Write ``fig`` as ``figures_dir/name.png`` (when a folder is given); returns the path."""
    if not figures_dir:
        return None
    os.makedirs(figures_dir, exist_ok=True)
    path = os.path.join(figures_dir, f"{name}.png")
    fig.savefig(path, dpi=dpi)
    return path


def show(fig: Any, figures_dir: str | None, name: str, *, dpi: int = 110) -> str | None:
    """Display the figure in the notebook as a PNG and save the same PNG into ``figures_dir``; returns its path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return show_png(buf.getvalue(), figures_dir, name)


def show_png(png: bytes, figures_dir: str | None, name: str) -> str | None:
    """Display PNG bytes in the notebook (e.g. a figure the job wrote into the run) and save them into
    ``figures_dir`` as ``name.png``; returns its path."""
    path = None
    if figures_dir:
        os.makedirs(figures_dir, exist_ok=True)
        path = os.path.join(figures_dir, f"{name}.png")
        with open(path, "wb") as f:
            f.write(png)
    try:
        from IPython.display import Image as IPImage
        from IPython.display import display

        display(IPImage(data=png, format="png"))
    except ImportError:  # pragma: no cover - outside IPython
        pass
    return path


