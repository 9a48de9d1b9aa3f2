"""The curation step of a run (``job curate``, ``job run --curate``, ``job merge --curate``): read the run's vectors and
metadata, build the k-NN graph, find the duplicates (exact, standing still, near), score rarity, pick a diverse
subset (``job.curate``, array-level), and write ``curation/`` through the run folder. The manifest entry is returned;
the step (``job.steps.curate_step``) records it.

Files (``RunLayout.curation``), each written atomically, the manifest last:

* ``neighbours.parquet``: ``id``, ``neighbours`` (list of int64 ids, nearest first), ``cosines`` (list of float32);
* ``duplicates.parquet``: one row per image that repeats another: ``id``, ``keep_id``, ``kind`` (exact | still |
  near), ``cosine`` (to ``keep_id``); images not in it are unique;
* ``scores.parquet``: ``id``, ``uniqueness`` (FiftyOne Brain's definition, 0–1, higher = rarer), ``nn_cosine``,
  ``kth_cosine``;
* ``selection.parquet`` (``--select N``, ``job.curate.subset``): ``rank``, ``id``, ``path``, ``sample_data_token``,
  ``coverage_cosine``, ``stratum``;
* ``nn_cosines.png``: the nearest-neighbour distances with the near threshold marked.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .. import fsutil
from ..config import CurateConfig
from ..errors import DataError, UsageError
from ..runfolder import (
    Curation,
    RunLayout,
    index_info_url,
    open_dataset,
    read_index_info,
    read_table,
    read_vectors,
    write_table,
)
from .subset import SUBSET_COLUMNS, SubsetPlan, check_subset_options
from .subset import summary_lines as subset_lines

log = logging.getLogger(__name__)

NEIGHBOURS, DUPLICATES, SCORES, SELECTION, HISTOGRAM = (
    "neighbours.parquet", "duplicates.parquet", "scores.parquet", "selection.parquet", "nn_cosines.png")
STILL_SOURCE = {"scene": "scene_token", "channel": "channel", "timestamp": "timestamp", "ego_x": "ego_x",
                "ego_y": "ego_y"}  # job.curate.STILL_COLUMNS -> the embeddings' columns
TOKEN = "sample_data_token"


@dataclass
class RunVectors:
    """A run's vectors and the metadata curation reads, rows aligned."""

    x: np.ndarray
    ids: np.ndarray
    meta: dict[str, np.ndarray]

    def column(self, name: str) -> np.ndarray | None:
        return self.meta.get(name)


def check_options(cfg: CurateConfig, columns: list[str]) -> list[str]:
    """The ``--balance`` columns, checked against the embeddings' columns (before a run embeds anything), and the
    subset's other options (``subset.check_subset_options``)."""
    from . import check_balance

    balance = check_balance(cfg.balance, [c for c in columns if c not in ("embedding", "embedding_cls", "id")])
    check_subset_options(cfg, columns)
    return balance


def _load(layout: RunLayout, cfg: CurateConfig) -> RunVectors:
    names = list(open_dataset(layout.embeddings).schema.names)
    balance = check_options(cfg, names)
    x, ids = read_vectors(layout.embeddings)  # UsageError for a run without vectors
    wanted = ["path", "timestamp", "content_hash", TOKEN, *STILL_SOURCE.values(), *SUBSET_COLUMNS, *balance]
    table = read_table(layout.embeddings, ["id", *dict.fromkeys(c for c in wanted if c in names)])
    at = np.argsort(table.column("id").to_numpy())
    order = at[np.searchsorted(table.column("id").to_numpy()[at], ids)]  # metadata rows in the vectors' order
    meta = {c: table.column(c).to_numpy(zero_copy_only=False)[order] for c in table.column_names if c != "id"}
    return RunVectors(x, ids, meta)


def _index(layout: RunLayout, ids: np.ndarray, method: str) -> Any:
    """The run's image index when the graph may come from it (None: exact); refused when it is not these vectors'."""
    if method == "exact" or not fsutil.exists(index_info_url(layout.index)):
        if method in ("index", "ivf-lists"):
            raise UsageError(f"k-NN method {method!r} needs the run's index; build it with: python -m job index "
                             f"--run {layout.run_dir}")
        return None
    from ..index import ids_digest, load_index

    info = read_index_info(layout.index)
    index = load_index(layout.index)
    if int(index.ntotal) != len(ids) or (info.ids_sha256 and info.ids_sha256 != ids_digest(ids)):
        raise DataError(f"the index of {layout.run_dir} ({index.ntotal} vectors) does not match its embeddings "
                        f"({len(ids)} rows); rebuild it: python -m job index --run {layout.run_dir}")
    return index


