"""Curation over a run's vectors: k-NN graph, duplicates (exact, near, still), uniqueness and a diverse subset.

Array-level: every function here takes numpy arrays (vectors, ids, metadata columns) and needs no run folder; ``run``
is the step that reads a run's vectors and metadata and writes ``curation/`` through the run folder.

May import: the ground floor, ``job.runfolder``, ``job.index`` (the run's index, the exact search), ``job.decode``
(``content_hash``), ``job.model`` (the device check).
"""
from __future__ import annotations

from .duplicates import KINDS, Duplicates, exact_duplicates, near_duplicates, nearest_distinct_cosines
from .find import STILL_COLUMNS, find_duplicates
from .graph import METHODS, graph_from_arrays, knn_graph
from .greedy import TimeGaps
from .knn import DEFAULT_K, EXACT_BUDGET_S, KnnGraph, exact_knn
from .order import content_hash, hash_groups, keep_rank
from .plot import threshold_histogram
from .scores import UNIQUENESS_WEIGHTS, scores, uniqueness
from .select import Selection, StratumCoverage, select_diverse
from .still import STILL_METRES, check_still_metres, still_duplicates
from .strata import Strata, check_balance, quotas, weights
from .threshold import NearThreshold, auto_threshold, parse_threshold

__all__ = [
    "DEFAULT_K", "EXACT_BUDGET_S", "KINDS", "METHODS", "STILL_METRES", "UNIQUENESS_WEIGHTS", "Duplicates", "KnnGraph",
    "NearThreshold", "Selection", "Strata", "StratumCoverage", "TimeGaps", "auto_threshold", "check_balance", "check_still_metres", "content_hash",
    "STILL_COLUMNS", "exact_duplicates", "exact_knn", "find_duplicates", "graph_from_arrays", "hash_groups", "keep_rank", "knn_graph", "near_duplicates",
    "nearest_distinct_cosines", "parse_threshold", "quotas", "scores", "select_diverse", "still_duplicates",
    "threshold_histogram", "uniqueness", "weights",
]
