"""The k-nearest-neighbour graph every curation step reads: exact when affordable, else from the run's index.

Vectors are unit length, so inner product is cosine. Three ways to build the graph, all batched with bounded memory:

* ``exact``: Faiss flat inner-product search of every vector against all (on CUDA through torch when present).
  Affordable when a pilot batch, timed on this machine, extrapolates to at most ``budget_s`` for the whole set.
* ``ivf-lists``: the run's IVF index (IVF-PQ or IVF-Flat) gives the partition: every vector is compared *exactly*
  with the members of its own inverted list and of the ``probe_lists - 1`` lists whose centroids are nearest,
  one list at a time as a dense matrix product; the index's compressed codes are never used.
* ``index``: any other index (HNSW, …) is searched with its own search parameters.

Approximate graphs carry their recall@k, measured against exact search on a random sample of rows (and the search
made deeper until ``target_recall`` is met on half the sample, the other half giving the recorded value).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import CURATE_K
from ..index._faiss import load_faiss
from ..index.exact import drop_self, exact_search, single_threaded_blas
from ..index.tune import walk_index

log = logging.getLogger(__name__)

EXACT_BUDGET_S = 120.0  # exact search when it is measured to take at most this long (see docs/benchmarks.md)
PILOT_FLOPS = 2e11  # the timed pilot batch: ~3 s of a 2-core CPU, a few ms of a GPU
QUERY_BATCH = 8192
RECALL_SAMPLE = 1000
PROBE_LISTS = (4, 8, 12, 16, 24, 32, 48, 64)  # ivf-lists: lists compared per vector, cheapest first


@dataclass
class KnnGraph:
    """Each row's k nearest other rows, nearest first (self removed). ``rows`` index the input arrays (-1 where a
    row has fewer than k neighbours); ``cosines`` are float32 (NaN there)."""

    ids: np.ndarray  # (n,) int64
    rows: np.ndarray  # (n, k) int64
    cosines: np.ndarray  # (n, k) float32
    method: str  # exact | ivf-lists | index
    recall: float  # k-recall@k against exact search (1.0 for exact)
    recall_queries: int  # rows the recall was measured on (0 for exact)
    device: str = "cpu"
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.rows.shape[1])

    def neighbour_ids(self) -> np.ndarray:
        """Neighbours as ids (-1 where none)."""
        return np.where(self.rows >= 0, self.ids[np.clip(self.rows, 0, None)], -1)

    def summary(self) -> dict[str, Any]:
        """What a manifest records: method, k, recall and how it was measured, timings."""
        return {"method": self.method, "k": self.k, "n": int(len(self.ids)), "recall": round(self.recall, 4),
                "recall_queries": self.recall_queries, "device": self.device, "params": dict(self.params),
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not enabled, leave=False)


def exact_knn(x: np.ndarray, k: int = CURATE_K, *, batch: int = QUERY_BATCH, progress: bool = False,
              device: str = "auto", start: int = 0, done: tuple[np.ndarray, np.ndarray] | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN graph of ``x`` (rows, cosines), self removed, queries in batches (memory: one batch's results).

    ``start``/``done``: rows ``[0, start)`` already computed (the timed pilot batch) and their results."""
    n = len(x)
    kk = min(k + 1, n)
    out_rows = np.full((n, k), -1, np.int64)
    out_cos = np.full((n, k), np.nan, np.float32)
    if done is not None:
        out_rows[:start], out_cos[:start] = done
    with _progress(n - start, "exact k-NN graph", progress) as bar:
        for s in range(start, n, batch):
            e = min(n, s + batch)
            rows, sims = exact_search(x[s:e], x, kk, device=device)
            r, c = drop_self(rows, sims, np.arange(s, e), k)
            out_rows[s:e, : r.shape[1]], out_cos[s:e, : r.shape[1]] = r, c
            bar.update(e - s)
    return out_rows, out_cos


# ----------------------------------------------------------------------------------------------- from an index


def _rows_of_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ids, kind="stable")
    return ids[order], order


