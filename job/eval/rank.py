"""Ranking and scoring: every query against every scored image by exact cosine (no index, so its recall is not in the
score), then MAP@100, R-Precision and P@5 per query and their values by chance (``metrics``).

A :class:`Queries` batch holds the query vectors, for each query the group whose images are relevant (a category, a
scene word, "stopped") and, for image queries, the scene whose images are left out of the ranking altogether (the
query's own scene: its frames would score trivially). Scores are computed a block of queries at a time: the peak is
one (block × images) float32 matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import MAP_K, P_K, ap_at_k, chance_ap_at_k, chance_precision, precision_at_k, r_precision

QUERY_BLOCK = 64  # queries scored at once: 64 x 205k float32 = 52 MB


@dataclass
class Queries:
    """A batch of queries of one task: names, vectors, the relevant group of each, the scene each leaves out."""

    task: str
    names: list[str]
    vectors: np.ndarray  # (q, d) float32, unit length
    groups: np.ndarray  # (q,) int: row of ``relevance`` whose images are relevant
    exclude_scene: np.ndarray | None = None  # (q,) int scene code left out of the ranking (-1: none)
    query_rows: np.ndarray | None = None  # (q,) row of the query image among the scored images (image queries)
    prompts: list[str] = field(default_factory=list)  # the text of text queries


@dataclass
class Ranked:
    """Per query: collection size, relevant count, and the three metrics with their chance values."""

    n: np.ndarray
    relevant: np.ndarray
    map_at_100: np.ndarray
    r_precision: np.ndarray
    p_at_5: np.ndarray
    chance_map_at_100: np.ndarray
    chance_r_precision: np.ndarray
    chance_p_at_5: np.ndarray


def score_queries(x: np.ndarray, q: Queries, relevance: np.ndarray, scenes: np.ndarray | None = None,
                  k: int = MAP_K) -> Ranked:
    """Rank the images ``x`` (n, d) for every query of ``q``; ``relevance`` (groups, n) bool says which images are
    relevant to each group, ``scenes`` (n,) the scene code of each image (needed for ``exclude_scene``)."""
    nq = len(q.names)
    n_eff = np.zeros(nq, np.int64)
    n_rel = np.zeros(nq, np.int64)
    top = np.zeros((nq, k), bool)
    hits_r = np.zeros(nq, np.int64)
    for s in range(0, nq, QUERY_BLOCK):
        block = slice(s, min(nq, s + QUERY_BLOCK))
        sims = np.asarray(q.vectors[block], np.float32) @ x.T
        for j, row in enumerate(range(block.start, block.stop)):
            scores = sims[j]
            rel = relevance[q.groups[row]]
            keep = None
            if q.exclude_scene is not None and q.exclude_scene[row] >= 0 and scenes is not None:
                keep = scenes != q.exclude_scene[row]
            if q.query_rows is not None and q.query_rows[row] >= 0:
                keep = np.ones(len(scores), bool) if keep is None else keep
                keep[q.query_rows[row]] = False
            if keep is not None:
                scores = np.where(keep, scores, -np.inf)
                rel = rel & keep
            n = len(scores) if keep is None else int(keep.sum())
            r = int(rel.sum())
            n_eff[row], n_rel[row] = n, r
            kk = min(k, n)
            if kk == 0 or r == 0:
                continue
            order = _top(scores, kk)
            top[row, :kk] = rel[order]
            hits_r[row] = int(top[row, :r].sum()) if r <= kk else int(rel[_top(scores, r, ordered=False)].sum())
    short = n_eff < k  # rankings shorter than k: P@5 over what there is (the devkit's min(k, len))
    p5 = precision_at_k(top, P_K)
    if short.any():
        p5 = np.where(short, top[:, :P_K].sum(axis=1) / np.maximum(1, np.minimum(P_K, n_eff)), p5)
    return Ranked(n=n_eff, relevant=n_rel, map_at_100=ap_at_k(top, n_rel, k), r_precision=r_precision(hits_r, n_rel),
                  p_at_5=p5, chance_map_at_100=chance_ap_at_k(n_eff, n_rel, k),
                  chance_r_precision=chance_precision(n_eff, n_rel), chance_p_at_5=chance_precision(n_eff, n_rel))


def _top(scores: np.ndarray, k: int, *, ordered: bool = True) -> np.ndarray:
    """Rows of the ``k`` highest scores (best first when ``ordered``)."""
    if k >= len(scores):
        idx = np.arange(len(scores))
    else:
        idx = np.argpartition(-scores, k - 1)[:k]
    if ordered:
        idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx
