"""Curation over a run's vectors: k-NN graph, duplicates (exact, near, still), uniqueness and a diverse subset.

Array-level: the functions of ``knn``, ``graph``, ``order``, ``threshold``, ``duplicates``, ``still``, ``find``,
``scores``, ``select`` take numpy arrays (vectors, ids, metadata columns) and need no run folder. Over a run folder:
``run`` is the step (``load`` reads the run, ``write`` writes ``curation/``, ``record`` makes the manifest's entry);
``results`` reads a curation back (``CurationResults``: the page, the notebook and evaluation use it).

May import: the ground floor, ``job.runfolder``, ``job.index`` (the run's index, the exact search), ``job.decode``
(``content_hash``), ``job.model`` (the device check).
"""
from __future__ import annotations

from ..config import CURATE_K, CURATE_METHODS, STILL_METRES
from .duplicates import KINDS, Duplicates, duplicate_roots, exact_duplicates, near_duplicates, nearest_distinct_cosines
from .find import STILL_COLUMNS, find_duplicates
from .graph import graph_from_arrays, knn_graph
from .greedy import TimeGaps
from .knn import EXACT_BUDGET_S, KnnGraph, exact_knn
from .order import content_hash, hash_groups, keep_rank
from .plot import threshold_histogram
from .record import summary_lines
from .results import CurationResults, Group, curate_command, kind_counts, no_subset, not_curated
from .scores import UNIQUENESS_WEIGHTS, scores, uniqueness
from .select import Selection, StratumCoverage, select_diverse
from .still import check_still_metres, still_duplicates
from .strata import Strata, check_balance, quotas, weights
from .threshold import NearThreshold, auto_threshold, parse_threshold

__all__ = [
    "CURATE_K", "CURATE_METHODS", "EXACT_BUDGET_S", "KINDS", "STILL_COLUMNS", "STILL_METRES", "UNIQUENESS_WEIGHTS",
    "CurationResults", "Duplicates", "Group", "KnnGraph", "NearThreshold", "Selection", "Strata", "StratumCoverage",
    "TimeGaps", "auto_threshold", "check_balance", "check_still_metres", "content_hash", "curate_command",
    "duplicate_roots", "exact_duplicates", "exact_knn", "find_duplicates", "graph_from_arrays", "hash_groups",
    "keep_rank", "kind_counts", "knn_graph", "near_duplicates", "nearest_distinct_cosines", "no_subset",
    "not_curated", "parse_threshold", "quotas", "scores", "select_diverse", "still_duplicates", "summary_lines",
    "threshold_histogram", "uniqueness", "weights",
]
