"""Eval stage: how good a run's search is, scored against nuScenes' own annotations (no download, no labelling).

``labels`` (the ground truth of each keyframe camera image: the categories and attributes of the boxes its camera
shows, the scene's words, whether the car stood still), ``metrics`` (MAP@100, R-Precision, P@5 with SearchAD's
semantics, and their values by chance), ``queries`` (the editable prompt table ``prompts.toml``, sampled query images),
``tasks`` (what is relevant to each query), ``rank`` (exact ranking and scoring), ``tables`` (where the annotation tables
are), ``selection`` (a curated subset against random ones), ``searchad`` (SearchAD's benchmark, ``--searchad``),
``plot`` (the per-category PNG), ``report`` (the per-query table, the averages, the printed table), ``run``
(:func:`evaluate_run`: the step over a run folder, writing ``eval/``), ``stored`` (the one reader of ``eval/``).

May import: the ground floor, ``job.runfolder``, ``job.nuscenes``, ``job.sources`` (where tables live), ``job.model``
(the run's text tower), ``job.index``, ``job.search``, ``job.curate``.
"""
from __future__ import annotations

from .labels import LABELS_SCHEMA, STOPPED_MPS, derive_labels, run_rows
from .metrics import (
    MAP_K,
    P_K,
    ap_at_k,
    average_precision,
    chance_ap_at_k,
    chance_precision,
    precision_at_k,
    r_precision,
)
from .queries import PromptTable, load_prompts
from .report import summary_lines
from .run import EVAL_JSON, LABELS, PER_CATEGORY, PER_QUERY, SEARCHAD, NoAnnotations, evaluate_run, load_labels
from .stored import eval_png, not_evaluated_note, read_evaluation, read_per_query, score_rows

__all__ = [
    "EVAL_JSON", "LABELS", "LABELS_SCHEMA", "MAP_K", "PER_CATEGORY", "PER_QUERY", "P_K", "SEARCHAD", "STOPPED_MPS",
    "NoAnnotations", "PromptTable", "ap_at_k", "average_precision", "chance_ap_at_k", "chance_precision",
    "derive_labels", "eval_png", "evaluate_run", "load_labels", "load_prompts", "not_evaluated_note",
    "precision_at_k", "r_precision", "read_evaluation", "read_per_query", "run_rows", "score_rows", "summary_lines",
]
