"""What the search page shows of a run's curation (``job curate``): a hit's duplicate group, the images by rarity,
and the diverse subset, read from ``curation/`` through the run folder (``job.curate.run.table_of``).

A run that was never curated keeps working: ``CurationView.available`` is False and ``hint`` is the command that
curates it; the routes that need the curation answer 404 with that command.

Groups: ``duplicates.parquet`` has one row per image that repeats another, with the image kept for its whole group
(``keep_id``, the group's **root**, which repeats nothing: the curation step follows the chains when it writes the
file, ``job.curate.run.duplicate_roots``). A group is the root and every row with that ``keep_id``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import fsutil
from ..curate.run import DUPLICATES, SCORES, SELECTION, table_of
from ..errors import NotFound
from ..runfolder import Curation, RunLayout

log = logging.getLogger(__name__)


@dataclass
class Group:
    """One duplicate group: its root (the image kept), and every image that repeats it, in id order."""

    root: int
    ids: np.ndarray  # int64, members other than the root
    keep_ids: np.ndarray  # the image each member is kept in favour of: the root
    kinds: np.ndarray  # exact | still | near
    cosines: np.ndarray  # each member's cosine to its keep_id

    @property
    def size(self) -> int:
        return 1 + len(self.ids)


def _sorted_lookup(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``wanted`` in sorted ``keys`` and whether each is there."""
    if not len(keys):
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    pos = np.clip(np.searchsorted(keys, wanted), 0, len(keys) - 1)
    return pos, keys[pos] == wanted


def kind_counts(kinds: np.ndarray) -> dict[str, int]:
    """How many duplicates of each kind (exact, still, near) among ``kinds``, those present only."""
    if not len(kinds):
        return {}
    values, counts = np.unique(np.asarray(kinds).astype(str), return_counts=True)
    return {str(k): int(n) for k, n in zip(values.tolist(), counts.tolist())}


