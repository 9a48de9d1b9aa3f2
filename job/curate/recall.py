"""How good an approximate k-NN graph is, measured against exact search on a sample of rows.

**Pair recall** (the gate): of the pairs at cosine >= the near threshold among each sampled row's exact k nearest
neighbours, the share the graph holds (in either direction: j among i's neighbours, or i among j's). It is what
duplicate finding needs; recall@k is not (a graph at recall@10 0.96 can hold almost none of the pairs of the rows it
lost). Pairs beyond a row's k-th neighbour are not asked of a k-graph: the duplicate step searches a kept image whose
k neighbours are all above the threshold again, deeper (``duplicates.near_duplicates``).

Pairs are rare (a few per cent of the rows have one), so the sample is **stratified**: ``uniform`` random rows,
plus ``extra`` rows drawn among those whose graph already has a neighbour at or above the threshold. Each sampled row
counts with the inverse of its chance to be drawn (Horvitz-Thompson), so the estimate is unbiased for the whole
run; the uniform rows alone give recall@k (information only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..index.exact import ExactSearcher, drop_self


@dataclass
class RecallSample:
    """Sampled rows, their exact k nearest neighbours (rows, cosines), and each row's weight (1 / its chance)."""

    rows: np.ndarray  # (m,) int64
    truth_rows: np.ndarray  # (m, k)
    truth_cos: np.ndarray  # (m, k)
    weights: np.ndarray  # (m,) float64
    uniform: np.ndarray  # (m,) bool: drawn uniformly (recall@k is measured on these)

    @classmethod
    def draw(cls, searcher: ExactSearcher, graph_cos: np.ndarray, threshold: float, k: int, *, uniform: int,
             extra: int, seed: int = 0) -> RecallSample:
        """``uniform`` random rows and up to ``extra`` more among the rows with a graph edge at or above
        ``threshold``; their exact neighbours from one search of ``searcher`` (over all the rows)."""
        x = searcher.x
        n = len(x)
        rng = np.random.default_rng(seed)
        u = np.sort(rng.choice(n, min(uniform, n), replace=False))
        strong = np.nonzero(np.nan_to_num(graph_cos[:, 0], nan=-1.0) >= threshold)[0]
        pool = np.setdiff1d(strong, u, assume_unique=True)
        a = np.sort(rng.choice(pool, min(extra, len(pool)), replace=False)) if len(pool) else np.zeros(0, np.int64)
        rows = np.concatenate([u, a]).astype(np.int64)
        p_u = len(u) / n
        p = np.full(len(rows), p_u)
        in_strong = np.isin(rows, strong)
        if len(pool):  # a strong row could be drawn either way
            p[in_strong] = p_u + (1 - p_u) * len(a) / len(pool)
        kk = min(k + 1, n)
        found, sims = searcher.search(x[rows], kk)
        truth_rows, truth_cos = drop_self(found, sims, rows, k)
        return cls(rows, truth_rows, truth_cos, 1.0 / p, np.r_[np.ones(len(u), bool), np.zeros(len(a), bool)])

    def pair_recall(self, graph_rows: np.ndarray, threshold: float) -> tuple[float, int]:
        """(pair recall, pairs in the sample) of a graph over all rows (``graph_rows`` (n, k)) at ``threshold``;
        1.0 when the sample holds no pair."""
        pairs = (self.truth_rows >= 0) & (np.nan_to_num(self.truth_cos, nan=-1.0) >= threshold)
        i = np.repeat(self.rows, pairs.shape[1]).reshape(pairs.shape)[pairs]
        j = self.truth_rows[pairs]
        held = (graph_rows[i] == j[:, None]).any(axis=1) | (graph_rows[j] == i[:, None]).any(axis=1)
        w = np.repeat(self.weights, pairs.shape[1]).reshape(pairs.shape)[pairs]
        total = float(w.sum())
        return (float((w * held).sum()) / total if total > 0 else 1.0), int(pairs.sum())

    def recall_at_k(self, graph_rows: np.ndarray) -> float:
        """k-recall@k of the graph on the uniformly drawn rows."""
        t = self.truth_rows[self.uniform]
        g = graph_rows[self.rows[self.uniform]]
        k = t.shape[1]
        if not len(t) or k == 0:
            return float("nan")
        hits = sum(len(set(a.tolist()) & set(b.tolist()) - {-1}) for a, b in zip(g, t, strict=True))
        return hits / (k * len(t))
