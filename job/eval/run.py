"""The evaluation of a run (``job eval``, the eval step of ``job run`` / ``job merge``): labels, queries, scores, and
``eval/`` written through the run folder. The manifest entry is returned; the step (``job.steps.eval_step``) records it.

Files (``RunLayout.eval``), each written atomically:

* ``labels.parquet``: the ground truth (``labels``), kept for the next ``job eval`` of the same run;
* ``per_query.parquet``: one row per (task, vector column, query): ``task``, ``column``, ``query`` (category, scene
  words, ego state), ``query_id`` (the query image's id, image task), ``prompts``, ``n`` (images ranked), ``relevant``,
  ``map_at_100``, ``r_precision``, ``p_at_5`` and their ``chance_*`` values;
* ``per_category.png``: MAP@100 per category, text→image and image→image, per vector column, chance marked;
* ``searchad.parquet`` (``--searchad``): per label, task and column, SearchAD's MAP, R-Precision, P@5/25/100;
* ``eval.json``: :class:`job.runfolder.Evaluation`, also in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fsutil
from ..config import JobConfig
from ..errors import JobError, UsageError
from ..runfolder import (
    VECTOR_COLUMNS,
    Evaluation,
    Manifest,
    RunLayout,
    find_manifest,
    open_dataset,
    read_table,
    read_vectors,
    table_bytes,
)
from ..runfolder.documents import encode
from .labels import derive_labels, run_rows
from .queries import load_prompts
from .rank import Queries, score_queries, unit
from .report import label_record, per_query_rows, per_query_table, summarize
from .searchad import evaluate_column, load_searchad, scored_labels, text_vectors
from .searchad import record as searchad_record
from .selection import score_selection, selection_ids
from .tables import read_annotations, table_locations
from .tasks import IMAGE_TASK, TEXT_TASKS, Truth, build_truth, image_queries, image_query_plan, text_queries

log = logging.getLogger(__name__)

EVAL_JSON, LABELS, PER_QUERY, PER_CATEGORY = "eval.json", "labels.parquet", "per_query.parquet", "per_category.png"
SEARCHAD = "searchad.parquet"
T = TypeVar("T")
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


def _unit_rows(x: np.ndarray, vid: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The rows of ``x`` (ids ``vid``) for the ids ``ids``, in that order, unit length; UsageError when some id is not
    a row of the run (labels made for other rows)."""
    order = np.argsort(vid, kind="stable")
    at = np.clip(np.searchsorted(vid[order], ids), 0, max(0, len(vid) - 1))
    missing = int(np.count_nonzero(vid[order][at] != ids)) if len(vid) else len(ids)
    if missing:
        raise UsageError(f"{missing} of the {len(ids)} labelled images are not rows of this run: the labels were made "
                         "for other rows (derive them for this run: python -m job eval --run RUN)")
    return unit(x[order[at]])