def _ids_to_rows(labels: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    pos = np.clip(np.searchsorted(sorted_ids, labels), 0, len(sorted_ids) - 1)
    return np.where((labels >= 0) & (sorted_ids[pos] == labels), order[pos], -1)


def index_knn(index: Any, x: np.ndarray, ids: np.ndarray, k: int = CURATE_K, *, rows: np.ndarray | None = None,
              batch: int = QUERY_BATCH, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """k-NN of ``rows`` (default: all) by searching ``index`` (ids = ``ids``) for k+1, self removed."""
    rows = np.arange(len(x)) if rows is None else rows
    sorted_ids, order = _rows_of_ids(ids)
    out_rows = np.full((len(rows), k), -1, np.int64)
    out_cos = np.full((len(rows), k), np.nan, np.float32)
    with _progress(len(rows), "k-NN graph (index search)", progress) as bar:
        for s in range(0, len(rows), batch):
            q = rows[s:s + batch]
            sims, labels = index.search(np.ascontiguousarray(x[q]), k + 1)
            r, c = drop_self(_ids_to_rows(labels, sorted_ids, order), sims, q, k)
            out_rows[s:s + len(q)], out_cos[s:s + len(q)] = r, c
            bar.update(len(q))
    return out_rows, out_cos


def ivf_of(index: Any) -> Any:
    """The IndexIVF inside ``index`` (through IDMap / PreTransform / Refine), or None."""
    faiss = load_faiss()
    return next((ix for ix in walk_index(index) if isinstance(ix, faiss.IndexIVF)), None)


@dataclass
class IvfLists:
    """An IVF index's partition of the rows: members of each list, and each list's lists by centroid proximity."""

    members: list[np.ndarray]  # rows of each list
    near: np.ndarray  # (nlist, nlist) list numbers, nearest centroid first (itself first)

    @classmethod
    def of(cls, index: Any, ids: np.ndarray, max_probe: int) -> IvfLists:
        """The partition of ``index`` (an IVF index, possibly behind IDMap / PreTransform / Refine)."""
        faiss = load_faiss()
        ivf = ivf_of(index)
        # Behind an IDMap the lists hold the IDMap's internal numbers; the IDMap's id_map turns them into ids.
        idmap = next((ix for ix in walk_index(index) if isinstance(ix, (faiss.IndexIDMap, faiss.IndexIDMap2))), None)
        id_map = faiss.vector_to_array(idmap.id_map) if idmap is not None else None
        sorted_ids, order = _rows_of_ids(ids)
        inv = ivf.invlists
        members = []
        for lst in range(ivf.nlist):
            size = inv.list_size(lst)
            ptr = inv.get_ids(lst)
            lids = faiss.rev_swig_ptr(ptr, size).copy() if size else np.zeros(0, np.int64)
            inv.release_ids(lst, ptr)
            if id_map is not None:
                lids = id_map[lids]
            r = _ids_to_rows(lids, sorted_ids, order)
            members.append(r[r >= 0])
        centroids = faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist)
        # lists by L2 distance between centroids: a query near its own centroid has its neighbours in these
        _, near = faiss.knn(centroids, centroids, min(max_probe, ivf.nlist))
        near = np.where(near == np.arange(ivf.nlist)[:, None], -2, near)  # itself first, whatever the ties
        near = np.concatenate([np.arange(ivf.nlist)[:, None], near], axis=1)
        near = np.array([r[r != -2][: min(max_probe, ivf.nlist)] for r in near])
        return cls(members, near)

    def candidates(self, lst: int, probe: int) -> np.ndarray:
        return np.concatenate([self.members[m] for m in self.near[lst, :probe]])

    def list_of_rows(self, n: int) -> np.ndarray:
        out = np.full(n, -1, np.int64)
        for lst, m in enumerate(self.members):
            out[m] = lst
        return out


def ivf_lists_knn(parts: IvfLists, x: np.ndarray, k: int, probe: int, *, only: np.ndarray | None = None,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """k-NN by exact comparison of each list's members with the members of its ``probe`` nearest lists.

    Lists are processed by one thread per core, each running single-threaded Faiss/BLAS on its own list (small
    matrix products lose most of their speed to thread oversubscription otherwise). ``only``: compute just these
    rows (for measuring recall); the result then has one line per row of ``only``."""
    faiss = load_faiss()
    n = len(x)
    out_n = n if only is None else len(only)
    out_rows = np.full((out_n, k), -1, np.int64)
    out_cos = np.full((out_n, k), np.nan, np.float32)
    if only is None:
        jobs = [(lst, mem, mem) for lst, mem in enumerate(parts.members) if len(mem)]
    else:
        where = parts.list_of_rows(n)[only]
        jobs = [(lst, only[where == lst], np.nonzero(where == lst)[0]) for lst in np.unique(where[where >= 0])]

    def one(job: tuple[int, np.ndarray, np.ndarray]) -> int:
        lst, q, dest = job
        cand = parts.candidates(int(lst), probe)
        sims, idx = faiss.knn(np.ascontiguousarray(x[q]), np.ascontiguousarray(x[cand]), min(k + 1, len(cand)),
                              metric=faiss.METRIC_INNER_PRODUCT)
        r, c = drop_self(np.where(idx >= 0, cand[np.clip(idx, 0, None)], -1), sims, q, k)
        out_rows[dest, : r.shape[1]], out_cos[dest, : r.shape[1]] = r, c
        return len(q)

    threads = max(1, int(faiss.omp_get_max_threads()))
    faiss.omp_set_num_threads(1)
    try:
        with single_threaded_blas(), ThreadPoolExecutor(threads) as pool, \
                _progress(sum(len(j[1]) for j in jobs), f"k-NN graph (ivf-lists, {probe} lists)", progress) as bar:
            for done in pool.map(one, jobs):
                bar.update(done)
    finally:
        faiss.omp_set_num_threads(threads)
    return out_rows, out_cos
