"""The subset of a curated run (``--select N``) for a labelling loop: the options checked and resolved against the run
before any work (:meth:`SubsetPlan.prepare`), then the selection over the run's unique images (:meth:`SubsetPlan.select`).

* ``--labelled FILE`` (local or ``s3://``): the images labelled already, one ``sample_data_token``, path or id a line
  (blank lines and ``#`` comments skipped; a path also matches by file name when that name is unique in the run), or
  a ``.parquet`` with an ``id``, ``sample_data_token`` or ``path`` column (the first of these it has; an earlier
  ``selection.parquet`` works). They warm-start the selection (``select.select_diverse``): none of them is picked
  again, nor any image of their duplicate groups, nor an image the k-NN graph puts at or above the near threshold
  of one of them, nor one whose cosine to its nearest labelled image is there. Entries that name no image of the
  run are counted and one is shown; a file none of whose entries does is bad input.
* ``--shares`` and ``--balance``: the strata and their targets (``strata``).
* ``--min-gap-s S``: picks (and labelled images) of one scene and camera at least S seconds apart; needs the nuScenes
  columns ``scene_token`` (or ``scene_name``), ``channel`` and ``timestamp`` (microseconds).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import fsutil
from ..config import CurateConfig
from ..errors import UsageError
from ..runfolder import VECTOR_COLUMNS
from .greedy import TimeGaps
from .select import Selection, select_diverse

log = logging.getLogger(__name__)

TOKEN = "sample_data_token"
SUBSET_COLUMNS = ("path", TOKEN, "scene_token", "scene_name", "channel", "timestamp")  # read besides --balance
GAP_COLUMNS = (("scene_token", "scene_name"), ("channel",), ("timestamp",))  # one of each
LABELLED_COLUMNS = ("id", TOKEN, "path")  # a labelled .parquet: the first it has


def _gap_columns(columns: list[str] | dict[str, Any]) -> list[str] | None:
    chosen = [next((c for c in options if c in columns), None) for options in GAP_COLUMNS]
    return None if None in chosen else [str(c) for c in chosen]


def check_subset_options(cfg: CurateConfig, columns: list[str]) -> None:
    """What can be checked before the run's vectors are read (before a run embeds anything, in ``job run``): the
    labelled file exists, ``--min-gap-s`` has its columns."""
    if cfg.labelled is not None and not fsutil.exists(cfg.labelled):
        raise UsageError(f"--labelled {cfg.labelled} does not exist")
    if cfg.min_gap_s is not None and _gap_columns(columns) is None:
        raise UsageError("--min-gap-s needs the columns scene_token (or scene_name), channel and timestamp; the run "
                         f"has {', '.join(c for c in columns if c not in VECTOR_COLUMNS) or 'none'}")


def read_labelled(url: str) -> tuple[str, list[str]]:
    """(what the entries are: ``id``, ``sample_data_token``, ``path`` or ``line``, the entries) of a labelled file."""
    if url.rstrip("/").endswith(".parquet"):
        from ..runfolder import open_dataset

        names = open_dataset(url).schema.names
        column = next((c for c in LABELLED_COLUMNS if c in names), None)
        if column is None:
            raise UsageError(f"--labelled {url} has none of the columns {', '.join(LABELLED_COLUMNS)} (it has "
                             f"{', '.join(names)})")
        values = open_dataset(url).to_table(columns=[column]).column(column).to_pylist()
        return column, [str(v) for v in values if v is not None]
    fs, path = fsutil.url_to_fs(url)
    with fsutil.faults("reading", url):
        raw = fs.cat_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--labelled {url} is not a text file (one token, path or id a line) nor a .parquet") from None
    lines = [ln.strip() for ln in text.splitlines()]
    return "line", [ln for ln in lines if ln and not ln.startswith("#")]


def match_labelled(kind: str, entries: list[str], ids: np.ndarray, meta: dict[str, np.ndarray]) -> np.ndarray:
    """Row per entry (-1 where it names no image of the run): by token, path, id, then unique file name."""
    rows = np.full(len(entries), -1, np.int64)
    lookups: list[dict[str, int]] = []
    if kind in ("line", TOKEN) and TOKEN in meta:
        lookups.append({str(t): i for i, t in enumerate(meta[TOKEN]) if t is not None})
    if kind in ("line", "path") and "path" in meta:
        paths = meta["path"]
        lookups.append({str(p): i for i, p in enumerate(paths) if p is not None})
        names: dict[str, int] = {}
        for i, p in enumerate(paths):
            if p is not None:
                name = str(p).rsplit("/", 1)[-1]
                names[name] = -2 if name in names else i  # -2: the name is not unique
        by_name = {k: v for k, v in names.items() if v >= 0}
    else:
        by_name = {}
    if kind in ("line", "id"):
        order = np.argsort(ids)
        sorted_ids = ids[order]
    for j, e in enumerate(entries):
        for table in lookups:
            if e in table:
                rows[j] = table[e]
                break
        else:
            if kind in ("line", "id") and e.lstrip("-").isdigit():
                pos = int(np.searchsorted(sorted_ids, int(e)))
                if pos < len(ids) and sorted_ids[pos] == int(e):
                    rows[j] = order[pos]
                    continue
            rows[j] = by_name.get(e.rsplit("/", 1)[-1], -1)
    return rows


@dataclass
class SubsetPlan:
    """``--select`` and what shapes it, resolved against one run's rows."""

    cfg: CurateConfig
    labelled: np.ndarray | None = None  # bool per row
    labelled_info: dict[str, Any] = field(default_factory=dict)
    balance: dict[str, np.ndarray] = field(default_factory=dict)
    gap: TimeGaps | None = None

    @classmethod
    def prepare(cls, cfg: CurateConfig, ids: np.ndarray, meta: dict[str, np.ndarray]) -> SubsetPlan:
        """The plan for ``cfg.select`` images among rows ``ids`` with metadata ``meta``; a UsageError for anything
        that cannot work on this run (before the graph is built)."""
        plan = cls(cfg, balance={c: meta[c] for c in cfg.balance})
        if not isinstance(cfg.shares, str):  # a value named that the run does not have: a typo, said before the work
            for column, value, _ in cfg.shares:
                present = {str(v) for v in meta[column] if v is not None}
                if value not in present:
                    raise UsageError(f"--shares {column}={value}: no image of this run has that {column}; valid values: "
                                     f"{', '.join(sorted(present)[:20])}")
        if cfg.labelled is not None:
            kind, entries = read_labelled(cfg.labelled)
            rows = match_labelled(kind, entries, ids, meta) if entries else np.zeros(0, np.int64)
            found = rows[rows >= 0]
            if not len(found):
                shown = f"; e.g. {entries[0]!r}" if entries else ""
                raise UsageError(f"--labelled {cfg.labelled}: none of its {len(entries)} entries names an image of "
                                 f"this run (by sample_data_token, path, id or file name){shown}")
            missed = [e for e, r in zip(entries, rows) if r < 0]
            if missed:
                log.warning("--labelled %s: %d of %d entries name no image of this run (e.g. %r); they are ignored",
                            cfg.labelled, len(missed), len(entries), missed[0])
            plan.labelled = np.zeros(len(ids), bool)
            plan.labelled[found] = True
            plan.labelled_info = {"file": cfg.labelled, "entries": len(entries), "matched": int(plan.labelled.sum()),
                                  "unmatched": len(missed)}
        if cfg.min_gap_s is not None:
            cols = _gap_columns(meta)
            if cols is None:
                raise UsageError("--min-gap-s needs the columns scene_token (or scene_name), channel and timestamp")
            scene, channel, ts = (meta[c] for c in cols)
            keys = np.array([f"{s}\x1f{c}" if s is not None and c is not None else "" for s, c in zip(scene, channel)],
                            object)
            names, group = np.unique(keys, return_inverse=True)
            group = group.reshape(-1).astype(np.int64)
            if len(names) and names[0] == "":
                group = np.where(keys == "", -1, group)
            seconds = np.array([np.nan if t is None else float(t) / 1e6 for t in ts], np.float64)
            plan.gap = TimeGaps(group, seconds, float(cfg.min_gap_s))
        return plan

    def select(self, x: np.ndarray, ids: np.ndarray, dup_rows: np.ndarray, dup_keep: np.ndarray,
               graph_rows: np.ndarray | None, graph_cosines: np.ndarray | None, near: float | None,
               progress: bool = True) -> Selection:
        """Greedy k-center over the unique images (rows not in ``dup_rows``), continuing from the labelled ones.

        ``dup_keep``: the image each duplicate repeats (followed to its group's kept image here); ``graph_*``: the
        k-NN graph (rows, cosines) and ``near`` the near threshold, for the labelled images' duplicates."""
        n = len(ids)
        exclude = np.zeros(n, bool)
        exclude[dup_rows] = True
        avoid = None
        if self.labelled is not None:
            root = np.arange(n)
            root[dup_rows] = dup_keep
            for _ in range(64):  # pointer jumping: each image's group root
                nxt = root[root]
                if np.array_equal(nxt, root):
                    break
                root = nxt
            avoid = np.zeros(n, bool)
            avoid[root[self.labelled]] = True  # the kept image of every labelled image's group
            if graph_rows is not None and graph_cosines is not None and near is not None:
                close = (graph_cosines >= near) & (graph_rows >= 0)
                avoid[graph_rows[self.labelled][close[self.labelled]]] = True  # near a labelled image, by its list
                listed = np.where(close, self.labelled[np.maximum(graph_rows, 0)], False)
                avoid[np.any(listed, axis=1)] = True  # ... or by their own
            avoid &= ~self.labelled
            self.labelled_info["duplicates_avoided"] = int((avoid & ~exclude).sum())
        selection = select_diverse(x, ids, int(self.cfg.select or 0), exclude=exclude, labelled=self.labelled,
                                   avoid=avoid, near=near if self.labelled is not None else None,
                                   balance=self.balance or None, shares=self.cfg.shares, gap=self.gap,
                                   seed=self.cfg.seed, progress=progress)
        if self.labelled is not None:
            self.labelled_info["duplicates_avoided"] += selection.info.get("near_labelled_avoided", 0)
            selection.info["labelled"] = dict(self.labelled_info)
        return selection
