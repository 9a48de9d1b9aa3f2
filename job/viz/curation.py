"""A run's curation (``job curate``) for the notebook: its tables, the largest duplicate groups, the rarest images,
and how the diverse subset covers each location and camera. Figures are in ``curation_plots``.

Everything is read through ``job.curate.CurationResults`` (the one reader of ``curation/``, which the search page uses
too); a run that was never curated gives ``None`` and the reader's note naming the command that curates it, so the
notebook can skip its curation cells.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..curate import KINDS, CurationResults, no_subset, not_curated
from ..runfolder import Curation
from .gallery import hits_table
from .run import Run

log = logging.getLogger(__name__)

__all__ = ["KINDS", "RunCuration", "coverage", "duplicate_groups", "group_members", "load_curation", "not_curated_note",
           "rarest", "selected_points", "skip_reason", "threshold_png"]


@dataclass
class RunCuration:
    """The curation of a run: its reader and its tables as DataFrames."""

    results: CurationResults
    duplicates: pd.DataFrame  # id, keep_id (the group's kept image: its root), kind, cosine
    scores: pd.DataFrame  # id, uniqueness, nn_cosine, kth_cosine
    selection: pd.DataFrame | None  # rank, id, path, sample_data_token, coverage_cosine; None: no --select

    @property
    def uri(self) -> str:
        return self.results.uri

    @property
    def summary(self) -> Curation | None:
        """The manifest's entry (the threshold and its rule, counts, the graph, timings)."""
        return self.results.summary

    def text(self) -> str:
        """What ``job curate`` printed: images, duplicates by kind, the threshold and why, the subset."""
        return self.results.text()


def not_curated_note(uri: str) -> str:
    """The note a notebook prints in place of the curation cells of a run that was never curated."""
    return not_curated(uri)


def load_curation(run: Run) -> tuple[RunCuration | None, str]:
    """The run's curation and a note to print; ``(None, note)`` when the run has none."""
    results = CurationResults(run.layout, run.manifest.curation, run.uri)
    if not results.available:
        return None, not_curated(run.uri)
    selection = results.table("selection").to_pandas() if results.has_selection else None
    cur = RunCuration(results, results.table("duplicates").to_pandas(), results.table("scores").to_pandas(),
                      selection)
    note = cur.text()
    if selection is None:
        note += "\n" + no_subset(run.uri)
    return cur, note


def threshold_png(run: Run, cur: RunCuration) -> bytes:
    """The near-threshold histogram: the run's ``curation/nn_cosines.png``, or redrawn from the k-NN graph and the
    threshold in the manifest when the PNG is gone."""
    results = cur.results
    if results.layout != run.layout:  # the curation of another copy of the run
        results = CurationResults(run.layout, run.manifest.curation, run.uri)
    return results.histogram_png()


def _meta_columns(run: Run, rows: list[int], table: pd.DataFrame) -> None:
    for col in ("scene_name", "channel", "path"):
        table[col] = run.meta[col].to_numpy()[rows] if col in run.meta else ""


def duplicate_groups(run: Run, cur: RunCuration) -> pd.DataFrame:
    """One row per duplicate group, largest first: ``root`` (the image kept), ``size`` (with it), how many of each
    kind, and the kept image's scene, channel and path."""
    groups = pd.DataFrame(cur.results.groups())
    _meta_columns(run, [run.row(int(r)) for r in groups["root"]], groups)
    return groups[["root", "size", *KINDS, "scene_name", "channel", "path"]].reset_index(drop=True)


def group_members(run: Run, cur: RunCuration, root: int) -> pd.DataFrame:
    """The images of one group: the kept image first (kind ``kept``), then those that repeat it in time order, with
    their kind and cosine to the image they repeat."""
    g = cur.results.group(root)
    members = pd.DataFrame({"id": [g.root, *g.ids.tolist()], "kind": ["kept", *g.kinds.tolist()],
                            "cosine": [1.0, *g.cosines.astype(float).tolist()]})
    rows = [run.row(int(i)) for i in members["id"]]
    members["timestamp"] = run.meta["timestamp"].to_numpy()[rows] if "timestamp" in run.meta else np.arange(len(rows))
    _meta_columns(run, rows, members)
    tail = members.iloc[1:].sort_values(["timestamp", "id"], kind="stable")
    return pd.concat([members.iloc[:1], tail]).reset_index(drop=True)


def rarest(run: Run, cur: RunCuration, k: int = 12) -> pd.DataFrame:
    """The ``k`` images with the highest uniqueness (rarest first), as a hits table whose ``score`` is the
    uniqueness (``gallery_figure(..., score_label="uniqueness")`` shows them)."""
    ids, uniq, _ = cur.results.rarest(k)
    table = hits_table(run, np.array([run.row(int(i)) for i in ids], np.int64), uniq)
    table.attrs["order"] = "uniqueness, descending"
    return table


def coverage(run: Run, cur: RunCuration, column: str) -> pd.DataFrame:
    """How the subset covers the values of ``column`` (e.g. location, channel): per value, the images, the unique
    ones (the candidates the subset is picked from), the picks, and each as a share of its total (per cent)."""
    if cur.selection is None:
        raise ValueError(no_subset(cur.uri))
    values = run.meta[column].astype(str)
    unique = ~cur.results.is_duplicate(run.meta["id"].to_numpy())
    picked = run.meta["id"].isin(cur.selection["id"])
    table = pd.DataFrame({"images": values.value_counts(), "unique": values[unique].value_counts(),
                          "picks": values[picked].value_counts()}).fillna(0).astype(int)
    for col in ("images", "unique", "picks"):
        table[f"{col}_%"] = (100.0 * table[col] / max(int(table[col].sum()), 1)).round(1)
    table = table.sort_values(["images", "picks"], ascending=False, kind="stable")
    table.index.name = column
    return table


def selected_points(df: pd.DataFrame, cur: RunCuration) -> pd.DataFrame:
    """The rows of a map (``projection``'s DataFrame) that are picks of the subset, with their ``rank``."""
    if cur.selection is None:
        return df.iloc[:0].assign(rank=pd.Series(dtype="int64"))
    return df.merge(cur.selection[["id", "rank"]], on="id", how="inner").sort_values("rank")


def skip_reason(cur: RunCuration | None, note: str, *, selection: bool = False) -> str | None:
    """Why a curation cell has nothing to show (``None``: it has): the run is not curated, or (``selection``) its
    curation picked no subset."""
    if cur is None:
        return f"skipped: {note}"
    if selection and cur.selection is None:
        return f"skipped: {no_subset(cur.uri)}"
    return None
