"""The k-nearest-neighbour graph every curation step reads, and the two searches that build it without a partition.

Vectors are unit length, so inner product is cosine. Three ways to build the graph (``graph.knn_graph`` picks one):

* ``exact``: Faiss flat inner-product search of every vector against all (on the GPU when present and allowed: the
  base uploaded once, queries in tiles; :class:`job.index.exact.ExactSearcher`). Affordable when a pilot batch,
  timed on this machine, extrapolates to at most ``budget_s`` for the whole set.
* ``partition``: a balanced partition of the vectors, each row compared exactly with the members of its nearest
  lists (``partition``); the CPU's way at 205k-1.4M.
* ``index``: the run's own Faiss index searched with its search parameters (``index_knn``), the cosines re-scored
  exactly.

Approximate graphs carry their recall@k and their **pair recall**: the share of the pairs at or above the near
threshold that they hold (``recall``), measured against exact search on a sample of rows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import CURATE_K
from ..index.exact import GPU_QUERY_TILE, ExactSearcher, drop_self

log = logging.getLogger(__name__)

EXACT_BUDGET_S = 120.0  # exact search when it is measured to take at most this long (see docs/benchmarks.md)
PILOT_FLOPS = 2e11  # the timed pilot batch: ~3 s of a 2-core CPU, a few ms of a GPU
GPU_PILOT_ROWS = 4096  # at least this many pilot rows on the GPU: fewer time kernel launches, not the search
QUERY_BATCH = 8192
RESCORE_BATCH = 65_536


@dataclass
class KnnGraph:
    """Each row's k nearest other rows, nearest first (self removed). ``rows`` index the input arrays (-1 where a
    row has fewer than k neighbours); ``cosines`` are float32 (NaN there), exact whatever the method."""

    ids: np.ndarray  # (n,) int64
    rows: np.ndarray  # (n, k) int64
    cosines: np.ndarray  # (n, k) float32
    method: str  # exact | partition | index
    recall: float = 1.0  # recall@k against exact search (1.0 for exact)
    recall_queries: int = 0  # rows it was measured on (0 for exact)
    device: str = "cpu"
    pair_recall: float | None = None  # share of the pairs at cosine >= pair_threshold the graph holds
    pair_threshold: float | None = None
    pairs: int = 0  # pairs exact search found in the sample
    pair_rows: int = 0  # rows of the sample
    lists: int | None = None  # partition: lists, the largest
    largest_list: int | None = None
    partitions: int | None = None  # partition: independent partitions searched, their results merged
    probe: int | None = None  # partition: lists searched per row in each
    search_params: str | None = None  # index: the parameters it was searched with
    tuning: list[dict[str, Any]] = field(default_factory=list)  # efforts tried: probe/params, recall, pair_recall
    timings: dict[str, float] = field(default_factory=dict)
    truth_device: str | None = None  # where the exact search of the recall sample ran
    fallbacks: list[str] = field(default_factory=list)  # GPU steps that failed and ran on the CPU

    @property
    def k(self) -> int:
        return int(self.rows.shape[1])

    def neighbour_ids(self) -> np.ndarray:
        """Neighbours as ids (-1 where none)."""
        return np.where(self.rows >= 0, self.ids[np.clip(self.rows, 0, None)], -1)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not enabled, leave=False)


def exact_knn(x: np.ndarray, k: int = CURATE_K, *, batch: int = QUERY_BATCH, progress: bool = False,
              device: str = "auto", start: int = 0, done: tuple[np.ndarray, np.ndarray] | None = None,
              searcher: ExactSearcher | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN graph of ``x`` (rows, cosines), self removed, queries in batches (memory: one batch's results).

    ``start``/``done``: rows ``[0, start)`` already computed (the timed pilot batch) and their results;
    ``searcher``: an :class:`ExactSearcher` over ``x`` to reuse (else one of its own, placed by ``device``)."""
    if searcher is None:
        with ExactSearcher(x, device=device) as own:
            return exact_knn(x, k, batch=batch, progress=progress, start=start, done=done, searcher=own)
    if searcher.on_gpu:
        batch = max(batch, 4 * GPU_QUERY_TILE)  # several GPU tiles a call: re-scoring one overlaps the next search
    n = len(x)
    kk = min(k + 1, n)
    out_rows = np.full((n, k), -1, np.int64)
    out_cos = np.full((n, k), np.nan, np.float32)
    if done is not None:
        out_rows[:start], out_cos[:start] = done
    with _progress(n - start, "exact k-NN graph", progress) as bar:
        for s in range(start, n, batch):
            e = min(n, s + batch)
            rows, sims = searcher.search(x[s:e], kk)
            r, c = drop_self(rows, sims, np.arange(s, e), k)
            out_rows[s:e, : r.shape[1]], out_cos[s:e, : r.shape[1]] = r, c
            bar.update(e - s)
    return out_rows, out_cos


