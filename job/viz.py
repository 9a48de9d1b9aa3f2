"""Notebook helpers: open a finished run, its 2-D map, coloured scatter plots, thumbnails and galleries.

Used by ``notebooks/umap_visualize.ipynb`` so its cells stay short; everything here works on a run
folder given as a local path or an ``s3://`` URL and is unit-tested without a notebook.
"""
from __future__ import annotations

import io
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import fsutil
from .errors import UsageError
from .config import CAMERA_CHANNELS
from .store import RunLayout, embedding_matrix, read_embeddings, read_table

log = logging.getLogger(__name__)

THUMB_WIDTH = 128
CAMERA_ORDER = CAMERA_CHANNELS
MISSING = "unknown"
WEATHER_ORDER = ("night + rain", "night", "rain", "day, no rain", "no description")
# Fixed colours for the weather map: night is dark, rain blue, both purple, plain day light grey.
WEATHER_COLORS = {"night + rain": "#7b2cbf", "night": "#111111", "rain": "#1f77b4", "day, no rain": "#f2a33a",
                  "no description": "#bbbbbb"}
OTHER_COLOR = "#d0d0d0"
_CHANNEL_RE = re.compile(r"(CAM_[A-Z_]+?)(?:__|/|$)")


class RunNotReady(UsageError):
    """The run folder holds no finished, successful run; the notebook refuses it."""


@dataclass
class Run:
    """A finished run loaded for exploration: metadata, unit vectors, manifest."""

    uri: str
    layout: RunLayout
    manifest: dict[str, Any]
    meta: pd.DataFrame  # one row per embedded image, in parquet order; no embedding column
    vectors: np.ndarray  # (n, dim) float32, unit length, aligned with ``meta``
    _row_of_id: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.meta)

    def row(self, key: int | str | None) -> int:
        """Row number of an image given by id, path (or a path suffix), or row number as ``"#12"``."""
        if key is None:
            return 0
        if isinstance(key, (int, np.integer)):
            if not self._row_of_id:
                self._row_of_id = {int(i): r for r, i in enumerate(self.meta["id"].to_numpy())}
            if int(key) not in self._row_of_id:
                raise KeyError(f"no image with id {key} in {self.uri}")
            return self._row_of_id[int(key)]
        s = str(key).strip()
        if s.startswith("#"):
            r = int(s[1:])
            if not 0 <= r < self.n:
                raise KeyError(f"row {r} is out of range (the run has {self.n} rows)")
            return r
        if s.lstrip("-").isdigit():
            return self.row(int(s))
        paths = self.meta["path"]
        exact = np.flatnonzero(paths.to_numpy() == s)
        if len(exact):
            return int(exact[0])
        suffix = np.flatnonzero(paths.str.endswith(s).to_numpy())
        if len(suffix):
            return int(suffix[0])
        raise KeyError(f"no image with path {s!r} in {self.uri}")

    def summary(self) -> str:
        """A few lines about the run for the top of the notebook."""
        m = self.manifest
        model = m.get("model", {})
        counts = m.get("counts", {})
        cols = [c for c in ("scene_name", "channel", "location") if c in self.meta]
        extra = ", ".join(f"{self.meta[c].nunique()} {c.replace('_name', '')}s" for c in cols)
        return (
            f"run {self.uri}\n"
            f"  {self.n:,} images embedded ({counts.get('failed', 0)} failed), dim {self.vectors.shape[1]}"
            + (f", {extra}" if extra else "") + "\n"
            f"  model {model.get('name', '?')} / {model.get('pretrained', '?')}, pool {model.get('pool', '?')}\n"
            f"  finished {m.get('finished', '?')}"
        )


