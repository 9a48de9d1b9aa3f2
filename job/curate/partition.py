"""A balanced partition of the vectors, and the k-NN graph searched through it (``--knn-method partition``).

The vectors are cut into lists of about ``list_size`` rows by recursive k-means: a set larger than ``MAX_GROWTH``
times the list size is split by k-means into at most ``BRANCH`` parts (trained on a sample, every row assigned to
its nearest centre), and each part again, until every list is small; the rows then move to their nearest list
(``balanced_partition``). Dense regions get more lists, so no list is much larger than the rest — unlike an IVF index trained for search (the run's IVF4096 at 1.4M clustered vectors had
lists of mean 342 and largest 34,023, and a list costs its size times its candidates' size: docs/benchmarks.md).
A set that k-means cannot split (identical vectors) is cut in order.

The graph: each list's members are compared *exactly* (full vectors, one matrix product) with the members of the
``probe`` lists whose centres are nearest its own (itself first); one list at a time per core. Cosines are exact.
Cost: n · probe · list_size · d multiply-adds, plus n · BRANCH · d per level of the partition.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..index._faiss import load_faiss
from ..index.exact import drop_self, single_threaded_blas

log = logging.getLogger(__name__)

BRANCH = 64  # parts per k-means split (each row meets BRANCH centres per level)
MAX_GROWTH = 2.0  # a set up to this many times the list size is one list
TRAIN_PER_CENTRE = 64  # k-means training sample per centre
KMEANS_ITER = 12
ASSIGN_BATCH = 65_536
PROBE_POOL = 32  # a row chooses the lists it searches among this many lists nearest its own
REFINE_POOL = 32  # after the split, a row moves to the nearest centre among this many lists nearest its own
REFINE_ROUNDS = 1  # more rounds gained little at 1.4M (recall@10 0.60 -> 0.66 at 4); independent partitions gain more
REFINE_SETTLED = 0.002  # the descent stops when fewer rows than this share move
MAX_LIST = 4.0  # a list the descent made larger than this many times the list size is split again


@dataclass
class Partition:
    """Lists of rows (``order[offsets[l]:offsets[l + 1]]``), each list's centre, and for each list the lists whose
    centres are nearest (itself first)."""

    order: np.ndarray  # (n,) int64 rows, list by list
    offsets: np.ndarray  # (nlist + 1,) int64
    centres: np.ndarray  # (nlist, d) float32
    near: np.ndarray  # (nlist, max_probe) int64

    @property
    def nlist(self) -> int:
        return int(len(self.offsets) - 1)

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def members(self, lst: int) -> np.ndarray:
        return self.order[self.offsets[lst]:self.offsets[lst + 1]]

    def candidates(self, lst: int, probe: int) -> np.ndarray:
        return np.concatenate([self.members(int(m)) for m in self.near[lst, :probe]])

    def list_of_rows(self) -> np.ndarray:
        out = np.empty(len(self.order), np.int64)
        out[self.order] = np.repeat(np.arange(self.nlist), self.sizes())
        return out


def _assign(x: np.ndarray, rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Nearest centre (L2) of each of ``rows``, in batches."""
    faiss = load_faiss()
    out = np.empty(len(rows), np.int64)
    for s in range(0, len(rows), ASSIGN_BATCH):
        part = np.ascontiguousarray(x[rows[s:s + ASSIGN_BATCH]])
        out[s:s + len(part)] = faiss.knn(part, centres, 1)[1][:, 0]
    return out


def _split(x: np.ndarray, rows: np.ndarray, list_size: int, rng: np.random.Generator, out: list[np.ndarray]) -> None:
    """Append to ``out`` the lists of ``rows`` (recursive k-means until each holds at most MAX_GROWTH · list_size)."""
    faiss = load_faiss()
    stack = [rows]
    while stack:
        rows = stack.pop()
        if len(rows) <= MAX_GROWTH * list_size:
            out.append(rows)
            continue
        parts = min(BRANCH, math.ceil(len(rows) / list_size))
        train = rows if len(rows) <= parts * TRAIN_PER_CENTRE else \
            rng.choice(rows, parts * TRAIN_PER_CENTRE, replace=False)
        km = faiss.Kmeans(x.shape[1], parts, niter=KMEANS_ITER, seed=int(rng.integers(1 << 30)),
                          min_points_per_centroid=1, max_points_per_centroid=TRAIN_PER_CENTRE)
        km.train(np.ascontiguousarray(x[np.sort(train)]))
        labels = _assign(x, rows, km.centroids)
        counts = np.bincount(labels, minlength=parts)
        if counts.max() == len(rows):  # k-means could not split it (identical vectors): cut it in order
            out.extend(np.array_split(rows, math.ceil(len(rows) / list_size)))
            continue
        order = np.argsort(labels, kind="stable")
        stack.extend(p for p in np.split(rows[order], np.cumsum(counts)[:-1]) if len(p))


