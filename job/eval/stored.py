"""The one reader of a run's ``eval/`` (written by ``run``): the stored :class:`job.runfolder.Evaluation`, its figure,
its per-query table, and the rows a page or a notebook shows. ``job.serve`` and ``job.viz`` read it through here."""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from .. import fsutil
from ..runfolder import Evaluation, RunLayout, read_table
from ..runfolder.documents import decode
from .run import EVAL_JSON, PER_CATEGORY, PER_QUERY

TASK_NAMES = {"text": "text → image", "image": "image → image", "scene": "scene words", "ego": "car stopped"}


def read_evaluation(layout: RunLayout) -> Evaluation | None:
    """``eval/eval.json`` of the output, or None when it was never evaluated."""
    url = layout.eval(EVAL_JSON)
    if not fsutil.exists(url):
        return None
    fs, path = fsutil.url_to_fs(url)
    return decode(fs.cat_file(path), Evaluation, url, "evaluation (score the run again: python -m job eval)")


def eval_png(layout: RunLayout) -> bytes | None:
    """``eval/per_category.png``, or None."""
    url = layout.eval(PER_CATEGORY)
    if not fsutil.exists(url):
        return None
    fs, path = fsutil.url_to_fs(url)
    return bytes(fs.cat_file(path))


def read_per_query(layout: RunLayout) -> pa.Table | None:
    """``eval/per_query.parquet``, or None."""
    url = layout.eval(PER_QUERY)
    return read_table(url) if fsutil.exists(url) else None


def not_evaluated_note(uri: str) -> str:
    """What a page or a notebook says for a run without ``eval/``."""
    return (f"{uri} has no scores yet: python -m job eval --run {uri} scores it against nuScenes' own annotations "
            "(job run does it at the end when the source has them)")


def score_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """One row per task and vector column, as a page or a notebook shows them."""
    return [{"task": TASK_NAMES.get(s.task, s.task), "column": s.column, "queries": s.queries,
             "MAP@100": s.map_at_100, "R-Precision": s.r_precision, "P@5": s.p_at_5,
             "chance MAP@100": s.chance_map_at_100, "chance P@5": s.chance_p_at_5} for s in ev.scores]