def check_manifest(uri: str) -> dict[str, Any]:
    """The manifest of a finished, successful run; RunNotReady (clear message) otherwise."""
    layout = RunLayout(uri.rstrip("/"))
    if not fsutil.exists(layout.manifest):
        raise RunNotReady(
            f"refusing {uri}: it has no manifest.json, so the run did not finish (it is still running, it failed, "
            "or this is not a run folder). Wait for the job or re-run it; `python -m job run` resumes."
        )
    manifest = fsutil.read_json(layout.manifest)
    status = manifest.get("status")
    if status != "succeeded":
        raise RunNotReady(
            f"refusing {uri}: its manifest says status={status!r}, not 'succeeded'"
            + (f" ({manifest['error']})" if manifest.get("error") else "")
            + "; look at the job's log and re-run it."
        )
    return manifest


def _derive(meta: pd.DataFrame) -> pd.DataFrame:
    """Columns every plot needs, filled from the path when the run has no nuScenes metadata."""
    if "channel" not in meta or meta["channel"].isna().all():
        meta["channel"] = meta["path"].map(lambda p: (m.group(1) if (m := _CHANNEL_RE.search(p)) else MISSING))
    if "scene_name" not in meta or meta["scene_name"].isna().all():
        meta["scene_name"] = meta["path"].map(lambda p: p.rsplit("/", 2)[-2] if p.count("/") else MISSING)
    for col in ("channel", "scene_name", "location"):
        if col not in meta:
            meta[col] = MISSING
        meta[col] = meta[col].fillna(MISSING).astype(str)
    desc = meta["scene_description"] if "scene_description" in meta else pd.Series([None] * len(meta), index=meta.index)
    meta["weather"] = weather_labels(desc)
    return meta


def open_run(uri: str) -> Run:
    """Load a finished run (local folder or ``s3://`` URL); refuses missing or failed runs."""
    if not uri or not str(uri).strip():
        raise RunNotReady("no run given: set run_uri in the parameters cell or the RUN_URI environment variable "
                          "(a run folder, local or s3://…/runs/<id>/)")
    uri = str(uri).strip().rstrip("/")
    manifest = check_manifest(uri)
    layout = RunLayout(uri, manifest.get("outputs", {}).get("embeddings", "embeddings.parquet"))
    t0 = time.perf_counter()
    table = read_embeddings(layout.embeddings)
    vectors = embedding_matrix(table)
    meta = table.drop_columns(["embedding"]).to_pandas()
    log.info("loaded %d rows from %s in %.1f s", len(meta), layout.embeddings, time.perf_counter() - t0)
    return Run(uri=uri, layout=layout, manifest=manifest, meta=_derive(meta), vectors=vectors)


def weather_labels(descriptions: Iterable[str | None]) -> list[str]:
    """Night / rain from the words of nuScenes scene descriptions ("Night, after rain" is night + rain)."""
    out = []
    for d in descriptions:
        if d is None or (isinstance(d, float) and np.isnan(d)) or not str(d).strip():
            out.append("no description")
            continue
        t = str(d).lower()
        night = re.search(r"\bnight", t) is not None
        rain = re.search(r"\brain", t) is not None
        out.append("night + rain" if night and rain else "night" if night else "rain" if rain else "day, no rain")
    return out


# --------------------------------------------------------------------------------------------- projection


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
    from .project import UmapParams, compute_umap

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

    base = list(matplotlib.colormaps["tab10"].colors) if k <= 10 else list(matplotlib.colormaps["tab20"].colors)
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
    png = buf.getvalue()
    path = None
    if figures_dir:
        os.makedirs(figures_dir, exist_ok=True)
        path = os.path.join(figures_dir, f"{name}.png")
        with open(path, "wb") as f:
            f.write(png)
    try:
        from IPython.display import Image as IPImage, display

        display(IPImage(data=png, format="png"))
    except ImportError:  # pragma: no cover - outside IPython
        pass
    return path


# --------------------------------------------------------------------------------------------- search


def _searcher(run: Run) -> Any | None:
    """The run's Faiss index through ``job.search.Searcher`` (opened once per run), or None without one."""
    if "searcher" in run.__dict__:
        return run.__dict__["searcher"]
    s = None
    if fsutil.exists(run.layout.index_dir):
        try:
            from .search import Searcher

            s = Searcher.open(run.uri)
        except Exception as exc:  # noqa: BLE001 - exact search always works
            log.info("index search unavailable (%s); using exact search over the vectors", exc)
    run.__dict__["searcher"] = s
    return s