def _near_lists(centres: np.ndarray, max_probe: int) -> np.ndarray:
    """(nlist, max_probe): each list's lists by centre distance, itself first."""
    faiss = load_faiss()
    nlist = len(centres)
    probe = min(max_probe, nlist)
    _, near = faiss.knn(centres, centres, probe)
    near = np.where(near == np.arange(nlist)[:, None], -2, near)  # itself first, whatever the ties
    near = np.concatenate([np.arange(nlist)[:, None], near], axis=1)
    return np.array([r[r != -2][:probe] for r in near], np.int64)


def _nearest_among(x: np.ndarray, rows: np.ndarray, centres: np.ndarray, pools: np.ndarray,
                   home: np.ndarray, count: int) -> np.ndarray:
    """(len(rows), count): each row's ``count`` nearest centres among the pool of its home list (one small matrix
    product per list, on one BLAS thread: thousands of tiny products lose most of their time to threads otherwise)."""
    out = np.full((len(rows), count), -1, np.int64)
    by_home = np.argsort(home[rows], kind="stable")
    bounds = np.searchsorted(home[rows][by_home], np.arange(len(pools) + 1))
    half_norms = 0.5 * np.einsum("ij,ij->i", centres, centres)
    with single_threaded_blas():
        for lst in np.nonzero(np.diff(bounds))[0]:
            at = by_home[bounds[lst]:bounds[lst + 1]]
            pool = pools[lst]
            pool = pool[pool >= 0]
            score = x[rows[at]] @ centres[pool].T - half_norms[pool]  # larger = nearer (L2)
            take = min(count, len(pool))
            pick = np.argsort(-score, axis=1, kind="stable")[:, :take]
            out[at, :take] = pool[pick]
    return out


def _lay_out(x: np.ndarray, home: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, offsets, centres) of the lists given each row's list."""
    order = np.argsort(home, kind="stable").astype(np.int64)
    sizes = np.bincount(home, minlength=nlist)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    centres = np.zeros((nlist, x.shape[1]), np.float32)
    for lst in np.nonzero(sizes)[0]:
        centres[lst] = x[order[offsets[lst]:offsets[lst + 1]]].mean(axis=0)
    return order, offsets, centres


def _compact(home: np.ndarray, nlist: int) -> tuple[np.ndarray, int]:
    """Lists renumbered without the empty ones."""
    used = np.bincount(home, minlength=nlist) > 0
    if used.all():
        return home, nlist
    return (np.cumsum(used) - 1)[home], int(used.sum())


def balanced_partition(x: np.ndarray, list_size: int, *, max_probe: int = 64, seed: int = 0) -> Partition:
    """Lists of about ``list_size`` rows of ``x`` (module docstring) and each list's nearest lists.

    The recursive split assigns a row within its branch only, and a row near a branch's edge can be nearer another
    branch's list (at 1.4M clustered vectors one row in ten was not in the list of its nearest centre). So the rows
    then move to the nearest centre among the ``REFINE_POOL`` lists nearest their own, the centres are recomputed and
    this is repeated (a descent over the lists' neighbour graph, up to ``REFINE_ROUNDS`` times, until fewer than
    ``REFINE_SETTLED`` of the rows move); a list that grew past ``MAX_LIST`` times the list size is split again."""
    lists: list[np.ndarray] = []
    rng = np.random.default_rng(seed)
    with single_threaded_blas():
        _split(x, np.arange(len(x), dtype=np.int64), max(1, list_size), rng, lists)
    nlist = len(lists)
    home = np.empty(len(x), np.int64)
    for lst, m in enumerate(lists):
        home[m] = lst
    rows = np.arange(len(x), dtype=np.int64)
    moved = []
    for _ in range(REFINE_ROUNDS):
        home, nlist = _compact(home, nlist)
        _, _, centres = _lay_out(x, home, nlist)
        near = _near_lists(centres, REFINE_POOL)
        new = _nearest_among(x, rows, centres, near, home, 1)[:, 0]
        moved.append(int(np.sum(new != home)))
        home = new
        if moved[-1] < REFINE_SETTLED * len(x):
            break
    home, nlist = _compact(home, nlist)
    sizes = np.bincount(home, minlength=nlist)
    big = np.nonzero(sizes > MAX_LIST * list_size)[0]
    if len(big):  # lists the descent made too large: split again
        parts: list[np.ndarray] = []
        with single_threaded_blas():
            for b in big:
                _split(x, np.nonzero(home == b)[0], list_size, rng, parts)
        for i, m in enumerate(parts):
            home[m] = nlist + i
        home, nlist = _compact(home, nlist + len(parts))
    order, offsets, centres = _lay_out(x, home, nlist)
    sizes = np.diff(offsets)
    log.info("partition: %d lists of %d rows on average (largest %d, smallest %d); rows moved to a nearer list: %s",
             nlist, int(sizes.mean()), int(sizes.max()), int(sizes.min()), moved)
    return Partition(order, offsets, centres, _near_lists(centres, max(max_probe, REFINE_POOL)))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not enabled, leave=False)