def nearest_unique(rows: np.ndarray, cos: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's candidates (rows, cosines; -1 = none) nearest first, a candidate found twice kept once, the first
    ``k`` columns (all without ``k``)."""
    order = np.argsort(-np.where(rows >= 0, cos, -np.inf), axis=1, kind="stable")
    r, c = np.take_along_axis(rows, order, axis=1), np.take_along_axis(cos, order, axis=1)
    for j in range(1, r.shape[1]):
        seen = (r[:, :j] == r[:, j:j + 1]).any(axis=1)
        r[seen, j] = -1
    order = np.argsort(r < 0, axis=1, kind="stable")[:, :k]
    r, c = np.take_along_axis(r, order, axis=1), np.take_along_axis(c, order, axis=1)
    c[r < 0] = np.nan
    return r, c


def exact_cosines(x: np.ndarray, queries: np.ndarray, nbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's neighbours ``nbr`` (rows, -1 for none) with their cosines computed from the vectors, nearest
    first: what a compressed index returns is re-scored exactly."""
    cos = np.full(nbr.shape, np.nan, np.float32)
    for s in range(0, len(nbr), RESCORE_BATCH):
        r = nbr[s:s + RESCORE_BATCH]
        ok = r >= 0
        q = np.repeat(queries[s:s + len(r)], r.shape[1]).reshape(r.shape)
        block = cos[s:s + len(r)]
        block[ok] = np.einsum("ij,ij->i", x[q[ok]], x[r[ok]])
    order = np.argsort(-np.where(nbr >= 0, cos, -np.inf), axis=1, kind="stable")
    return np.take_along_axis(nbr, order, axis=1), np.take_along_axis(cos, order, axis=1)


# ----------------------------------------------------------------------------------------------- from an index


def _rows_of_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ids, kind="stable")
    return ids[order], order


def _ids_to_rows(labels: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(sorted_ids, labels), 0, len(sorted_ids) - 1)
    return np.where((labels >= 0) & (sorted_ids[pos] == labels), order[pos], -1)


def index_knn(index: Any, x: np.ndarray, ids: np.ndarray, k: int = CURATE_K, *, rows: np.ndarray | None = None,
              fetch: int = 1, batch: int = QUERY_BATCH, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """k-NN of ``rows`` (default: all) by searching ``index`` (ids = ``ids``), self removed. ``fetch`` · k
    candidates are asked and re-scored exactly, the best k kept: a compressed index orders its candidates by
    approximate distances (and returns approximate cosines)."""
    rows = np.arange(len(x)) if rows is None else rows
    sorted_ids, order = _rows_of_ids(ids)
    kk = min(fetch * k, len(x) - 1)
    out_rows = np.full((len(rows), k), -1, np.int64)
    out_cos = np.full((len(rows), k), np.nan, np.float32)
    with _progress(len(rows), "k-NN graph (index search)", progress) as bar:
        for s in range(0, len(rows), batch):
            q = rows[s:s + batch]
            sims, labels = index.search(np.ascontiguousarray(x[q]), kk + 1)
            r, _ = drop_self(_ids_to_rows(labels, sorted_ids, order), sims, q, kk)
            r, c = exact_cosines(x, q, r)
            out_rows[s:s + len(q)], out_cos[s:s + len(q)] = r[:, :k], c[:, :k]
            bar.update(len(q))
    return out_rows, out_cos
