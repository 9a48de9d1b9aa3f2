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



def unit(x: np.ndarray) -> np.ndarray:
    """``x`` (one vector or rows of vectors) scaled to unit length, a zero vector left at zero: the queries' form."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

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
    relevant to each group, ``scenes`` (n,) the scene code of each image (needed for ``exclude_scene``).

    Per block of queries: one matrix product, the left-out rows (the query's scene, the query image) set to -inf,
    the top ``k`` by ``torch.topk`` over the block; R-Precision from the top ``k`` when R <= k, else from the R-th
    largest score (``np.partition``) and the scores of the group's relevant rows (measured: ``docs/benchmarks.md``).
    """
    import torch

    n = x.shape[0]
    nq = len(q.names)
    kk = min(k, n)
    members = _scene_rows(scenes) if q.exclude_scene is not None and scenes is not None else {}
    rel_rows = {int(g): np.flatnonzero(relevance[g]) for g in np.unique(q.groups)}
    n_eff = np.full(nq, n, np.int64)
    n_rel = np.array([len(rel_rows[int(g)]) for g in q.groups], np.int64)
    top = np.zeros((nq, k), bool)
    hits_r = np.zeros(nq, np.int64)
    for s in range(0, nq, QUERY_BLOCK):
        rows = range(s, min(nq, s + QUERY_BLOCK))
        sims = np.asarray(q.vectors[s:rows.stop], np.float32) @ x.T
        for j, row in enumerate(rows):
            left_out = _left_out(q, row, members)
            if len(left_out):
                sims[j, left_out] = -np.inf
                n_eff[row] -= len(left_out)
                n_rel[row] -= int(relevance[q.groups[row], left_out].sum())
        if kk:
            best = torch.topk(torch.from_numpy(sims), kk, dim=1).indices.numpy()
        for j, row in enumerate(rows):
            r, g = int(n_rel[row]), int(q.groups[row])
            if not kk or r == 0:
                continue
            shown = min(kk, int(n_eff[row]))
            top[row, :shown] = relevance[g, best[j, :shown]]
            if r <= shown:
                hits_r[row] = int(top[row, :r].sum())
            else:  # relevant rows at or above the R-th largest score of the ranking (left-out rows are -inf)
                threshold = np.partition(sims[j], n - r)[n - r]
                hits_r[row] = min(r, int(np.count_nonzero(sims[j, rel_rows[g]] >= threshold)))
    short = n_eff < k  # rankings shorter than k: P@5 over what there is (the devkit's min(k, len))
    p5 = precision_at_k(top, P_K)
    if short.any():
        p5 = np.where(short, top[:, :P_K].sum(axis=1) / np.maximum(1, np.minimum(P_K, n_eff)), p5)
    return Ranked(n=n_eff, relevant=n_rel, map_at_100=ap_at_k(top, n_rel, k), r_precision=r_precision(hits_r, n_rel),
                  p_at_5=p5, chance_map_at_100=chance_ap_at_k(n_eff, n_rel, k),
                  chance_r_precision=chance_precision(n_eff, n_rel), chance_p_at_5=chance_precision(n_eff, n_rel))


def _scene_rows(scenes: np.ndarray) -> dict[int, np.ndarray]:
    """The rows of each scene code."""
    order = np.argsort(scenes, kind="stable")
    codes, starts = np.unique(scenes[order], return_index=True)
    return {int(c): rows for c, rows in zip(codes, np.split(order, starts[1:]))}


def _left_out(q: Queries, row: int, members: dict[int, np.ndarray]) -> np.ndarray:
    """The rows query ``row`` leaves out of its ranking: its scene's, and its own image."""
    out = np.zeros(0, np.int64)
    if q.exclude_scene is not None and q.exclude_scene[row] >= 0:
        out = members.get(int(q.exclude_scene[row]), out)
    if q.query_rows is not None and q.query_rows[row] >= 0 and q.query_rows[row] not in out:
        out = np.append(out, q.query_rows[row])
    return out
