"""The evaluation of a run (``job eval``, the eval step of ``job run`` / ``job merge``): labels, queries, scores, and
``eval/`` written through the run folder. The manifest entry is returned; the step (``job.steps.eval_step``) records it.

Files (``RunLayout.eval``), each written atomically:

* ``labels.parquet``: the ground truth (``labels``), kept for the next ``job eval`` of the same run;
* ``per_query.parquet``: one row per (task, vector column, query): ``task``, ``column``, ``query`` (category, scene
  words, ego state), ``query_id`` (the query image's id, image task), ``prompts``, ``n`` (images ranked), ``relevant``,
  ``map_at_100``, ``r_precision``, ``p_at_5`` and their ``chance_*`` values;
* ``per_category.png``: MAP@100 per category, text→image and image→image, per vector column, chance marked;
* ``eval.json``: :class:`job.runfolder.Evaluation`, also in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fsutil
from ..config import JobConfig
from ..errors import UsageError
from ..runfolder import (
    VECTOR_COLUMNS,
    Evaluation,
    Manifest,
    RunLayout,
    Score,
    find_manifest,
    open_dataset,
    read_table,
    read_vectors,
    table_bytes,
)
from ..runfolder.documents import encode
from .labels import derive_labels, run_rows
from .queries import load_prompts
from .rank import Queries, Ranked, score_queries
from .selection import score_selection, selection_ids, selection_lines
from .tables import read_annotations, table_locations
from .tasks import IMAGE_TASK, TEXT_TASKS, Truth, build_truth, image_queries, image_query_plan, text_queries

log = logging.getLogger(__name__)

EVAL_JSON, LABELS, PER_QUERY, PER_CATEGORY = "eval.json", "labels.parquet", "per_query.parquet", "per_category.png"
TASK_ORDER = ("text", IMAGE_TASK, "scene", "ego")
_LABELS_META = b"job.eval"  # parquet metadata key of labels.parquet: how they were made (reused when it matches)


class NoAnnotations(UsageError):
    """The run's tables hold no annotations (v1.0-test, or tables without sample_annotation): nothing to score."""


def vector_columns(names: Sequence[str]) -> list[str]:
    """The run's vector columns, as ``job.runfolder.schema`` declares them (both of every run, when present)."""
    return [c for c in VECTOR_COLUMNS if c in names]


def _labels_key(rows: pa.Table, min_visibility: int) -> str:
    ids = np.sort(rows.column("id").to_numpy())
    return f"{min_visibility}:{len(ids)}:{hashlib.blake2b(ids.tobytes(), digest_size=12).hexdigest()}"