def evaluate_run(layout: RunLayout, cfg: JobConfig, *, manifest: Manifest | None = None,
                 labels: pa.Table | None = None,
                 encode_text: Callable[[Sequence[str]], np.ndarray] | None = None) -> Evaluation:
    """Score a run against nuScenes' own annotations and write ``eval/`` (see the module docstring).

    ``manifest``: the run's (read from the folder when None; the steps pass the one they are writing).
    ``labels``: ground truth made earlier for the same rows (``load_labels``), e.g. shared by several variants of one
    comparison; derived (or reused from ``eval/labels.parquet``) when None. ``encode_text``: texts → unit vectors
    from the model that made the run (the run's own, loaded through ``job.model.load``, when None).
    With ``cfg.eval.searchad``, SearchAD's benchmark is scored too (``searchad``); a run whose tables hold no
    annotations is then scored on SearchAD alone.
    UsageError when the run has no nuScenes metadata or ``--searchad``/``--prompts`` name no such thing (exit 2,
    nothing written); NoAnnotations when its tables hold no annotations and no SearchAD folder is given.
    """
    t0 = time.perf_counter()
    manifest = manifest if manifest is not None else find_manifest(layout)
    ec = cfg.eval
    prompts = load_prompts(ec.prompts)  # bad --prompts / --searchad stop here, before anything is written
    sa = load_searchad(ec.searchad) if ec.searchad else None
    timings: dict[str, float] = {}
    # labels made elsewhere (job compare shares one set) keep the provenance load_labels stored in their metadata
    given = json.loads((labels.schema.metadata or {}).get(_LABELS_META, b"{}")) if labels is not None else {}
    label_info: dict[str, Any] = {**given, "given": True}
    if labels is not None:  # kept in this run too, for its next job eval (metadata and all)
        fsutil.atomic_write_bytes(layout.eval(LABELS), table_bytes(labels))
    if labels is None:
        try:
            labels, label_info = load_labels(layout, manifest, cfg)
        except NoAnnotations:
            if sa is None:
                raise
            log.info("no annotations in the run's tables: SearchAD only")
    timings["labels_s"] = round(time.perf_counter() - t0, 3)
    truth = build_truth(labels, prompts, ec.min_positives) if labels is not None else None
    ids = labels.column("id").to_numpy() if labels is not None else np.zeros(0, np.int64)
    columns = vector_columns(open_dataset(layout.embeddings).schema.names)
    settings: dict[str, Any] = {"min_positives": ec.min_positives, "image_queries": ec.image_queries, "seed": ec.seed,
                                "k": 100, "rare_share": ec.rare_share,
                                "prompts": {"source": prompts.source, "sha256": prompts.sha256}}
    encode = encode_text or _run_text_encoder(manifest, cfg)
    t1 = time.perf_counter()
    texts: dict[str, Queries] = {}
    if truth is not None and truth.groups:
        texts = _guarded(lambda: text_queries(truth, prompts, encode), settings, "text_queries", {})
    sa_paths = read_table(layout.embeddings, ["id", "path"]) if sa is not None else None
    sa_at, sa_labels = scored_labels(sa, sa_paths.column("path").to_pylist()) if sa and sa_paths else ([], [])
    sa_text: dict[str, np.ndarray] = {}
    if sa_labels:
        sa_text = _guarded(lambda: text_vectors(sa_labels, encode, prompts.searchad), settings, "searchad_text",
                           sa_text)
    timings["text_encode_s"] = round(time.perf_counter() - t1, 3)
    plan = image_query_plan(truth, ec.image_queries, ec.seed) if truth is not None else None
    parts: list[dict[str, list[Any]]] = []
    sa_rows: list[dict[str, Any]] = []
    t2 = time.perf_counter()
    for column in columns:
        x_all, vid = read_vectors(layout.embeddings, column)
        if truth is not None and plan is not None:
            x = _unit_rows(x_all, vid, ids)
            for task in TEXT_TASKS:
                if task in texts:
                    parts.append(per_query_rows(task, column, texts[task],
                                                score_queries(x, texts[task], truth.relevance), ids))
            q = image_queries(x, truth, plan)
            if len(q.names):
                parts.append(per_query_rows(IMAGE_TASK, column, q,
                                            score_queries(x, q, truth.relevance, truth.scenes), ids))
            del x
        if sa is not None and sa_paths is not None and sa_at:
            sub = sa_paths.take(pa.array(sa_at))
            x = _unit_rows(x_all, vid, sub.column("id").to_numpy())
            sa_rows += evaluate_column(sa, sub.column("path").to_pylist(), x, column, sa_labels, sa_text)
        del x_all
    timings["score_s"] = round(time.perf_counter() - t2, 3)
    per_query = per_query_table(parts)
    rows = _row_count(layout)
    result = Evaluation(images=labels.num_rows if labels is not None else 0, rows=rows,
                        labels=label_record(labels, truth, label_info) if labels is not None and truth else {},
                        scores=summarize(per_query), settings=settings)
    selected = selection_ids(layout) if labels is not None else None
    if selected is not None and labels is not None:
        result.selection = score_selection(selected, labels, rows, ec.rare_share)
    if sa is not None:
        result.searchad = searchad_record(sa, len(sa_at), sa_labels, sa_rows)
    _write(layout, result, per_query, truth, sa_rows, timings, t0)
    return result


def _guarded(make: Callable[[], T], settings: dict[str, Any], key: str, default: T) -> T:
    """Text queries need the run's model: without one (no manifest, weights not here) the image tasks still run and
    ``settings[key]`` says why the text ones did not."""
    try:
        return make()
    except JobError as exc:  # UsageError (no manifest), DataError (other weights here, a storage fault)
        settings[key] = f"skipped: {exc}"
        log.warning("%s skipped: %s", key.replace("_", " "), exc)
        return default


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


def _write(layout: RunLayout, result: Evaluation, per_query: pa.Table, truth: Truth | None,
           searchad_rows: list[dict[str, Any]], timings: dict[str, float], t0: float) -> None:
    from .plot import per_category_png

    names = [PER_QUERY]
    fsutil.atomic_write_bytes(layout.eval(PER_QUERY), table_bytes(per_query))
    if truth is not None:
        fsutil.atomic_write_bytes(layout.eval(PER_CATEGORY), per_category_png(per_query, truth.positives))
        names += [LABELS, PER_CATEGORY]
    if searchad_rows:
        fsutil.atomic_write_bytes(layout.eval(SEARCHAD), table_bytes(pa.Table.from_pylist(searchad_rows)))
        names.append(SEARCHAD)
    result.files = {name: layout.rel(layout.eval(name)) for name in (*names, EVAL_JSON)}
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    result.timings = timings
    fsutil.atomic_write_bytes(layout.eval(EVAL_JSON), encode(result))
