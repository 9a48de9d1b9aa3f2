"""Retrieval metrics with SearchAD's semantics (devkit ``iis-esslingen/searchad_devkit``, ``searchad/utils/metrics.py``
at commit 512fcf323621e5e57aef13add07981fa1216c4e7), on boolean relevance of a ranking, and their values by chance.

A ranking is given by the relevance of its top ``k`` (``top``: (q, k) bool, best first) and the number of relevant
items in the whole collection (``n_relevant``: (q,)), so nothing needs the full sorted list:

* ``MAP@100`` (:func:`ap_at_k`): the sum of precision@i over the relevant ranks i ≤ 100, divided by
  ``min(R, 100)``. For R ≤ 100 this is exactly the devkit's ``mean_average_precision(target, top_k=100)`` (which
  divides by R); for R > 100 the devkit's value cannot exceed 100/R even for a perfect ranking, so we divide by the
  most that 100 ranks can hold and a perfect ranking scores 1 (``tests/test_eval_metrics.py`` checks both cases
  against the devkit's code).
* ``R-Precision`` (:func:`r_precision`): the share of relevant items among the first R (the devkit's
  ``mean_rprecision``); it needs the count of relevant items in the top R, which the caller computes.
* ``P@5`` (:func:`precision_at_k`): the devkit's ``precision_at_k(target, 5)``.
* full-list AP (:func:`average_precision`): the devkit's ``mean_average_precision(target, len(target))``, which is
  what SearchAD's ``evaluate.py`` reports as MAP; equal to scikit-learn's ``average_precision_score`` on a ranking.

A query with no relevant item scores 0 (the devkit's convention); callers do not ask such queries.
"""
from __future__ import annotations

import numpy as np

MAP_K = 100
P_K = 5


def ap_at_k(top: np.ndarray, n_relevant: np.ndarray, k: int = MAP_K) -> np.ndarray:
    """AP of the top ``k`` per query, normalised by ``min(R, k)`` (see the module docstring)."""
    top = np.asarray(top, bool)[:, :k]
    hits = np.cumsum(top, axis=1)
    ranks = np.arange(1, top.shape[1] + 1)
    summed = np.where(top, hits / ranks, 0.0).sum(axis=1)
    denom = np.minimum(np.asarray(n_relevant, np.float64), k)
    return np.where(denom > 0, summed / np.maximum(denom, 1), 0.0)


def precision_at_k(top: np.ndarray, k: int = P_K) -> np.ndarray:
    """Share of relevant items among the first ``k`` (fewer when the ranking is shorter, as in the devkit)."""
    top = np.asarray(top, bool)[:, :k]
    return top.sum(axis=1) / max(1, top.shape[1]) if top.size else np.zeros(len(top))


def r_precision(hits_in_top_r: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Relevant items among the first R, over R."""
    r = np.asarray(n_relevant, np.float64)
    return np.where(r > 0, np.asarray(hits_in_top_r, np.float64) / np.maximum(r, 1), 0.0)


def average_precision(ranked_relevance: np.ndarray) -> float:
    """AP over a whole ranked list (relevance, best first): SearchAD's reported MAP for one label."""
    rel = np.asarray(ranked_relevance, bool)
    n = int(rel.sum())
    if n == 0:
        return 0.0
    hits = np.cumsum(rel)
    return float((hits[rel] / (np.flatnonzero(rel) + 1)).sum() / n)


# ------------------------------------------------------------------------------------------------ chance


def _harmonic(k: np.ndarray) -> np.ndarray:
    out = np.zeros(len(k))
    kmax = int(k.max()) if len(k) else 0
    if kmax:
        table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, kmax + 1))])
        out = table[k]
    return out


def chance_ap_at_k(n: np.ndarray, n_relevant: np.ndarray, k: int = MAP_K) -> np.ndarray:
    """Expected :func:`ap_at_k` of a uniformly random ranking of ``n`` items of which ``R`` are relevant (exact).

    E[Σ_{i≤K} rel_i · P@i] = H_K·R/n + (K − H_K)·R(R−1)/(n(n−1)) with K = min(k, n), H_K the harmonic number;
    divided by min(R, k).
    """
    n = np.asarray(n, np.int64)
    r = np.asarray(n_relevant, np.float64)
    kk = np.minimum(k, n)
    h = _harmonic(kk)
    nf = n.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pair = np.where(n > 1, r * (r - 1) / (nf * (nf - 1)), 0.0)
        summed = h * r / nf + (kk - h) * pair
        return np.where(r > 0, summed / np.minimum(r, k), 0.0)


def chance_precision(n: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Expected P@k and R-Precision of a random ranking: the share of relevant items, R/n."""
    n = np.asarray(n, np.float64)
    return np.where(n > 0, np.asarray(n_relevant, np.float64) / np.maximum(n, 1), 0.0)
