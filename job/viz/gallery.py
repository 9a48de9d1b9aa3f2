"""Nearest neighbours, text queries, thumbnails and galleries of a run (exact cosine, or its Faiss index)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import fsutil
from ..index.exact import exact_search
from ..search import Thumbnails, make_hits
from ..search import hits_table as hits_frame
from .run import Run

log = logging.getLogger(__name__)


def _searcher(run: Run) -> Any | None:
    """The run's Faiss index through ``job.search.Searcher`` (opened once per run), or None without one."""
    if "searcher" in run.__dict__:
        return run.__dict__["searcher"]
    s = None
    if fsutil.exists(run.layout.index_dir):
        try:
            from ..search import Searcher

            s = Searcher.open(run.uri)
        except Exception as exc:  # noqa: BLE001 - exact search always works
            log.info("index search unavailable (%s); using exact search over the vectors", exc)
    run.__dict__["searcher"] = s
    return s


def neighbours(run: Run, query: np.ndarray, k: int, *, use_index: bool = False,
               text: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """(rows, scores, how) of the k nearest images.

    Exact cosine over the vectors already in memory by default (a few ms at 200k rows, ~0.3 s at
    1.4M); ``use_index`` asks the run's Faiss index instead (``job.search``), falling back to exact.
    ``text``: the query is a text embedding, so it searches the text-query vectors (the CLS output,
    ``run.text_vectors``, when the run has them; ``job.search`` explains why).
    """
    s = _searcher(run) if use_index else None
    if s is not None:
        try:
            q = np.asarray(query, np.float32)
            ids, found = _ids_scores(s.by_vector(q, k, space=s.text_space()) if text else s.by_vector(q, k))
            rows = np.array([run.row(int(i)) for i in ids], np.int64)
            return rows, np.asarray(found, np.float32), "faiss index"
        except Exception as exc:  # noqa: BLE001
            log.info("index search failed (%s); using exact search", exc)
    vectors = run.text_vectors if text and run.text_vectors is not None else run.vectors
    q = np.asarray(query, np.float32).reshape(1, -1)
    rows, scores = exact_search(q / (np.linalg.norm(q) or 1.0), vectors, min(k, len(vectors)), device="cpu")
    return rows[0], scores[0], "exact cosine"


def _ids_scores(hits: Sequence[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """Ids and scores of ``Searcher.by_vector`` hits (dicts with ``id`` and ``score``)."""
    return [int(h["id"]) for h in hits], [float(h["score"]) for h in hits]


HIT_COLUMNS = ("id", "path", "scene_name", "channel", "location", "weather", "score")


def hits_table(run: Run, rows: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Hits as a small table (``job.search.hits``' hits): id, path, scene, channel, location, weather, score."""
    cols = [c for c in HIT_COLUMNS if c in run.meta]
    found = make_hits(np.asarray(scores, np.float32).tolist(),
                      run.meta.iloc[np.asarray(rows, np.int64)][cols].to_dict("records"))
    if not found:
        return pd.DataFrame(columns=[*cols, "score"])
    table = hits_frame(found, HIT_COLUMNS).to_pandas()
    table["score"] = table["score"].round(4)
    return table


def similar_images(run: Run, key: int | str | None, k: int = 8, *, use_index: bool = False) -> pd.DataFrame:
    """The image ``key`` (id, path or "#row") and its ``k`` nearest neighbours; the first row is itself."""
    r = run.row(key)
    rows, scores, how = neighbours(run, run.vectors[r], k + 1, use_index=use_index)
    table = hits_table(run, rows, scores)
    table.attrs.update(query_row=r, query_id=int(run.meta["id"].iat[r]), search=how)
    return table


def load_text_model(run: Run, device: str = "auto") -> Any:
    """The run's own model (same weights as its image vectors) on this machine, through ``model.load_run_model``."""
    from ..model.load import load_run_model

    return load_run_model(run.manifest, device=None if device == "auto" else device)


def text_search(
    run: Run, lm: Any, texts: Sequence[str], k: int = 8, *, use_index: bool = False
) -> dict[str, pd.DataFrame]:
    """Top-k images for each text query, scored by cosine between the text embedding and the trained outputs.

    Contrastive training aligned the text tower with the image tower's trained output (CLIP's CLS token, SigLIP's
    attention pool), so with ``--pool mean`` the run's ``embedding_trained`` column is searched, not the mean-pooled
    image vectors.
    """
    from ..model.load import encode_text

    qs = encode_text(lm, list(texts))
    out = {}
    for text, q in zip(texts, qs):
        rows, scores, how = neighbours(run, q, k, use_index=use_index, text=True)
        t = hits_table(run, rows, scores)
        t.attrs.update(search=how, query=text)
        out[text] = t
    return out


# --------------------------------------------------------------------------------------------- thumbnails


def thumbnails(run: Run, ids: Sequence[int]) -> dict[int, Any]:
    """PIL images for ``ids``: from ``thumbnails.parquet`` when the run has it, else from the source images (a
    placeholder for images inside archives): ``job.search.thumbs.Thumbnails``, the search page's reader too."""
    if "thumbs" not in run.__dict__:
        run.__dict__["thumbs"] = Thumbnails(run.layout, run.manifest)
    thumbs: Thumbnails = run.__dict__["thumbs"]
    return {int(i): thumbs.image(int(i), str(run.meta["path"].iat[run.row(int(i))])) for i in ids}


def _short(text: str, n: int = 26) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def gallery_figure(
    run: Run, hits: pd.DataFrame, title: str, *, query_first: bool = False, cols: int | None = None,
    score_label: str = "score",
) -> Any:
    """A grid of thumbnails with score (named ``score_label``), scene and channel under each; the query (if first)
    framed in red."""
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
        head = "query" if is_query else f"#{j if query_first else j + 1}  {score_label} {rec.score:.3f}"
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
