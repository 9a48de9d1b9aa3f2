"""Writing ``curation/`` (``RunLayout.curation``): each file atomically, then the files an earlier curation left and
this one did not make are removed. The columns are the ones ``job.curate.results`` reads back."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from .. import fsutil
from ..runfolder import RunLayout, write_table
from .duplicates import Duplicates
from .knn import KnnGraph
from .load import TOKEN, RunVectors
from .plot import threshold_histogram
from .select import Selection

log = logging.getLogger(__name__)


def _lists(values: np.ndarray, valid: np.ndarray, kind: pa.DataType) -> pa.Array:
    """(n, k) values as a list column, each row's valid entries only."""
    counts = valid.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[valid], kind))


def neighbours_table(ids: np.ndarray, graph: KnnGraph) -> pa.Table:
    """``neighbours.parquet``: ``id``, ``neighbours`` (ids, nearest first), ``cosines``."""
    nbr = graph.neighbour_ids()
    valid = nbr >= 0
    return pa.table({"id": pa.array(ids, pa.int64()), "neighbours": _lists(nbr, valid, pa.int64()),
                     "cosines": _lists(graph.cosines.astype(np.float32), valid, pa.float32())})


def duplicates_table(ids: np.ndarray, dups: Duplicates) -> pa.Table:
    """``duplicates.parquet``: one row per image that repeats another, sorted by (keep_id, id)."""
    cols = dups.with_ids(ids)
    types = {"id": pa.int64(), "keep_id": pa.int64(), "kind": pa.string(), "cosine": pa.float32(),
             "repeats_id": pa.int64(), "repeats_cosine": pa.float32()}
    return pa.table({name: pa.array(cols[name], kind) for name, kind in types.items()})


def selection_table(run: RunVectors, selection: Selection) -> pa.Table:
    """``selection.parquet``: ``rank``, ``id``, ``path``, ``sample_data_token``, ``coverage_cosine``, ``stratum``."""
    rows = selection.rows
    paths, tokens = run.column("path"), run.column(TOKEN)
    return pa.table({
        "rank": pa.array(np.arange(len(rows)), pa.int64()), "id": pa.array(selection.ids, pa.int64()),
        "path": pa.array(paths[rows] if paths is not None else [None] * len(rows), pa.string()),
        TOKEN: pa.array(tokens[rows] if tokens is not None else [None] * len(rows), pa.string()),
        "coverage_cosine": pa.array(selection.coverage_cosine, pa.float32()),
        "stratum": pa.array(selection.stratum, pa.string())})


def write_curation(layout: RunLayout, run: RunVectors, graph: KnnGraph, dups: Duplicates,
                   scores: dict[str, np.ndarray], selection: Selection | None, export: str | None) -> dict[str, str]:
    """Every file of ``curation/``; returns file name -> path relative to the run folder."""
    files = layout.curation
    tables: dict[str, pa.Table] = {
        files.neighbours: neighbours_table(run.ids, graph),
        files.duplicates: duplicates_table(run.ids, dups),
        files.scores: pa.table({k: pa.array(v, pa.int64() if k == "id" else pa.float32()) for k, v in scores.items()}),
    }
    if selection is not None:
        tables[files.selection] = selection_table(run, selection)
    for url, table in tables.items():
        write_table(url, table)
    assert dups.threshold is not None
    png = threshold_histogram(dups.info["nn_cosines"], dups.threshold, graph.cosines,
                              title=f"{layout.run_dir}: neighbour distances")
    fsutil.atomic_write_bytes(files.histogram, png)
    if selection is None and fsutil.exists(files.selection):
        fs, path = fsutil.url_to_fs(files.selection)
        fs.rm(path)  # an earlier curation's subset: not this one's
    if selection is not None and export:
        export_subset(export, tables[files.selection])
    return {url.rpartition("/")[2]: layout.rel(url) for url in [*tables, files.histogram]}


def export_subset(url: str, selection: pa.Table) -> None:
    """The subset for a labelling tool: one ``sample_data_token`` a line (the path where there is none)."""
    tokens = selection.column(TOKEN).to_pylist()
    paths = selection.column("path").to_pylist()
    lines = [t or p for t, p in zip(tokens, paths)]
    fsutil.atomic_write_bytes(url, ("\n".join(lines) + "\n").encode())
    log.info("exported %d images to %s", len(lines), url)