def probe_lists(part: Partition, x: np.ndarray, probe: int, rows: np.ndarray | None = None) -> np.ndarray:
    """(len(rows), probe): each row's own list, then its ``probe - 1`` nearest other lists by the distance from the
    row to their centres, among the ``PROBE_POOL`` lists nearest its own (-1 where there are fewer lists). Its own
    list comes first whatever the distances: it holds the row's closest copies, and two rows of one list must meet
    there even when both are nearer another list's centre. The pool does not depend on ``probe``, so the lists for
    a smaller probe are the first columns of a larger one's (a deeper search only adds lists)."""
    rows = np.arange(len(x)) if rows is None else rows
    home = part.list_of_rows()
    pool = min(part.near.shape[1], max(probe, PROBE_POOL))
    out = np.full((len(rows), probe), -1, np.int64)
    out[:, 0] = home[rows]
    if probe > 1 and pool > 1:
        out[:, 1:] = _nearest_among(x, rows, part.centres, part.near[:, 1:pool], home, probe - 1)
    return out


def _merge(rows: np.ndarray, cos: np.ndarray, r: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of two candidate sets per row (higher cosine first; -1 / NaN entries last)."""
    all_r = np.concatenate([rows, r], axis=1)
    all_c = np.concatenate([cos, c], axis=1)
    key = np.where(all_r >= 0, all_c, -np.inf)
    top = np.argsort(-key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_r, top, axis=1), np.take_along_axis(all_c, top, axis=1)


def partition_knn(part: Partition, x: np.ndarray, k: int, probe: int, *, only: np.ndarray | None = None,
                  start: int = 0, done: tuple[np.ndarray, np.ndarray] | None = None,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """k-NN (rows, cosines; self removed) by exact comparison of each row with the members of its ``probe`` nearest
    lists (``probe_lists``). The search runs list by list (each row meets a list's members in one matrix product
    with the other rows that chose that list), one thread per core, each running single-threaded Faiss/BLAS (small
    matrix products lose most of their speed to oversubscribed threads otherwise). ``only``: just these rows (the
    result then has one line per row of ``only``). ``start``/``done``: the result of a search with ``probe = start``
    to deepen (only the lists it did not search are searched)."""
    faiss = load_faiss()
    queries = np.arange(len(x)) if only is None else np.asarray(only, np.int64)
    chosen = probe_lists(part, x, probe, queries)
    if done is not None and start > 0:
        out_rows, out_cos = done
    else:
        start = 0
        out_rows = np.full((len(queries), k), -1, np.int64)
        out_cos = np.full((len(queries), k), np.nan, np.float32)
    threads = max(1, int(faiss.omp_get_max_threads()))
    faiss.omp_set_num_threads(1)
    try:
        with single_threaded_blas(), ThreadPoolExecutor(threads) as pool, \
                _progress(len(queries) * (probe - start), f"k-NN graph (partition, {probe} lists a row)",
                          progress) as bar:
            for j in range(start, probe):
                r_rows = np.full((len(queries), k), -1, np.int64)
                r_cos = np.full((len(queries), k), np.nan, np.float32)
                by_list = np.argsort(chosen[:, j], kind="stable")  # -1 (no such list) first
                bounds = np.searchsorted(chosen[:, j][by_list], np.arange(-1, part.nlist + 1))

                def one(lst: int, by_list: np.ndarray = by_list, bounds: np.ndarray = bounds,
                        r_rows: np.ndarray = r_rows, r_cos: np.ndarray = r_cos) -> int:
                    at = by_list[bounds[lst + 1]:bounds[lst + 2]]
                    if not len(at):
                        return 0
                    cand = part.members(lst)
                    q = queries[at]
                    sims, idx = faiss.knn(np.ascontiguousarray(x[q]), np.ascontiguousarray(x[cand]),
                                          min(k + 1, len(cand)), metric=faiss.METRIC_INNER_PRODUCT)
                    r, c = drop_self(np.where(idx >= 0, cand[np.clip(idx, 0, None)], -1), sims, q, k)
                    r_rows[at, : r.shape[1]], r_cos[at, : r.shape[1]] = r, c
                    return len(at)

                for n_done in pool.map(one, range(part.nlist)):
                    bar.update(n_done)
                out_rows, out_cos = (r_rows, r_cos) if j == 0 else _merge(out_rows, out_cos, r_rows, r_cos, k)
    finally:
        faiss.omp_set_num_threads(threads)
    return out_rows, out_cos
