"""``knn_graph``: choose how to build the k-NN graph (exact when a timed pilot says it is affordable), build it, and
measure its recall against exact search on a sample."""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from ..config import CURATE_K, CURATE_METHODS
from ..errors import UsageError
from ..index import make_eval_set, recall_at, tune
from ..index.exact import cuda_torch, drop_self
from ..index.tune import EvalSet, current_search_params
from .knn import (
    EXACT_BUDGET_S,
    PILOT_FLOPS,
    PROBE_LISTS,
    RECALL_SAMPLE,
    IvfLists,
    KnnGraph,
    exact_knn,
    exact_search,
    index_knn,
    ivf_lists_knn,
    ivf_of,
)

log = logging.getLogger(__name__)


def _split_sample(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.random.default_rng(seed).permutation(n)[: min(size, n)]
    half = max(1, len(rows) // 2)
    return np.sort(rows[:half]), np.sort(rows[half:]) if len(rows) > 1 else np.sort(rows[:half])


def _recall(found_rows: np.ndarray, ids: np.ndarray, ev: EvalSet, k: int) -> float:
    found = np.where(found_rows >= 0, ids[np.clip(found_rows, 0, None)], -1)
    return float(recall_at(found, ev.truth, k))


def _pilot(x: np.ndarray, k: int, device: str) -> tuple[float, tuple[np.ndarray, np.ndarray], int]:
    """Time the exact search of a first batch (~``PILOT_FLOPS`` of work); returns (estimated seconds for all rows,
    the batch's graph rows, its size). The batch is not wasted: an exact graph starts after it."""
    n, d = x.shape
    size = int(min(n, max(64, PILOT_FLOPS // max(1, n * d))))
    t0 = time.perf_counter()
    rows, sims = exact_search(x[:size], x, min(k + 1, n), device=device)
    r, c = drop_self(rows, sims, np.arange(size), k)
    elapsed = time.perf_counter() - t0
    done = (np.full((size, k), -1, np.int64), np.full((size, k), np.nan, np.float32))
    done[0][:, : r.shape[1]], done[1][:, : r.shape[1]] = r, c
    return elapsed * n / size, done, size


def knn_graph(x: np.ndarray, ids: np.ndarray, k: int = CURATE_K, *, index: Any = None, method: str = "auto",
              budget_s: float = EXACT_BUDGET_S, target_recall: float = 0.95, recall_sample: int = RECALL_SAMPLE,
              seed: int = 0, progress: bool = True, device: str = "auto") -> KnnGraph:
    """The k-NN graph of unit vectors ``x`` (n, d) float32 with ids ``ids``.

    ``method='auto'``: exact when ``index`` is None or when a timed pilot batch extrapolates to at most
    ``budget_s`` seconds; otherwise from ``index`` (the run's Faiss index over the same ids, loaded by the caller):
    ``ivf-lists`` for an IVF index, ``index`` search for any other. ``target_recall``: approximate graphs search
    deeper until a half of the recall sample reaches it; the other half gives ``recall``.
    """
    if method not in CURATE_METHODS:
        raise UsageError(f"k-NN method {method!r} unknown; valid choices: {', '.join(CURATE_METHODS)}")
    n = len(x)
    if n < 2:
        raise UsageError(f"a k-NN graph needs at least 2 vectors, got {n}")
    if k < 1:
        raise UsageError(f"k = {k} is out of range; use 1 to {n - 1}")
    if len(ids) != n:
        raise UsageError(f"{len(ids)} ids for {n} vectors")
    k = min(k, n - 1)
    timings: dict[str, float] = {}
    dev = "cuda" if (device in ("auto", "cuda") and cuda_torch() is not None) else "cpu"
    if method in ("index", "ivf-lists") and index is None:
        raise UsageError(f"k-NN method {method!r} needs the run's index; build it with: python -m job index")
    if index is not None and int(index.ntotal) != n:
        raise UsageError(f"the index holds {index.ntotal} vectors but {n} were given; rebuild it with: "
                         "python -m job index")
    pilot = None
    if method == "auto":
        t0 = time.perf_counter()
        est, done, size = _pilot(x, k, device)
        timings["pilot_s"] = time.perf_counter() - t0
        pilot = (done, size)
        affordable = est <= budget_s
        log.info("k-NN graph: exact search of all %d vectors estimated at %.0f s on %s (budget %.0f s) -> %s",
                 n, est, dev, budget_s, "exact" if affordable or index is None else "index")
        method = "exact" if affordable or index is None else ("ivf-lists" if ivf_of(index) is not None else "index")
        timings["exact_estimate_s"] = est
    t0 = time.perf_counter()
    if method == "exact":
        start, done_rc = (pilot[1], pilot[0]) if pilot else (0, None)
        rows, cos = exact_knn(x, k, progress=progress, device=device, start=start, done=done_rc)
        timings["search_s"] = time.perf_counter() - t0
        return KnnGraph(ids, rows, cos, "exact", 1.0, 0, dev, {}, timings)
    tune_rows, test_rows = _split_sample(n, recall_sample, seed)
    ev_tune = make_eval_set(x, ids, tune_rows, k)
    ev_test = make_eval_set(x, ids, test_rows, k)
    timings["truth_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if method == "ivf-lists":
        ivf = ivf_of(index)
        if ivf is None:
            raise UsageError("k-NN method 'ivf-lists' needs an IVF index; this one is not (use 'index')")
        parts = IvfLists.of(index, ids, max(PROBE_LISTS))
        probe, trials = _tune_probe(parts, x, ids, k, ev_tune, tune_rows, target_recall)
        timings["tune_s"] = time.perf_counter() - t1
        recall = _recall(ivf_lists_knn(parts, x, k, probe, only=test_rows)[0], ids, ev_test, k)
        t2 = time.perf_counter()
        rows, cos = ivf_lists_knn(parts, x, k, probe, progress=progress)
        params: dict[str, Any] = {"probe_lists": probe, "nlist": int(ivf.nlist), "tuning": trials}
    else:
        before = current_search_params(index)
        chosen, trials, met = tune(index, ev_tune, target_recall) if before else ({}, [], True)
        timings["tune_s"] = time.perf_counter() - t1
        recall = _recall(index_knn(index, x, ids, k, rows=test_rows)[0], ids, ev_test, k)
        t2 = time.perf_counter()
        rows, cos = index_knn(index, x, ids, k, progress=progress)
        params = {"search_params": chosen, "index_search_params": before, "target_met": bool(met)}
    timings["search_s"] = time.perf_counter() - t2
    if recall < target_recall:
        log.warning("k-NN graph: recall@%d %.3f below the target %.3f (measured on %d rows)", k, recall,
                    target_recall, len(test_rows))
    log.info("k-NN graph: %s, recall@%d %.4f on %d held-out rows, %.1f s", method, k, recall, len(test_rows),
             timings["search_s"])
    return KnnGraph(ids, rows, cos, method, recall, int(len(test_rows)), "cpu", params, timings)


def _tune_probe(parts: IvfLists, x: np.ndarray, ids: np.ndarray, k: int, ev: EvalSet, rows: np.ndarray,
                target: float) -> tuple[int, list[dict[str, float]]]:
    """Fewest lists per vector reaching ``target`` recall on the tuning rows (the most tried otherwise)."""
    trials = []
    nlist = len(parts.members)
    for probe in sorted({min(p, nlist) for p in PROBE_LISTS}):
        r = _recall(ivf_lists_knn(parts, x, k, probe, only=rows)[0], ids, ev, k)
        trials.append({"probe_lists": probe, "recall": round(r, 4)})
        if r >= target or probe >= nlist:
            return probe, trials
    return trials[-1]["probe_lists"], trials  # type: ignore[return-value]


def graph_from_arrays(ids: np.ndarray, rows: np.ndarray, cosines: np.ndarray, method: str = "given",
                      recall: float = math.nan) -> KnnGraph:
    """A :class:`KnnGraph` from arrays already at hand (e.g. a run's ``curation/neighbours.parquet``)."""
    return KnnGraph(np.asarray(ids, np.int64), np.asarray(rows, np.int64), np.asarray(cosines, np.float32), method,
                    recall, 0)
