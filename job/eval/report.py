"""What an evaluation reports: the per-query table (``per_query.parquet``), the averages per task and vector column
(:class:`job.runfolder.Score`), the labels' record, and the short table ``job eval`` prints."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..runfolder import Evaluation, Score
from .rank import Queries, Ranked
from .searchad import searchad_lines
from .selection import selection_lines
from .tasks import IMAGE_TASK, Truth

TASK_ORDER = ("text", IMAGE_TASK, "scene", "ego")
METRICS = ("map_at_100", "r_precision", "p_at_5", "chance_map_at_100", "chance_r_precision", "chance_p_at_5")
PER_QUERY_SCHEMA = pa.schema([
    ("task", pa.string()), ("column", pa.string()), ("query", pa.string()), ("query_id", pa.int64()),
    ("prompts", pa.string()), ("n", pa.int64()), ("relevant", pa.int64()), *((m, pa.float64()) for m in METRICS)])


def per_query_rows(task: str, column: str, q: Queries, r: Ranked, ids: np.ndarray) -> dict[str, list[Any]]:
    """The per-query table's rows of one task over one column."""
    qid = [int(ids[i]) for i in q.query_rows] if q.query_rows is not None else [None] * len(q.names)
    return {"task": [task] * len(q.names), "column": [column] * len(q.names), "query": list(q.names),
            "query_id": qid, "prompts": list(q.prompts) if q.prompts else [None] * len(q.names),
            "n": r.n.tolist(), "relevant": r.relevant.tolist(), **{m: getattr(r, m).tolist() for m in METRICS}}


def per_query_table(parts: list[dict[str, list[Any]]]) -> pa.Table:
    return pa.table({k: sum((p[k] for p in parts), []) for k in PER_QUERY_SCHEMA.names}, schema=PER_QUERY_SCHEMA)


def summarize(per_query: pa.Table) -> list[Score]:
    """Averages per (task, column): over queries; for the image task first per category (each weighs the same)."""
    out = []
    data = {c: np.asarray(per_query.column(c).to_pylist(), dtype=object) for c in per_query.column_names}
    for task in TASK_ORDER:
        for column in dict.fromkeys(data["column"].tolist()):
            m = (data["task"] == task) & (data["column"] == column)
            if not m.any():
                continue
            keys = data["query"][m]
            vals: dict[str, float] = {}
            for metric in METRICS:
                v = data[metric][m].astype(np.float64)
                if task == IMAGE_TASK:
                    v = np.array([v[keys == k].mean() for k in dict.fromkeys(keys.tolist())])
                vals[metric] = round(float(v.mean()), 5)
            out.append(Score(task=task, column=column, queries=int(m.sum()), **vals))
    return out


def label_record(labels: pa.Table, truth: Truth, info: dict[str, Any]) -> dict[str, Any]:
    """The ``labels`` entry of ``eval.json``: where they came from, how many images show a box, per category."""
    boxes = labels.column("boxes").to_numpy()
    return {**{k: v for k, v in info.items() if k != "key"}, "images": labels.num_rows,
            "images_with_a_box": int(np.count_nonzero(boxes)), "categories": truth.positives,
            "queries": {task: truth.names(task) for task in ("category", "scene", "ego")}}


def summary_lines(result: Evaluation) -> list[str]:
    """The short table ``job eval`` prints: per task and vector column, the three scores and chance."""
    lines = []
    if result.scores or result.labels:
        lines += [f"{result.images} images scored ({result.labels.get('images_with_a_box', 0)} with an annotated "
                  f"object at visibility >= {result.labels.get('min_visibility', '?')}; tables "
                  f"{result.labels.get('version', '?')})",
                  f"{'task':<8} {'column':<18} {'queries':>7}  {'MAP@100':>8} {'R-Prec':>7} {'P@5':>6}   "
                  f"{'chance MAP@100':>14}"]
    for s in result.scores:
        lines.append(f"{s.task:<8} {s.column:<18} {s.queries:>7}  {s.map_at_100:>8.3f} "
                     f"{s.r_precision:>7.3f} {s.p_at_5:>6.3f}   {s.chance_map_at_100:>14.3f}")
    if result.selection is not None:
        lines += selection_lines(result.selection)
    if result.searchad is not None:
        lines += searchad_lines(result.searchad)
    return lines