def _to_roots(dups: Any, x: np.ndarray) -> None:
    """Every duplicate's ``keep`` becomes the image kept for its whole group (an exact copy's original may itself be a
    frame of a standstill, found first as kinds run exact → still → near), with the cosine to that image."""
    if not len(dups):
        return
    roots = duplicate_roots(dups.rows, dups.keep_rows)
    moved = roots != dups.keep_rows
    if moved.any():
        dups.keep_rows = roots
        dups.cosines = np.einsum("ij,ij->i", x[dups.rows], x[roots]).astype(np.float32)


def _plain(obj: Any) -> Any:
    """A JSON-able copy (numpy scalars and arrays as Python numbers and lists) for the manifest."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _lists(values: np.ndarray, valid: np.ndarray, kind: pa.DataType) -> pa.Array:
    """(n, k) values as a list column, each row's valid entries only."""
    counts = valid.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[valid], kind))


def curate_run(layout: RunLayout, cfg: CurateConfig, *, progress: bool = True) -> Curation:
    """Curate one output of a run (see the module docstring); bad options end before anything is written."""
    from .. import curate

    t0 = time.perf_counter()
    run = _load(layout, cfg)
    n = len(run.ids)
    if cfg.select is not None and cfg.select > n:
        raise UsageError(f"--select {cfg.select} is out of range; use 1 to {n} (the run has {n} images)")
    plan = SubsetPlan.prepare(cfg, run.ids, run.meta) if cfg.select is not None else None
    index = _index(layout, run.ids, cfg.method)
    timings = {"read_s": time.perf_counter() - t0}
    device = cfg.device
    if device == "cuda":  # CUDA means CUDA: without a usable GPU this is a one-line error, not a quiet CPU run
        from ..model.device import pick_device

        pick_device("cuda")
    graph = curate.knn_graph(run.x, run.ids, cfg.k, index=index, method=cfg.method, seed=cfg.seed, progress=progress,
                             device=device)
    del index  # the run's index is not needed after the graph: its memory is free for the selection
    timings["graph_s"] = time.perf_counter() - t0 - timings["read_s"]
    t1 = time.perf_counter()
    rank = curate.keep_rank(run.ids, run.column("timestamp"), run.column("path"))
    still = {k: run.meta[c] for k, c in STILL_SOURCE.items()} if all(c in run.meta for c in STILL_SOURCE.values()) \
        else None
    dups = curate.find_duplicates(graph, run.x, rank, near_threshold=cfg.near_threshold,
                                  hashes=run.column("content_hash"), still=still, still_metres=cfg.still_metres,
                                  device=device)
    timings["duplicates_s"] = time.perf_counter() - t1
    scores = curate.scores(graph)
    selection = None
    if plan is not None:
        t2 = time.perf_counter()
        assert dups.threshold is not None
        selection = plan.select(run.x, run.ids, dups.rows, dups.keep_rows, graph.rows, graph.cosines,
                                dups.threshold.cosine, progress=progress)
        timings["select_s"] = time.perf_counter() - t2
    assert dups.threshold is not None
    _to_roots(dups, run.x)
    files = _write(layout, run, graph, dups, scores, selection, cfg)
    timings["write_s"] = time.perf_counter() - t0 - sum(timings.values())
    counts = dups.counts()
    info = Curation(
        n=n, k=graph.k, graph=_plain(graph.summary()), threshold=_plain(dups.threshold.summary()),
        still_metres=cfg.still_metres if still is not None else None, duplicates=counts,
        unique=n - int(sum(counts.values())),
        selection=None if selection is None or plan is None else _plain(plan.record(selection)),
        files=files, timings={k: round(v, 3) for k, v in timings.items()})
    log.info("%s", "\n".join(summary_lines(info)))
    return info


