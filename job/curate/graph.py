"""``knn_graph``: choose how to build the k-NN graph (exact when a timed pilot says it is affordable), build it, and
for an approximate graph raise its search effort until it holds the pairs duplicate finding needs.

The gate is **pair recall** (``recall``): the share of the pairs at or above the near threshold that the graph holds,
on a stratified sample checked by exact search. The threshold is read off the graph itself (``gate``: the curation
step passes its own rule, byte-identical copies left out); after each search the threshold is read again, pair
recall measured, and the search deepened (``partition``: one more independent partition, its results merged — a pair
that one partition's boundary cut apart is found in another; ``index``: the next search parameter)
until pair recall reaches ``target_pair_recall`` or the deepest effort is spent (the shortfall is then recorded and
logged). recall@k is measured on the sample's uniform rows, as information.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import numpy as np

from ..config import CURATE_K, CURATE_METHODS, CURATE_PAIR_RECALL
from ..errors import UsageError
from ..index import make_eval_set, tune
from ..index.exact import ExactSearcher, drop_self
from ..index.tune import current_search_params, format_params, search_space, set_search_params
from .knn import EXACT_BUDGET_S, GPU_PILOT_ROWS, PILOT_FLOPS, KnnGraph, exact_knn, index_knn, nearest_unique
from .partition import balanced_partition, partition_knn
from .recall import RecallSample
from .threshold import auto_threshold

log = logging.getLogger(__name__)

LIST_SIZE = 512  # partition: rows per list (cost per row and list searched: LIST_SIZE · d multiply-adds)
PROBE = 2  # partition: lists a row searches in each partition (its own and the nearest other)
PROBE_POOL = 32  # partition: the lists a row's nearest are chosen among
MAX_PARTITIONS = 8  # partition: independent partitions (other seeds, other boundaries) at most, their results merged
RECALL_UNIFORM = 500  # rows drawn uniformly for the recall sample
RECALL_EXTRA = 500  # rows drawn among those with a graph edge at or above the threshold
INDEX_TUNE_RECALL = 0.95  # index: the recall@k the first search parameters are tuned to (on 500 rows)
INDEX_FETCH = (1, 2, 4, 8)  # index: candidates asked per neighbour kept, at the deepest search parameters

Gate = Callable[[np.ndarray, np.ndarray], float]  # (graph rows, cosines) -> the near threshold's cosine


def _default_gate(rows: np.ndarray, cos: np.ndarray) -> float:
    return auto_threshold(cos).cosine


def _pilot(searcher: ExactSearcher, k: int) -> tuple[float, tuple[np.ndarray, np.ndarray], int]:
    """Time the exact search of a first batch (~``PILOT_FLOPS`` of work, at least ``GPU_PILOT_ROWS`` on the GPU);
    returns (estimated seconds for all rows, the batch's graph rows, its size). Only the per-query time is scaled to
    all rows; the searcher's one-time setup (GPU upload, warm-up) is added once. The batch is not wasted: an exact
    graph starts after it."""
    x = searcher.x
    n, d = x.shape
    size = int(min(n, max(64, PILOT_FLOPS // max(1, n * d))))
    if searcher.on_gpu:
        size = min(n, max(size, GPU_PILOT_ROWS))
    t0 = time.perf_counter()
    rows, sims = searcher.search(x[:size], min(k + 1, n))
    r, c = drop_self(rows, sims, np.arange(size), k)
    elapsed = time.perf_counter() - t0
    done = (np.full((size, k), -1, np.int64), np.full((size, k), np.nan, np.float32))
    done[0][:, : r.shape[1]], done[1][:, : r.shape[1]] = r, c
    return searcher.setup_s + elapsed * n / size, done, size


def knn_graph(x: np.ndarray, ids: np.ndarray, k: int = CURATE_K, *, index: Any = None, method: str = "auto",
              gate: Gate | None = None, target_pair_recall: float = CURATE_PAIR_RECALL,
              budget_s: float = EXACT_BUDGET_S, list_size: int = LIST_SIZE, seed: int = 0, progress: bool = True,
              device: str = "auto") -> KnnGraph:
    """The k-NN graph of unit vectors ``x`` (n, d) float32 with ids ``ids``.

    ``method='auto'``: exact when a timed pilot batch extrapolates to at most ``budget_s`` seconds, else
    ``partition`` (the run's index is not needed). ``index``: the run's Faiss index over the same ids (for
    ``method='index'``). ``gate``: the near threshold read off a graph (default: ``threshold.auto_threshold``).
    ``device`` (auto | cpu | cuda) places the exact search (the pilot, an exact graph, the recall sample's truth):
    one :class:`~job.index.exact.ExactSearcher` for the whole graph, so the GPU upload is paid once."""
    if method not in CURATE_METHODS:
        raise UsageError(f"k-NN method {method!r} unknown; valid choices: {', '.join(CURATE_METHODS)}")
    n = len(x)
    if n < 2:
        raise UsageError(f"a k-NN graph needs at least 2 vectors, got {n}")
    if k < 1:
        raise UsageError(f"k = {k} is out of range; use 1 to {n - 1}")
    if len(ids) != n:
        raise UsageError(f"{len(ids)} ids for {n} vectors")
    if method == "index" and index is None:
        raise UsageError("k-NN method 'index' needs the run's index; build it with: python -m job index")
    if method == "index" and int(index.ntotal) != n:
        raise UsageError(f"the index holds {index.ntotal} vectors but {n} were given; rebuild it with: "
                         "python -m job index")
    k = min(k, n - 1)
    with ExactSearcher(x, device=device, step="exact") as searcher:
        graph = _graph(searcher, ids, k, index, method, gate or _default_gate, target_pair_recall, budget_s,
                       list_size, seed, progress)
    graph.fallbacks = list(searcher.placement.fallbacks)
    log.info("k-NN graph: %s, pair recall %.4f at cosine >= %.4f (%d pairs in %d sampled rows), recall@%d %.4f, "
             "%.1f s", graph.method, graph.pair_recall or math.nan, graph.pair_threshold or math.nan, graph.pairs,
             graph.pair_rows, k, graph.recall, graph.timings.get("graph_s", graph.timings.get("search_s", 0.0)))
    return graph


def _graph(searcher: ExactSearcher, ids: np.ndarray, k: int, index: Any, method: str, gate: Gate, target: float,
           budget_s: float, list_size: int, seed: int, progress: bool) -> KnnGraph:
    x, n = searcher.x, len(searcher.x)
    timings: dict[str, float] = {"exact_setup_s": searcher.setup_s}
    pilot = None
    if method == "auto":
        t0 = time.perf_counter()
        est, done, size = _pilot(searcher, k)
        timings["pilot_s"] = time.perf_counter() - t0
        pilot = (done, size)
        method = "exact" if est <= budget_s else "partition"
        log.info("k-NN graph: exact search of all %d vectors estimated at %.0f s on %s (budget %.0f s) -> %s",
                 n, est, searcher.device, budget_s, method)
        timings["exact_estimate_s"] = est
    t0 = time.perf_counter()
    if method == "exact":
        start, done_rc = (pilot[1], pilot[0]) if pilot else (0, None)
        rows, cos = exact_knn(x, k, progress=progress, start=start, done=done_rc, searcher=searcher)
        timings["search_s"] = time.perf_counter() - t0
        return KnnGraph(ids, rows, cos, "exact", 1.0, 0, searcher.device, pair_recall=1.0, timings=timings)
    graph = KnnGraph(ids, np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), method, device="cpu",
                     timings=timings)
    if method == "partition":
        parts: list[tuple[int, int]] = []

        def search(effort: int, prev: tuple[np.ndarray, np.ndarray] | None, last: int) -> tuple[np.ndarray, np.ndarray]:
            for p in range(last, effort):  # one more partition, its own seed: other boundaries
                t1 = time.perf_counter()
                part = balanced_partition(x, list_size, max_probe=PROBE_POOL, seed=seed + p)
                timings["partition_s"] = timings.get("partition_s", 0.0) + time.perf_counter() - t1
                parts.append((part.nlist, int(part.sizes().max())))
                found = partition_knn(part, x, k, min(PROBE, part.nlist), progress=progress)
                prev = found if prev is None else nearest_unique(np.c_[prev[0], found[0]], np.c_[prev[1], found[1]], k)
            graph.partitions, graph.probe = effort, PROBE
            graph.lists, graph.largest_list = parts[0][0], max(size for _, size in parts)
            assert prev is not None
            return prev

        _until_pairs_held(graph, searcher, k, list(range(1, MAX_PARTITIONS + 1)), search, gate, target, seed)
    else:
        _index_graph(graph, searcher, index, ids, k, gate, target, seed, progress)
    timings["graph_s"] = time.perf_counter() - t0
    return graph


def _until_pairs_held(graph: KnnGraph, searcher: ExactSearcher, k: int, efforts: list[Any],
                      search: Callable[[Any, tuple[np.ndarray, np.ndarray] | None, Any], tuple[np.ndarray, np.ndarray]],
                      gate: Gate, target: float, seed: int) -> None:
    """Search at each effort in turn (``search(effort, previous result, previous effort)``) until the graph's pair
    recall at its own threshold reaches ``target``; fills ``graph``."""
    prev: tuple[np.ndarray, np.ndarray] | None = None
    last: Any = 0
    sample: RecallSample | None = None
    for effort in efforts:
        t0 = time.perf_counter()
        prev = search(effort, prev, last)
        last = effort
        graph.timings["search_s"] = graph.timings.get("search_s", 0.0) + time.perf_counter() - t0
        rows, cos = prev
        t1 = time.perf_counter()
        threshold = gate(rows, cos)
        if sample is None:
            sample = RecallSample.draw(searcher, cos, threshold, k, uniform=RECALL_UNIFORM, extra=RECALL_EXTRA,
                                       seed=seed)
            graph.pair_rows, graph.truth_device = len(sample.rows), searcher.device
            searcher.close()  # the approximate search needs no exact search: free a GPU copy now
        pair_recall, pairs = sample.pair_recall(rows, threshold)
        graph.timings["recall_s"] = graph.timings.get("recall_s", 0.0) + time.perf_counter() - t1
        graph.tuning.append({"effort": effort, "pair_recall": round(pair_recall, 5), "pairs": pairs,
                             "threshold": round(threshold, 6)})
        graph.rows, graph.cosines = rows, cos
        graph.pair_recall, graph.pair_threshold, graph.pairs = pair_recall, threshold, pairs
        if pair_recall >= target:
            break
        log.info("k-NN graph: pair recall %.4f below %.2f at %s; searching deeper", pair_recall, target, effort)
    else:
        log.warning("k-NN graph: pair recall %.4f stays below the target %.2f at the deepest search (%s)",
                    graph.pair_recall or math.nan, target, last)
    assert sample is not None
    graph.recall = round(sample.recall_at_k(graph.rows), 4)
    graph.recall_queries = int(sample.uniform.sum())
    graph.tuning[-1]["recall"] = graph.recall


def _index_graph(graph: KnnGraph, searcher: ExactSearcher, index: Any, ids: np.ndarray, k: int, gate: Gate,
                 target: float, seed: int, progress: bool) -> None:
    """``method='index'``: the run's index, first tuned to recall@k ``INDEX_TUNE_RECALL`` on 500 rows, then its
    coverage parameter (efSearch / nprobe) raised step by step, then more candidates re-scored, until pair recall
    reaches ``target``."""
    x = searcher.x
    t0 = time.perf_counter()
    rows = np.sort(np.random.default_rng(seed + 1).choice(len(x), min(500, len(x)), replace=False))
    chosen: dict[str, int] = {}
    if current_search_params(index):
        chosen, _, _ = tune(index, make_eval_set(x, ids, rows, k, searcher=searcher), INDEX_TUNE_RECALL)
    graph.timings["tune_s"] = time.perf_counter() - t0
    space = [(name, values) for name, values in search_space(index) if name != "k_factor"]
    efforts: list[tuple[dict[str, int], int]] = [(dict(chosen), 1)]
    if space:
        name, values = space[0]
        efforts += [({**chosen, name: v}, 1) for v in values if v > chosen.get(name, values[0])]
    efforts += [(efforts[-1][0], f) for f in INDEX_FETCH[1:]]  # then more candidates, re-scored exactly

    def search(effort: tuple[dict[str, int], int], prev: Any, last: Any) -> tuple[np.ndarray, np.ndarray]:
        params, fetch = effort
        if params:
            set_search_params(index, params)
        graph.search_params = _effort(effort)
        return index_knn(index, x, ids, k, fetch=fetch, progress=progress)

    _until_pairs_held(graph, searcher, k, efforts, search, gate, target, seed)
    for t in graph.tuning:
        t["effort"] = _effort(t["effort"])


def _effort(effort: tuple[dict[str, int], int]) -> str:
    params, fetch = effort
    return ",".join(filter(None, [format_params(params) if params else "", f"fetch={fetch}k" if fetch > 1 else ""]))


def graph_from_arrays(ids: np.ndarray, rows: np.ndarray, cosines: np.ndarray, method: str = "given",
                      recall: float = math.nan) -> KnnGraph:
    """A :class:`KnnGraph` from arrays already at hand (e.g. a run's ``curation/neighbours.parquet``)."""
    return KnnGraph(np.asarray(ids, np.int64), np.asarray(rows, np.int64), np.asarray(cosines, np.float32), method,
                    recall, 0)