def exact_neighbours(
    vectors: np.ndarray, query: np.ndarray, k: int, chunk: int = 262_144
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and cosine scores of the ``k`` nearest unit vectors to ``query`` (one vector), best first."""
    q = np.asarray(query, np.float32).reshape(-1)
    q = q / (np.linalg.norm(q) or 1.0)
    k = min(k, len(vectors))
    best_rows, best_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for s in range(0, len(vectors), chunk):
        scores = vectors[s:s + chunk] @ q
        kk = min(k, len(scores))
        top = np.argpartition(-scores, kk - 1)[:kk]
        best_rows = np.concatenate([best_rows, top + s])
        best_scores = np.concatenate([best_scores, scores[top]])
    order = np.lexsort((best_rows, -best_scores))[:k]
    return best_rows[order], best_scores[order]


def neighbours(run: Run, query: np.ndarray, k: int, *, use_index: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """(rows, scores, how) of the k nearest images.

    Exact cosine over the vectors already in memory by default (a few ms at 200k rows, ~0.3 s at
    1.4M); ``use_index`` asks the run's Faiss index instead (``job.search``), falling back to exact.
    """
    s = _searcher(run) if use_index else None
    if s is not None:
        try:
            ids, scores = _ids_scores(s.by_vector(np.asarray(query, np.float32), k))
            rows = np.array([run.row(int(i)) for i in ids], np.int64)
            return rows, np.asarray(scores, np.float32), "faiss index"
        except Exception as exc:  # noqa: BLE001
            log.info("index search failed (%s); using exact search", exc)
    rows, scores = exact_neighbours(run.vectors, query, k)
    return rows, scores, "exact cosine"


def _ids_scores(hits: Sequence[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """Ids and scores of ``Searcher.by_vector`` hits (dicts with ``id`` and ``score``)."""
    return [int(h["id"]) for h in hits], [float(h["score"]) for h in hits]


def hits_table(run: Run, rows: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Hits as a small table: id, path, scene, channel, location, score."""
    cols = [c for c in ("id", "path", "scene_name", "channel", "location", "weather") if c in run.meta]
    out = run.meta.iloc[np.asarray(rows, np.int64)][cols].reset_index(drop=True)
    out.insert(len(cols), "score", np.round(np.asarray(scores, np.float32), 4))
    return out


def similar_images(run: Run, key: int | str | None, k: int = 8, *, use_index: bool = False) -> pd.DataFrame:
    """The image ``key`` (id, path or "#row") and its ``k`` nearest neighbours; the first row is itself."""
    r = run.row(key)
    rows, scores, how = neighbours(run, run.vectors[r], k + 1, use_index=use_index)
    table = hits_table(run, rows, scores)
    table.attrs.update(query_row=r, query_id=int(run.meta["id"].iat[r]), search=how)
    return table


def load_text_model(run: Run, device: str = "auto") -> Any:
    """The run's own model (same weights as its image vectors), on this machine's device, for text queries."""
    from .config import ModelConfig
    from .model import load_model

    mc = dict(run.manifest.get("config", {}).get("model", {}))
    known = {f for f in ModelConfig.__dataclass_fields__}
    mc = {k: v for k, v in mc.items() if k in known}
    mc.update(device=device, precision="auto", compile=False)
    lm = load_model(ModelConfig(**mc))
    want = run.manifest.get("model", {}).get("weights_sha256")
    if want and want != lm.weights_sha256:
        log.warning("the model loaded here has other weights than the run's (sha256 %s… vs %s…); text scores "
                    "will not match the image vectors", lm.weights_sha256[:12], want[:12])
    return lm


def text_search(
    run: Run, lm: Any, texts: Sequence[str], k: int = 8, *, use_index: bool = False
) -> dict[str, pd.DataFrame]:
    """Top-k images for each text query, scored by cosine with the CLIP text embedding."""
    from .model import encode_text

    qs = encode_text(lm, list(texts))
    out = {}
    for text, q in zip(texts, qs):
        rows, scores, how = neighbours(run, q, k, use_index=use_index)
        t = hits_table(run, rows, scores)
        t.attrs.update(search=how, query=text)
        out[text] = t
    return out


# --------------------------------------------------------------------------------------------- thumbnails


def _placeholder(text: str = "no image") -> Any:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (THUMB_WIDTH, THUMB_WIDTH * 9 // 16), (225, 225, 225))
    ImageDraw.Draw(im).text((8, 30), text, fill=(90, 90, 90))
    return im


def _source_image(run: Run, path: str) -> Any | None:
    """Read ``path`` from one of the run's sources (folders and s3:// prefixes; archives are skipped)."""
    from PIL import Image

    sources = run.manifest.get("config", {}).get("source", {}).get("sources", []) or []
    for root in sources:
        if re.search(r"\.(tgz|tar|tar\.gz|zip)$", str(root)) or "*" in str(root):
            continue
        url = fsutil.join(str(root), path)
        try:
            fs, p = fsutil.url_to_fs(url)
            if not fs.exists(p):
                continue
            with fs.open(p, "rb") as f:
                im = Image.open(io.BytesIO(f.read()))
                im.draft("RGB", (THUMB_WIDTH * 2, THUMB_WIDTH * 2))
                im = im.convert("RGB")
            im.thumbnail((THUMB_WIDTH * 2, THUMB_WIDTH * 2))
            return im
        except Exception as exc:  # noqa: BLE001 - a missing image becomes a placeholder
            log.debug("could not read %s: %s", url, exc)
    return None


def thumbnails(run: Run, ids: Sequence[int]) -> dict[int, Any]:
    """PIL images for ``ids``: from ``thumbnails.parquet`` when the run has it, else from the source images."""
    from PIL import Image

    ids = [int(i) for i in ids]
    out: dict[int, Any] = {}
    if fsutil.exists(run.layout.thumbnails):
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        fs, p = fsutil.url_to_fs(run.layout.thumbnails)
        t = ds.dataset(p, filesystem=fs, format="parquet").to_table(
            columns=["id", "jpeg"], filter=pc.field("id").isin(ids))
        for i, jpeg in zip(t.column("id").to_pylist(), t.column("jpeg").to_pylist()):
            if jpeg:
                out[int(i)] = Image.open(io.BytesIO(jpeg)).convert("RGB")
    for i in ids:
        if i not in out:
            im = _source_image(run, str(run.meta["path"].iat[run.row(i)]))
            out[i] = im if im is not None else _placeholder()
    return out


def _short(text: str, n: int = 26) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def gallery_figure(
    run: Run, hits: pd.DataFrame, title: str, *, query_first: bool = False, cols: int | None = None
) -> Any:
    """A grid of thumbnails with score, scene and channel under each; the query (if first) framed in red."""
    from matplotlib.figure import Figure

    n = len(hits)
    rows = max(1, -(-n // (cols or 6)))
    cols = max(1, min(cols or -(-n // rows), n))  # at most 6 a row, rows filled evenly
    images = thumbnails(run, hits["id"].tolist())
    fig = Figure(figsize=(3.1 * cols, 2.55 * rows + 0.5), dpi=100, layout="constrained")
    fig.suptitle(title, fontsize=12)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, rec in enumerate(hits.itertuples(index=False)):
        ax = axes.ravel()[j]
        ax.imshow(np.asarray(images[int(rec.id)]))
        is_query = query_first and j == 0
        head = "query" if is_query else f"#{j if query_first else j + 1}  score {rec.score:.3f}"
        lines = [head, _short(str(getattr(rec, "scene_name", ""))), _short(str(getattr(rec, "channel", "")))]
        ax.set_title("\n".join(lines), fontsize=9, color="#b00000" if is_query else "black")
        if is_query:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_edgecolor("#b00000")
                s.set_linewidth(3)
    return fig
