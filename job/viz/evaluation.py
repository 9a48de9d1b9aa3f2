"""A run's scores for the notebook (``job eval``'s ``eval/``, read through ``job.eval``): the table of scores per task
and vector column beside what a random ranking scores, the per-category figure, the per-query table. A run never
scored gives ``None`` and a note naming the command that scores it, so the notebook skips its cells."""
from __future__ import annotations

import pandas as pd

from ..eval import eval_png, not_evaluated_note, read_evaluation, read_per_query, score_rows, summary_lines
from ..runfolder import Evaluation
from .run import Run


def load_eval(run: Run) -> tuple[Evaluation | None, str]:
    """The run's evaluation and a note to print (``job eval``'s table); ``(None, note)`` when it has none."""
    ev = read_evaluation(run.layout)
    if ev is None:
        return None, not_evaluated_note(run.uri)
    return ev, "\n".join(summary_lines(ev))


def scores_table(ev: Evaluation) -> pd.DataFrame:
    """One row per task and vector column: queries, MAP@100, R-Precision, P@5 and the random ranking's values."""
    return pd.DataFrame(score_rows(ev)).round(3)


def per_query(run: Run) -> pd.DataFrame | None:
    """``eval/per_query.parquet``: one row per task, vector column and query."""
    table = read_per_query(run.layout)
    return None if table is None else table.to_pandas()


def figure_png(run: Run) -> bytes | None:
    """``eval/per_category.png``: MAP@100 per category, text→image and image→image, per vector column."""
    return eval_png(run.layout)