class CurationView:
    """The curation tables of one run, in memory (a few arrays: ~40 bytes per image), read-only."""

    def __init__(self, layout: RunLayout, summary: Curation | None, run: str) -> None:
        self.summary = summary
        self._info: dict[str, Any] | None = None
        self.hint = f"python -m job curate --run {run} --select N"
        self.available = fsutil.exists(layout.curation(DUPLICATES)) and fsutil.exists(layout.curation(SCORES))
        self.has_selection = self.available and fsutil.exists(layout.curation(SELECTION))
        if not self.available:
            log.info("%s is not curated (%s)", run, self.hint)
            return
        d = table_of(layout, DUPLICATES)
        order = np.argsort(d.column("id").to_numpy(), kind="stable")
        self.dup_ids = d.column("id").to_numpy()[order].astype(np.int64)
        self.dup_keep = d.column("keep_id").to_numpy()[order].astype(np.int64)
        kinds = d.column("kind").combine_chunks().dictionary_encode()  # 3 strings shared by every row
        self.dup_kind = np.asarray(kinds.dictionary.to_pylist() or [""], object)[
            kinds.indices.to_numpy(zero_copy_only=False).astype(np.int64)][order]
        self.dup_cos = d.column("cosine").to_numpy()[order].astype(np.float32)
        self.dup_root = self.dup_keep  # keep_id is the group's root (written so by the curation step)
        by_root = np.lexsort((self.dup_ids, self.dup_root))
        self._members = by_root  # dup rows grouped by root, ids ascending inside a group
        self._member_roots = self.dup_root[by_root]
        roots, counts = np.unique(self.dup_root, return_counts=True)
        self._roots_sorted, self._root_counts = roots, counts
        s = table_of(layout, SCORES)
        ids = s.column("id").to_numpy().astype(np.int64)
        uniq = s.column("uniqueness").to_numpy().astype(np.float32)
        at = np.argsort(ids, kind="stable")
        self.score_ids, self.uniqueness = ids[at], uniq[at]
        self.rare_order = np.lexsort((self.score_ids, -self.uniqueness))  # rarest first, ties by id
        self.sel_ids = np.zeros(0, np.int64)
        self.sel_rank = np.zeros(0, np.int64)
        self.sel_cos = np.zeros(0, np.float32)
        if self.has_selection:
            sel = table_of(layout, SELECTION)
            self.sel_ids = sel.column("id").to_numpy().astype(np.int64)
            self.sel_rank = sel.column("rank").to_numpy().astype(np.int64)
            self.sel_cos = sel.column("coverage_cosine").to_numpy().astype(np.float32)
        self._sel_sorted = np.argsort(self.sel_ids, kind="stable")
        log.info("curation: %d duplicates in %d groups, %d scores, %d picks", len(self.dup_ids), len(roots),
                 len(self.score_ids), len(self.sel_ids))

    # ------------------------------------------------------------------------------------------ queries
    def require(self, what: str = "curation") -> None:
        """NotFound (a 404 naming the command) when the run has no curation, or no subset for ``selection``."""
        if not self.available:
            raise NotFound(f"this run is not curated; curate it with: {self.hint}")
        if what == "selection" and not self.has_selection:
            raise NotFound(f"this run's curation has no subset; pick one with: {self.hint}")

    def group(self, id_: int) -> Group:
        """The duplicate group ``id_`` belongs to (a group of one when it repeats nothing and nothing repeats it)."""
        self.require()
        pos, found = _sorted_lookup(self.dup_ids, np.array([id_], np.int64))
        root = int(self.dup_root[pos[0]]) if found[0] else int(id_)
        lo = int(np.searchsorted(self._member_roots, root, side="left"))
        hi = int(np.searchsorted(self._member_roots, root, side="right"))
        rows = self._members[lo:hi]
        return Group(root, self.dup_ids[rows], self.dup_keep[rows], self.dup_kind[rows], self.dup_cos[rows])

    def badges(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """Per id: its group's size, its kind (``None``: it repeats nothing), the image it repeats, its
        uniqueness and its rank in the subset (``None``: not picked)."""
        ids = np.asarray(ids, np.int64)
        dpos, is_dup = _sorted_lookup(self.dup_ids, ids)
        roots = np.where(is_dup, self.dup_root[dpos] if len(self.dup_ids) else ids, ids)
        rpos, has_group = _sorted_lookup(self._roots_sorted, roots)
        sizes = np.where(has_group, self._root_counts[rpos] + 1 if len(self._roots_sorted) else 1, 1)
        spos, scored = _sorted_lookup(self.score_ids, ids)
        ppos, picked = _sorted_lookup(self.sel_ids[self._sel_sorted], ids)
        out = []
        for i in range(len(ids)):
            out.append({
                "group": int(sizes[i]), "kind": str(self.dup_kind[dpos[i]]) if is_dup[i] else None,
                "keep_id": str(int(self.dup_keep[dpos[i]])) if is_dup[i] else None,
                "uniqueness": round(float(self.uniqueness[spos[i]]), 4) if scored[i] else None,
                "pick": int(self.sel_rank[self._sel_sorted[ppos[i]]]) if picked[i] else None})
        return out

    def rarest(self, k: int, offset: int = 0, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids, uniqueness, how many there are) of the images ranked ``offset … offset + k`` by descending
        uniqueness, among the sorted ids ``among`` (a filter's matches; None: all)."""
        self.require()
        order = self.rare_order
        if among is not None:
            _, inside = _sorted_lookup(np.asarray(among, np.int64), self.score_ids[order])
            order = order[inside]
        page = order[offset:offset + k]
        return self.score_ids[page], self.uniqueness[page], int(len(order))

    def info(self) -> dict[str, Any] | None:
        """The summary the page shows (counts by kind, the threshold and its rule, the subset); None: not curated."""
        if not self.available:
            return None
        if self._info is not None:
            return self._info
        c = self.summary
        groups = int(len(self._roots_sorted))
        out: dict[str, Any] = {"duplicates": int(len(self.dup_ids)), "groups": groups,
                               "scored": int(len(self.score_ids)), "selection": int(len(self.sel_ids))}
        out["by_kind"] = kind_counts(self.dup_kind)
        if c is not None:
            out.update(unique=c.unique, threshold=c.threshold.get("cosine"), rule=c.threshold.get("rule"),
                       still_metres=c.still_metres, method=c.graph.get("method"), k=c.k)
            if c.selection:
                out.update(radius_cosine=c.selection.get("radius_cosine"), balance=c.selection.get("balance") or [])
        self._info = out
        return out
