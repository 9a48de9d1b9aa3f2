"""Per-image scores: ``uniqueness`` (how rare an image is) and the neighbour cosines beside it.

Uniqueness is FiftyOne Brain's weighted distance to the nearest neighbours, ``mean(w · d)`` over the neighbours
(numpy's mean: the sum divided by their number), divided by the largest value (higher = rarer, 1.0 for the rarest);
with as many images as weights or fewer every score is 1. Two ways (``--uniqueness``):

* ``kept`` (ours, the default): among the **kept images** only — each image's neighbours are mapped to the image kept
  for their duplicate group, its own copies dropped, so a copy no longer hides its original (an image with a
  re-encode would otherwise score as common as anything). Distances are Euclidean between unit vectors,
  ``sqrt(2 - 2·cos)``, to the ``len(weights)`` nearest kept images (``--uniqueness-weights``, default 0.6, 0.3,
  0.1). A kept image whose graph neighbours are all its own group is searched again, exactly and deeper (or with the
  deeper lists the duplicate step already searched). A duplicate scores what the image it repeats scores.
* ``fiftyone``: today's fiftyone-brain, on the same vectors (all images, duplicates included), as its code at
  commit ``FIFTYONE_COMMIT`` computes it (``fiftyone/brain/internal/core/uniqueness.py`` ``_compute_uniqueness``,
  ``sklearn.py`` ``NeighborsHelper``): the embeddings are **centred** (the mean subtracted); up to
  ``FIFTYONE_PRECOMPUTE`` samples the full matrix of cosine distances ``1 - cos`` of the centred vectors is used,
  above it Euclidean distances between the re-normalised centred vectors; ``K + 1`` neighbours are asked and
  ``dists[:, 1:]`` keeps neighbours 2 to ``K + 1`` (the query is already left out, so the nearest neighbour is
  skipped); weights 0.6, 0.3, 0.1, numpy's mean, divided by the maximum. Below the switch the exact centred
  neighbours are searched; above it the graph's k neighbours are re-ranked in the centred space (cosines to the
  centred vectors follow from the graph's cosines and each vector's product with the mean, so no centred copy of
  the vectors is made). ``tests/test_curate_scores.py`` checks both against a re-implementation of that code.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..config import UNIQUENESS_WEIGHTS
from ..index.exact import drop_self, exact_search
from .duplicates import Duplicates
from .knn import KnnGraph, nearest_unique

log = logging.getLogger(__name__)

FIFTYONE_COMMIT = "7238036bcb5fb83177baf5c1b6b0c52937f32e58"  # voxel51/fiftyone-brain, 2026-08-12 (PR #309)
FIFTYONE_PRECOMPUTE = 15_000  # sklearn.py _MAX_PRECOMPUTE_DISTS: above it, Euclidean on re-normalised vectors
RESEARCH_K = (64, 256, 1024)  # deeper exact searches of a kept image short of kept neighbours
RESEARCH_FLOPS = 2e12  # multiply-adds the deeper searches may spend (~1 min on 2 CPU cores)


def unit_distance(cosines: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine: ``sqrt(max(0, 2 - 2·cos))``."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.asarray(cosines, np.float64)))


def weighted_score(dists: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """``mean(w · d)`` per row divided by the largest (1.0 where all are 0), float32."""
    score = np.mean(np.asarray(dists, np.float64) * np.asarray(weights), axis=1)
    top = float(np.nanmax(score)) if len(score) else 0.0
    return (score / top if top > 0 else np.ones(len(score))).astype(np.float32)


# ----------------------------------------------------------------------------------------------- among the kept


def _to_kept(x: np.ndarray, queries: np.ndarray, nbr: np.ndarray, cos: np.ndarray,
             root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours mapped to their group's kept image, the query's own group dropped, cosines to the kept image."""
    ok = nbr >= 0
    r = np.where(ok, root[np.clip(nbr, 0, None)], -1)
    r[r == queries[:, None]] = -1
    c = np.where(r == nbr, cos, np.nan).astype(np.float32)
    moved = (r >= 0) & (r != nbr)
    if moved.any():
        q = np.broadcast_to(queries[:, None], r.shape)[moved]
        c[moved] = np.einsum("ij,ij->i", x[q], x[r[moved]])
    return nearest_unique(r, c)


