"""A run's curation (``job curate``) for the notebook: its tables, the largest duplicate groups, the rarest images,
and how the diverse subset covers each location and camera. Figures are in ``curation_plots``.

Everything is read from ``curation/`` through the run folder (``job.curate.run.table_of``); a run that was never
curated gives ``None`` and a note naming the command that curates it, so the notebook can skip its curation cells.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import fsutil
from ..curate.run import DUPLICATES, HISTOGRAM, NEIGHBOURS, SCORES, SELECTION, summary_lines, table_of
from ..runfolder import Curation
from .gallery import hits_table
from .run import Run

log = logging.getLogger(__name__)

KINDS = ("exact", "still", "near")


@dataclass
class RunCuration:
    """The curation tables of a run, as DataFrames."""

    uri: str
    summary: Curation | None  # the manifest's entry (threshold and rule, counts, timings)
    duplicates: pd.DataFrame  # id, keep_id, kind, cosine, root (the group's kept image)
    scores: pd.DataFrame  # id, uniqueness, nn_cosine, kth_cosine
    selection: pd.DataFrame | None  # rank, id, path, sample_data_token, coverage_cosine; None: no --select

    def text(self) -> str:
        """What ``job curate`` printed: images, duplicates by kind, the threshold and why, the subset."""
        if self.summary is not None:
            return "\n".join(summary_lines(self.summary))
        kinds = self.duplicates["kind"].value_counts()
        return (f"{len(self.scores):,} images: {len(self.duplicates):,} repeat another ("
                + ", ".join(f"{k} {int(kinds.get(k, 0)):,}" for k in KINDS) + ")")


def not_curated_note(uri: str) -> str:
    """The note a notebook prints in place of the curation cells of a run that was never curated."""
    return (f"{uri} is not curated, so the curation cells are skipped. Curate it (duplicates, rarity, a diverse "
            f"subset) with: python -m job curate --run {uri} --select N")


def load_curation(run: Run) -> tuple[RunCuration | None, str]:
    """The run's curation and a note to print; ``(None, note)`` when the run has none."""
    layout = run.layout
    if not (fsutil.exists(layout.curation(DUPLICATES)) and fsutil.exists(layout.curation(SCORES))):
        return None, not_curated_note(run.uri)
    dups = table_of(layout, DUPLICATES).to_pandas()
    dups["root"] = dups["keep_id"]  # the group's kept image: the curation step writes keep_id as the root
    selection = table_of(layout, SELECTION).to_pandas() if fsutil.exists(layout.curation(SELECTION)) else None
    cur = RunCuration(run.uri, run.manifest.curation, dups, table_of(layout, SCORES).to_pandas(), selection)
    note = cur.text()
    if selection is None:
        note += f"\nno subset was picked: python -m job curate --run {run.uri} --select N picks one"
    return cur, note


def threshold_png(run: Run, cur: RunCuration) -> bytes:
    """The near-threshold histogram: the run's ``curation/nn_cosines.png``, or redrawn (``job.curate``'s
    ``threshold_histogram``) from ``neighbours.parquet`` and the threshold in the manifest when the PNG is gone."""
    url = run.layout.curation(HISTOGRAM)
    if fsutil.exists(url):
        fs, path = fsutil.url_to_fs(url)
        return bytes(fs.cat_file(path))
    from ..curate import NearThreshold, threshold_histogram

    nbr = table_of(run.layout, NEIGHBOURS)
    first = [c[0] if c else np.nan for c in nbr.column("cosines").to_pylist()]
    t: dict[str, Any] = dict(cur.summary.threshold) if cur.summary is not None else {}
    threshold = NearThreshold(float(t.get("cosine", 1.0)), str(t.get("rule", "unknown")), str(t.get("source", "")))
    log.info("%s is missing: redrawn from %s", url, NEIGHBOURS)
    return threshold_histogram(np.asarray(first, np.float64), threshold, title=f"{run.uri}: nearest-neighbour distances")


def duplicate_groups(run: Run, cur: RunCuration) -> pd.DataFrame:
    """One row per duplicate group, largest first: ``root`` (the image kept), ``size`` (with it), how many of each
    kind, and the kept image's scene, channel and path."""
    d = cur.duplicates
    if d.empty:
        return pd.DataFrame(columns=["root", "size", *KINDS, "scene_name", "channel", "path"])
    counts = pd.crosstab(d["root"], d["kind"]).reindex(columns=list(KINDS), fill_value=0)
    groups = counts.assign(size=counts.sum(axis=1) + 1).reset_index()
    rows = [run.row(int(r)) for r in groups["root"]]
    for col in ("scene_name", "channel", "path"):
        groups[col] = run.meta[col].to_numpy()[rows] if col in run.meta else ""
    groups = groups.sort_values(["size", "root"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return groups[["root", "size", *KINDS, "scene_name", "channel", "path"]]


def group_members(run: Run, cur: RunCuration, root: int) -> pd.DataFrame:
    """The images of one group: the kept image first (kind ``kept``), then those that repeat it in time order, with
    their kind and cosine to the image they repeat."""
    d = cur.duplicates[cur.duplicates["root"] == root]
    members = pd.DataFrame({"id": [root, *d["id"].tolist()], "kind": ["kept", *d["kind"].tolist()],
                            "cosine": [1.0, *d["cosine"].astype(float).tolist()]})
    rows = [run.row(int(i)) for i in members["id"]]
    members["timestamp"] = run.meta["timestamp"].to_numpy()[rows] if "timestamp" in run.meta else np.arange(len(rows))
    for col in ("scene_name", "channel", "path"):
        members[col] = run.meta[col].to_numpy()[rows] if col in run.meta else ""
    tail = members.iloc[1:].sort_values(["timestamp", "id"], kind="stable")
    return pd.concat([members.iloc[:1], tail]).reset_index(drop=True)


def rarest(run: Run, cur: RunCuration, k: int = 12) -> pd.DataFrame:
    """The ``k`` images with the highest uniqueness (rarest first), as a hits table whose ``score`` is the
    uniqueness (``gallery_figure(..., score_label="uniqueness")`` shows them)."""
    s = cur.scores.sort_values(["uniqueness", "id"], ascending=[False, True], kind="stable").head(k)
    table = hits_table(run, np.array([run.row(int(i)) for i in s["id"]], np.int64), s["uniqueness"].to_numpy())
    table.attrs["order"] = "uniqueness, descending"
    return table


def coverage(run: Run, cur: RunCuration, column: str) -> pd.DataFrame:
    """How the subset covers the values of ``column`` (e.g. location, channel): per value, the images, the unique
    ones (the candidates the subset is picked from), the picks, and each as a share of its total (per cent)."""
    if cur.selection is None:
        raise ValueError(f"{cur.uri} has no subset (job curate --select N)")
    values = run.meta[column].astype(str)
    unique = ~run.meta["id"].isin(cur.duplicates["id"])
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
        return (f"skipped: the curation of {cur.uri} picked no subset; pick one with: python -m job curate --run "
                f"{cur.uri} --select N")
    return None