def load_labels(layout: RunLayout, manifest: Manifest | None, cfg: JobConfig,
                rows: pa.Table | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The run's labels: ``eval/labels.parquet`` when it was made for these rows at this ``--min-visibility`` (and no
    other table location is asked for), else derived from the annotation tables and written there."""
    rows = run_rows(layout) if rows is None else rows
    ec = cfg.eval
    key = _labels_key(rows, ec.min_visibility)
    url = layout.eval(LABELS)
    if ec.nuscenes_meta is None and fsutil.exists(url):
        fs, path = fsutil.url_to_fs(url)
        meta = pq.read_schema(path, filesystem=fs).metadata or {}
        info = json.loads(meta.get(_LABELS_META, b"{}")) if _LABELS_META in meta else {}
        if info.get("key") == key:
            log.info("labels: reusing %s", url)
            return read_table(url), {**info, "reused": True}
    t0 = time.perf_counter()
    ann, where = read_annotations(table_locations(manifest, ec.nuscenes_meta),
                                  rows.column("sample_data_token").to_pylist(), anon=cfg.source.anon)
    if ann.n_boxes == 0:
        raise NoAnnotations(f"the nuScenes tables at {where} ({ann.version}) hold no annotations (the test split has "
                            "none): nothing to score this run against")
    read_s = time.perf_counter() - t0
    labels = derive_labels(ann, rows, ec.min_visibility)
    info = {"key": key, "version": ann.version, "tables": where, "min_visibility": ec.min_visibility,
            "boxes_in_tables": ann.n_boxes, "read_tables_s": round(read_s, 3),
            "derive_s": round(time.perf_counter() - t0 - read_s, 3)}
    labels = labels.replace_schema_metadata({_LABELS_META: json.dumps(info)})
    fsutil.atomic_write_bytes(url, table_bytes(labels))
    log.info("labels: %d images, %d with a box (min visibility %d) in %.1f s -> %s", labels.num_rows,
             int(np.count_nonzero(labels.column("boxes").to_numpy())), ec.min_visibility,
             time.perf_counter() - t0, url)
    return labels, {**info, "reused": False}


def _aligned(layout: RunLayout, column: str, ids: np.ndarray) -> np.ndarray:
    """The ``column`` vectors of the rows ``ids`` (labels order), unit length."""
    x, vid = read_vectors(layout.embeddings, column)
    order = np.argsort(vid, kind="stable")
    pos = order[np.searchsorted(vid[order], ids)]
    x = x[pos]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _rows(task: str, column: str, q: Queries, r: Ranked, ids: np.ndarray) -> dict[str, list[Any]]:
    qid = [int(ids[i]) for i in q.query_rows] if q.query_rows is not None else [None] * len(q.names)
    return {"task": [task] * len(q.names), "column": [column] * len(q.names), "query": list(q.names),
            "query_id": qid, "prompts": list(q.prompts) if q.prompts else [None] * len(q.names),
            "n": r.n.tolist(), "relevant": r.relevant.tolist(),
            **{m: getattr(r, m).tolist() for m in ("map_at_100", "r_precision", "p_at_5", "chance_map_at_100",
                                                   "chance_r_precision", "chance_p_at_5")}}


def _summary(per_query: pa.Table) -> list[Score]:
    """Averages per (task, column): over queries; for the image task first per category (each weighs the same)."""
    out = []
    cols = per_query.column_names
    data = {c: np.asarray(per_query.column(c).to_pylist(), dtype=object) for c in cols}
    for task in TASK_ORDER:
        for column in dict.fromkeys(data["column"].tolist()):
            m = (data["task"] == task) & (data["column"] == column)
            if not m.any():
                continue
            keys = data["query"][m]
            vals: dict[str, float] = {}
            for metric in ("map_at_100", "r_precision", "p_at_5", "chance_map_at_100", "chance_r_precision",
                           "chance_p_at_5"):
                v = data[metric][m].astype(np.float64)
                if task == IMAGE_TASK:
                    v = np.array([v[keys == k].mean() for k in dict.fromkeys(keys.tolist())])
                vals[metric] = round(float(v.mean()), 5)
            out.append(Score(task=task, column=column, queries=int(m.sum()), **vals))
    return out


def evaluate_run(layout: RunLayout, cfg: JobConfig, *, manifest: Manifest | None = None,
                 labels: pa.Table | None = None,
                 encode_text: Callable[[Sequence[str]], np.ndarray] | None = None) -> Evaluation:
    """Score a run against nuScenes' own annotations and write ``eval/`` (see the module docstring).

    ``manifest``: the run's (read from the folder when None; the steps pass the one they are writing).
    ``labels``: ground truth made earlier for the same rows (``load_labels``), e.g. shared by several variants of one
    comparison; derived (or reused from ``eval/labels.parquet``) when None. ``encode_text``: texts → unit vectors
    from the model that made the run (the run's own, loaded through ``job.model.load``, when None).
    UsageError when the run has no nuScenes metadata (exit 2, nothing written); NoAnnotations when its tables hold
    no annotations.
    """
    t0 = time.perf_counter()
    manifest = manifest if manifest is not None else find_manifest(layout)
    ec = cfg.eval
    prompts = load_prompts(ec.prompts)  # a bad --prompts stops here, before anything is written
    timings: dict[str, float] = {}
    label_info: dict[str, Any] = {"given": True}
    if labels is None:
        labels, label_info = load_labels(layout, manifest, cfg)
    timings["labels_s"] = round(time.perf_counter() - t0, 3)
    ids = labels.column("id").to_numpy()
    truth = build_truth(labels, prompts, ec.min_positives)
    columns = vector_columns(open_dataset(layout.embeddings).schema.names)
    settings: dict[str, Any] = {"min_positives": ec.min_positives, "image_queries": ec.image_queries, "seed": ec.seed,
                                "k": 100, "prompts": {"source": prompts.source, "sha256": prompts.sha256}}
    t1 = time.perf_counter()
    texts: dict[str, Queries] = {}
    if any(kind in ("category", "scene", "ego") for kind, _ in truth.groups):
        try:
            texts = text_queries(truth, prompts, encode_text or _run_text_encoder(manifest, cfg))
        except UsageError as exc:  # no manifest / model to embed text with: the image task still runs
            settings["text_queries"] = f"skipped: {exc}"
            log.warning("text queries skipped: %s", exc)
    timings["text_encode_s"] = round(time.perf_counter() - t1, 3)
    plan = image_query_plan(truth, ec.image_queries, ec.seed)
    parts: list[dict[str, list[Any]]] = []
    t2 = time.perf_counter()
    for column in columns:
        x = _aligned(layout, column, ids)
        for task in TEXT_TASKS:
            if task in texts:
                parts.append(_rows(task, column, texts[task], score_queries(x, texts[task], truth.relevance), ids))
        q = image_queries(x, truth, plan)
        if len(q.names):
            parts.append(_rows(IMAGE_TASK, column, q, score_queries(x, q, truth.relevance, truth.scenes), ids))
        del x
    timings["score_s"] = round(time.perf_counter() - t2, 3)
    per_query = pa.table({k: sum((p[k] for p in parts), []) for k in parts[0]}) if parts else _empty_per_query()
    rows = _row_count(layout)
    result = Evaluation(images=labels.num_rows, rows=rows, labels=_label_record(labels, truth, label_info),
                        scores=_summary(per_query), settings={**settings, "rare_share": ec.rare_share})
    selected = selection_ids(layout)
    if selected is not None:
        result.selection = score_selection(selected, labels, rows, ec.rare_share)
    _write(layout, result, per_query, truth, timings, t0)
    return result


def _run_text_encoder(manifest: Manifest | None, cfg: JobConfig) -> Callable[[Sequence[str]], np.ndarray]:
    """texts → unit vectors from the run's own model (loaded on first use, checked against its weights hash)."""
    if manifest is None:
        raise UsageError("the run has no manifest.json: text queries need the model that made it")
    state: dict[str, Any] = {}

    def encode(texts: Sequence[str]) -> np.ndarray:
        from ..model.load import encode_text, load_run_model

        if "lm" not in state:
            state["lm"] = load_run_model(manifest, device=cfg.model.device)
        return encode_text(state["lm"], list(texts))

    return encode


def _row_count(layout: RunLayout) -> int:
    return int(open_dataset(layout.embeddings).count_rows())


def _label_record(labels: pa.Table, truth: Truth, info: dict[str, Any]) -> dict[str, Any]:
    boxes = labels.column("boxes").to_numpy()
    return {**{k: v for k, v in info.items() if k != "key"}, "images": labels.num_rows,
            "images_with_a_box": int(np.count_nonzero(boxes)), "categories": truth.positives,
            "queries": {task: truth.names(task) for task in ("category", "scene", "ego")}}


def _empty_per_query() -> pa.Table:
    return pa.table({k: pa.array([], t) for k, t in (
        ("task", pa.string()), ("column", pa.string()), ("query", pa.string()), ("query_id", pa.int64()),
        ("prompts", pa.string()), ("n", pa.int64()), ("relevant", pa.int64()), ("map_at_100", pa.float64()),
        ("r_precision", pa.float64()), ("p_at_5", pa.float64()), ("chance_map_at_100", pa.float64()),
        ("chance_r_precision", pa.float64()), ("chance_p_at_5", pa.float64()))})


def _write(layout: RunLayout, result: Evaluation, per_query: pa.Table, truth: Truth, timings: dict[str, float],
           t0: float) -> None:
    from .plot import per_category_png

    fsutil.atomic_write_bytes(layout.eval(PER_QUERY), table_bytes(per_query))
    fsutil.atomic_write_bytes(layout.eval(PER_CATEGORY), per_category_png(per_query, truth.positives))
    result.files = {name: layout.rel(layout.eval(name)) for name in (LABELS, PER_QUERY, PER_CATEGORY, EVAL_JSON)}
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    result.timings = timings
    fsutil.atomic_write_bytes(layout.eval(EVAL_JSON), encode(result))


def summary_lines(result: Evaluation) -> list[str]:
    """The short table ``job eval`` prints: per task and vector column, the three scores and chance."""
    lines = [f"{result.images} images scored ({result.labels.get('images_with_a_box', 0)} with an annotated object at "
             f"visibility >= {result.labels.get('min_visibility', '?')}; tables {result.labels.get('version', '?')})",
             f"{'task':<8} {'column':<16} {'queries':>7}  {'MAP@100':>8} {'R-Prec':>7} {'P@5':>6}   "
             f"{'chance MAP@100':>14}"]
    names = {"text": "text", IMAGE_TASK: "image", "scene": "scene", "ego": "ego"}
    for s in result.scores:
        lines.append(f"{names.get(s.task, s.task):<8} {s.column:<16} {s.queries:>7}  {s.map_at_100:>8.3f} "
                     f"{s.r_precision:>7.3f} {s.p_at_5:>6.3f}   {s.chance_map_at_100:>14.3f}")
    if result.selection is not None:
        lines += selection_lines(result.selection)
    return lines