def _width(nbr: np.ndarray, cos: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``w`` columns (padded with no-neighbour where there are fewer), as new arrays."""
    if nbr.shape[1] < w:
        pad = w - nbr.shape[1]
        nbr, cos = np.c_[nbr, np.full((len(nbr), pad), -1)], np.c_[cos, np.full((len(cos), pad), np.nan)]
    return nbr[:, :w].copy(), cos[:, :w].astype(np.float32)


def uniqueness_kept(graph: KnnGraph, x: np.ndarray, dups: Duplicates,
                    weights: tuple[float, ...] = UNIQUENESS_WEIGHTS, *,
                    extra: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
                    device: str = "auto") -> tuple[np.ndarray, dict[str, Any]]:
    """Uniqueness among the kept images (module docstring); ``dups`` with its roots resolved (``to_roots``),
    ``extra``: deeper neighbour lists already searched (the duplicate step's). Returns (scores, info)."""
    n, w = len(x), len(weights)
    keep, _ = dups.roots()
    root = np.arange(n, dtype=np.int64)
    root[dups.rows] = keep
    kept = np.nonzero(root == np.arange(n))[0]
    info: dict[str, Any] = {"method": "kept", "weights": list(weights), "kept": int(len(kept)), "researched": 0,
                            "short": 0}
    out = np.ones(n, np.float32)
    if len(kept) <= w:
        return out, info
    nbr, cos = _to_kept(x, kept, graph.rows[kept], graph.cosines[kept], root)
    if extra:
        at = {int(r): i for i, r in enumerate(kept)}
        for row, (e_nbr, e_cos) in extra.items():
            if row in at and (nbr[at[row], :w] < 0).any():
                i = at[row]
                er, ec = _to_kept(x, np.array([row]), e_nbr[None, :], e_cos[None, :], root)
                merged_r, merged_c = nearest_unique(np.c_[nbr[i:i + 1], er], np.c_[cos[i:i + 1], ec])
                nbr[i], cos[i] = merged_r[0, : nbr.shape[1]], merged_c[0, : nbr.shape[1]]
    nbr, cos = _width(nbr, cos, w)
    short = np.nonzero((nbr < 0).any(axis=1))[0]
    budget = RESEARCH_FLOPS
    for kk in RESEARCH_K:
        if not len(short):
            break
        kk = min(kk + 1, n)
        afford = int(budget // max(1, n * x.shape[1]))
        todo = short[:afford]
        if not len(todo):
            break
        budget -= len(todo) * n * x.shape[1]
        found, sims = exact_search(x[kept[todo]], x, kk, device=device)
        found, sims = drop_self(found, sims, kept[todo], kk - 1)
        nbr[todo], cos[todo] = _width(*_to_kept(x, kept[todo], found, sims, root), w)
        info["researched"] += int(len(todo))
        short = short[~(nbr[short] >= 0).all(axis=1)]
    d = unit_distance(cos)
    if len(short):  # still short: the deepest distance found stands for the missing ones (a lower bound)
        info["short"] = int(len(short))
        log.warning("uniqueness: %d kept images have fewer than %d kept neighbours within the deepest search; "
                    "their missing distances are taken as the farthest found", len(short), w)
        filled = np.where(np.isfinite(d), d, np.nan)
        far = np.nanmax(np.where(np.isfinite(filled), filled, -np.inf), axis=1)
        far = np.where(np.isfinite(far), far, np.sqrt(2.0))
        d = np.where(np.isfinite(d), d, far[:, None])
    out[kept] = weighted_score(d, weights)
    out[dups.rows] = out[keep]
    return out, info


# ----------------------------------------------------------------------------------------------- fiftyone-brain


def _mean_products(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(the mean vector, each vector's product with it, its squared norm), float64."""
    m = x.mean(axis=0, dtype=np.float64)
    p = np.empty(len(x), np.float64)
    for s in range(0, len(x), 65_536):
        p[s:s + 65_536] = x[s:s + 65_536].astype(np.float64) @ m
    return m, p, float(m @ m)


def uniqueness_fiftyone(x: np.ndarray, graph: KnnGraph | None = None,
                        weights: tuple[float, ...] = UNIQUENESS_WEIGHTS, *,
                        device: str = "auto") -> tuple[np.ndarray, dict[str, Any]]:
    """fiftyone-brain's uniqueness of the unit vectors ``x`` (module docstring); ``graph``: the k-NN graph whose
    neighbours are re-ranked in the centred space above ``FIFTYONE_PRECOMPUTE`` rows (k >= len(weights) + 1)."""
    n, w = len(x), len(weights)
    info: dict[str, Any] = {"method": "fiftyone", "weights": list(weights), "commit": FIFTYONE_COMMIT,
                            "centred": True}
    if n <= w:
        return np.ones(n, np.float32), info
    m, p, mm = _mean_products(x)
    norm = np.sqrt(np.maximum(1.0 - 2.0 * p + mm, 1e-24))
    if n <= FIFTYONE_PRECOMPUTE or graph is None:
        xc = ((x - m) / norm[:, None]).astype(np.float32)
        found, sims = exact_search(xc, xc, min(w + 2, n), device=device)
        found, cos_c = drop_self(found, sims, np.arange(n), w + 1)
        dists = np.maximum(0.0, 1.0 - cos_c.astype(np.float64)) if n <= FIFTYONE_PRECOMPUTE else \
            unit_distance(cos_c)
        info["neighbours"] = "exact, centred"
    else:
        if graph.k < w + 1:
            raise ValueError(f"fiftyone uniqueness needs a graph with k >= {w + 1} (got k = {graph.k})")
        r = graph.rows
        ok = r >= 0
        rc = np.clip(r, 0, None)
        cos_c = (graph.cosines.astype(np.float64) - p[:, None] - p[rc] + mm) / (norm[:, None] * norm[rc])
        cos_c = np.where(ok, cos_c, -np.inf)
        top = np.argsort(-cos_c, axis=1, kind="stable")[:, : w + 1]
        dists = unit_distance(np.take_along_axis(cos_c, top, axis=1))
        info["neighbours"] = f"the graph's {graph.k} re-ranked in the centred space"
    return weighted_score(dists[:, 1:], weights), info


# ----------------------------------------------------------------------------------------------- the table


def scores(graph: KnnGraph, uniqueness: np.ndarray) -> dict[str, np.ndarray]:
    """The ``scores.parquet`` columns: ``id``, ``uniqueness``, ``nn_cosine`` (to the nearest neighbour) and
    ``kth_cosine`` (to the k-th: how crowded the image's neighbourhood is; lower = sparser)."""
    last = graph.cosines[np.arange(len(graph.ids)), np.maximum(0, np.sum(graph.rows >= 0, axis=1) - 1)]
    return {"id": graph.ids, "uniqueness": uniqueness.astype(np.float32),
            "nn_cosine": graph.cosines[:, 0].astype(np.float32), "kth_cosine": last.astype(np.float32)}
