"""Curation over a run's vectors: k-NN graph, duplicates (exact, near, still), uniqueness and a diverse subset.

Array-level: the functions of ``knn``, ``graph``, ``order``, ``threshold``, ``duplicates``, ``still``, ``find``,
``scores``, ``select`` take numpy arrays (vectors, ids, metadata columns) and need no run folder. Over a run folder:
``run`` is the step (``load`` reads the run, ``write`` writes ``curation/``, ``record`` makes the manifest's entry);
``results`` reads a curation back (``CurationResults``: the page, the notebook and evaluation use it). The graph:
``knn`` (exact, from the run's index), ``partition`` (a balanced partition, the CPU's way at scale), ``recall`` (pair
recall, the gate), ``graph`` (which method, and the search deepened until the gate holds).

May import: the ground floor, ``job.runfolder``, ``job.index`` (the run's index, the exact search), ``job.decode``
(``content_hash``), ``job.model`` (the device check).
"""
from __future__ import annotations

from ..config import CURATE_K, CURATE_METHODS, STILL_COSINE, STILL_GAP_S, STILL_METRES, UNIQUENESS_WEIGHTS
from .duplicates import (
    KINDS,
    Duplicates,
    duplicate_roots,
    exact_duplicates,
    near_duplicates,
    nearest_distinct_cosines,
    to_roots,
)
from .find import STILL_COLUMNS, find_duplicates, near_threshold
from .graph import graph_from_arrays, knn_graph
from .greedy import TimeGaps
from .knn import EXACT_BUDGET_S, KnnGraph, exact_knn
from .order import content_hash, hash_groups, keep_rank
from .partition import Partition, balanced_partition, partition_knn
from .plot import threshold_histogram
from .recall import RecallSample
from .record import summary_lines
from .results import CurationResults, Group, curate_command, kind_counts, no_subset, not_curated
from .scores import FIFTYONE_COMMIT, scores, uniqueness_fiftyone, uniqueness_kept
from .select import Selection, StratumCoverage, select_diverse
from .still import check_still_metres, still_duplicates
from .strata import Strata, check_balance, quotas, weights
from .threshold import BulkFlank, NearThreshold, auto_threshold, parse_threshold

__all__ = [
    "CURATE_K", "CURATE_METHODS", "EXACT_BUDGET_S", "FIFTYONE_COMMIT", "KINDS", "STILL_COLUMNS", "STILL_COSINE",
    "STILL_GAP_S", "STILL_METRES", "UNIQUENESS_WEIGHTS", "BulkFlank", "CurationResults", "Duplicates", "Group",
    "KnnGraph", "NearThreshold", "Partition", "RecallSample", "Selection", "Strata", "StratumCoverage", "TimeGaps",
    "auto_threshold", "balanced_partition", "check_balance", "check_still_metres", "content_hash", "curate_command",
    "duplicate_roots", "exact_duplicates", "exact_knn", "find_duplicates", "graph_from_arrays", "hash_groups",
    "keep_rank", "kind_counts", "knn_graph", "near_duplicates", "near_threshold", "nearest_distinct_cosines",
    "no_subset", "not_curated", "parse_threshold", "partition_knn", "quotas", "scores", "select_diverse",
    "still_duplicates", "summary_lines", "threshold_histogram", "to_roots", "uniqueness_fiftyone", "uniqueness_kept",
    "weights",
]