def _write(layout: RunLayout, run: RunVectors, graph: Any, dups: Any, scores: dict[str, np.ndarray],
           selection: Any, cfg: CurateConfig) -> dict[str, str]:
    """Every file of ``curation/`` (atomically), then the ones an earlier curation left and this one did not make
    are removed; returns name -> path relative to the run folder."""
    from . import threshold_histogram

    nbr = graph.neighbour_ids()
    valid = nbr >= 0
    tables: dict[str, pa.Table] = {
        NEIGHBOURS: pa.table({"id": pa.array(run.ids, pa.int64()), "neighbours": _lists(nbr, valid, pa.int64()),
                              "cosines": _lists(graph.cosines.astype(np.float32), valid, pa.float32())}),
        DUPLICATES: pa.table({k: pa.array(v, t) for (k, v), t in zip(
            dups.with_ids(run.ids).items(), (pa.int64(), pa.int64(), pa.string(), pa.float32()))}),
        SCORES: pa.table({k: pa.array(v, pa.int64() if k == "id" else pa.float32()) for k, v in scores.items()}),
    }
    if selection is not None:
        rows = selection.rows
        paths, tokens = run.column("path"), run.column(TOKEN)
        tables[SELECTION] = pa.table({
            "rank": pa.array(np.arange(len(rows)), pa.int64()), "id": pa.array(selection.ids, pa.int64()),
            "path": pa.array(paths[rows] if paths is not None else [None] * len(rows), pa.string()),
            TOKEN: pa.array(tokens[rows] if tokens is not None else [None] * len(rows), pa.string()),
            "coverage_cosine": pa.array(selection.coverage_cosine, pa.float32()),
            "stratum": pa.array(selection.stratum, pa.string())})
    for name, table in tables.items():
        write_table(layout.curation(name), table)
    png = threshold_histogram(dups.info["nn_cosines"], dups.threshold,
                              title=f"{layout.run_dir}: nearest-neighbour distances")
    fsutil.atomic_write_bytes(layout.curation(HISTOGRAM), png)
    made = [*tables, HISTOGRAM]
    if SELECTION not in tables and fsutil.exists(layout.curation(SELECTION)):
        fs, path = fsutil.url_to_fs(layout.curation(SELECTION))
        fs.rm(path)  # an earlier curation's subset: not this one's
    if selection is not None and cfg.export:
        _export(cfg.export, tables[SELECTION])
    return {name: layout.rel(layout.curation(name)) for name in made}


def _export(url: str, selection: pa.Table) -> None:
    """The subset for a labelling tool: one ``sample_data_token`` a line (the path where there is none)."""
    tokens = selection.column(TOKEN).to_pylist()
    paths = selection.column("path").to_pylist()
    lines = [t or p for t, p in zip(tokens, paths)]
    fsutil.atomic_write_bytes(url, ("\n".join(lines) + "\n").encode())
    log.info("exported %d images to %s", len(lines), url)


def summary_lines(c: Curation) -> list[str]:
    """What ``job curate`` prints: images, duplicates by kind, the threshold and why, the subset and its coverage."""
    d = c.duplicates
    lines = [f"images {c.n:,}: {c.n - c.unique:,} repeat another (exact {d.get('exact', 0):,}, "
             f"still {d.get('still', 0):,}, near {d.get('near', 0):,}), {c.unique:,} unique",
             f"near threshold: cosine >= {c.threshold['cosine']:.4f} ({c.threshold['rule']})",
             f"k-NN graph: {c.graph['method']}, k={c.k}, recall@{c.k} {c.graph['recall']:.3f}"
             + (f" on {c.graph['recall_queries']} queries" if c.graph.get("recall_queries") else "")]
    if c.still_metres is None:
        lines.append("standing still: not looked for (the run has no ego pose: not nuScenes)")
    if c.selection:
        lines.extend(subset_lines(c.selection, c.unique))
    return lines


def table_of(layout: RunLayout, name: str) -> pa.Table:
    """A curation table of a run (for the page and the notebook); UsageError when the run was not curated."""
    url = layout.curation(name)
    if not fsutil.exists(url):
        raise UsageError(f"{layout.run_dir} has no {layout.rel(url)}; run: python -m job curate --run "
                         f"{layout.run_dir}" + (" --select N" if name == SELECTION else ""))
    return read_table(url)


def duplicate_roots(ids: np.ndarray, keep_ids: np.ndarray, max_hops: int = 16) -> np.ndarray:
    """For the rows of ``duplicates.parquet`` (``id``, ``keep_id``), each one's group root: its ``keep_id``, followed
    while that image is itself a duplicate (an exact copy's original may be a frame of a standstill, whose first frame
    may be a near duplicate: the steps run in that order). A group is every image with the same root, plus the root."""
    ids, root = np.asarray(ids, np.int64), np.asarray(keep_ids, np.int64).copy()
    if not len(ids):
        return root
    order = np.argsort(ids, kind="stable")
    sorted_ids, sorted_keep = ids[order], root[order]
    for _ in range(max_hops):
        pos = np.clip(np.searchsorted(sorted_ids, root), 0, len(ids) - 1)
        found = sorted_ids[pos] == root
        if not found.any():
            break
        root = np.where(found, sorted_keep[pos], root)
    return root
