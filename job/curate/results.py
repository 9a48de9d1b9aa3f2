"""A curation read back: the one reader of ``curation/`` (fiftyone-brain's *Results* pattern: the writer's twin).

The search page (``job.serve``), the notebook's helpers (``job.viz``) and evaluation read a run's curation through
:class:`CurationResults`, so the kinds, the groups and the words for "this run is not curated" exist once.

Groups: ``duplicates.parquet`` has one row per image that repeats another, with the image kept for its whole group
(``keep_id``, the group's **root**, which repeats nothing: the curation step follows the chains when it writes the
file, ``duplicates.duplicate_roots``) and the image it directly repeats (``repeats_id``, with the cosine to it; files
written before it was stored read ``keep_id`` there). A group is the root and every row with that ``keep_id``.

A run that was never curated keeps working: ``available`` is False and :func:`not_curated` names the command that
curates it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .. import fsutil
from ..errors import NotFound
from ..runfolder import Curation, RunLayout, read_table
from .duplicates import KINDS

log = logging.getLogger(__name__)


def curate_command(uri: str) -> str:
    """The command that curates a run and picks a subset."""
    return f"python -m job curate --run {uri} --select N"


def not_curated(uri: str) -> str:
    """What a reader says of a run that was never curated."""
    return (f"{uri} is not curated (no duplicates, rarity or subset to show); curate it with: "
            f"{curate_command(uri)}")


def no_subset(uri: str) -> str:
    """What a reader says of a curation that picked no subset."""
    return f"the curation of {uri} picked no subset; pick one with: {curate_command(uri)}"


@dataclass
class Group:
    """One duplicate group: its root (the image kept), and every image that repeats it, in id order."""

    root: int
    ids: np.ndarray  # int64, members other than the root
    keep_ids: np.ndarray  # the image each member is kept in favour of: the root
    kinds: np.ndarray  # exact | still | near
    cosines: np.ndarray  # each member's cosine to its keep_id
    repeats_ids: np.ndarray  # the image each member directly repeats (a byte-identical copy's original, …)
    repeats_cosines: np.ndarray  # and the cosine to it

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
    """How many duplicates of each kind among ``kinds``, those present only, in ``KINDS`` order."""
    found: dict[str, int] = {}
    if len(kinds):
        values, counts = np.unique(np.asarray(kinds).astype(str), return_counts=True)
        found = {str(k): int(n) for k, n in zip(values.tolist(), counts.tolist())}
    return {k: found[k] for k in (*KINDS, *sorted(set(found) - set(KINDS))) if k in found}


class CurationResults:
    """The curation of one run output, in memory (a few arrays: ~40 bytes per image), read-only.

    ``summary`` is the manifest's entry (the threshold and its rule, counts, the graph, timings; None for bare
    embeddings). Duplicates are held sorted by id, scores sorted by id, the subset in pick order."""

    def __init__(self, layout: RunLayout, summary: Curation | None, uri: str) -> None:
        self.layout = layout
        self.uri = uri
        self.summary = summary
        files = layout.curation
        self.available = fsutil.exists(files.duplicates) and fsutil.exists(files.scores)
        self.has_selection = self.available and fsutil.exists(files.selection)
        self._info: dict[str, Any] | None = None
        self.dup_ids = self.keep_ids = self.score_ids = self.sel_ids = self.sel_rank = np.zeros(0, np.int64)
        self.kinds = np.zeros(0, object)
        self.cosines = self.uniqueness = self.sel_cos = np.zeros(0, np.float32)
        self.repeats_ids, self.repeats_cosines = self.dup_ids, self.cosines
        self.rare_order = self._members = self._member_roots = self._roots = self._root_counts = self.dup_ids
        if not self.available:
            log.info("%s", not_curated(uri))
            return
        self._read_duplicates(read_table(files.duplicates))
        s = read_table(files.scores)
        ids = s.column("id").to_numpy().astype(np.int64)
        at = np.argsort(ids, kind="stable")
        self.score_ids = ids[at]
        self.uniqueness = s.column("uniqueness").to_numpy().astype(np.float32)[at]
        self.rare_order = np.lexsort((self.score_ids, -self.uniqueness))  # rarest first, ties by id
        if self.has_selection:
            sel = read_table(files.selection)
            self.sel_ids = sel.column("id").to_numpy().astype(np.int64)
            self.sel_rank = sel.column("rank").to_numpy().astype(np.int64)
            self.sel_cos = sel.column("coverage_cosine").to_numpy().astype(np.float32)
        self._sel_sorted = np.argsort(self.sel_ids, kind="stable")
        log.info("curation: %d duplicates in %d groups, %d scores, %d picks", len(self.dup_ids), len(self._roots),
                 len(self.score_ids), len(self.sel_ids))

    @classmethod
    def open(cls, uri: str) -> CurationResults:
        """The curation of the run output ``uri`` (local or ``s3://``)."""
        from ..runfolder import open_run

        ref = open_run(uri)
        return cls(ref.layout, ref.manifest.curation if ref.manifest is not None else None, uri)

    def _read_duplicates(self, d: pa.Table) -> None:
        order = np.argsort(d.column("id").to_numpy(), kind="stable")
        self.dup_ids = d.column("id").to_numpy()[order].astype(np.int64)
        self.keep_ids = d.column("keep_id").to_numpy()[order].astype(np.int64)
        kinds = d.column("kind").combine_chunks().dictionary_encode()  # a few strings shared by every row
        self.kinds = np.asarray(kinds.dictionary.to_pylist() or [""], object)[
            kinds.indices.to_numpy(zero_copy_only=False).astype(np.int64)][order]
        self.cosines = d.column("cosine").to_numpy()[order].astype(np.float32)
        if "repeats_id" in d.column_names:
            self.repeats_ids = d.column("repeats_id").to_numpy()[order].astype(np.int64)
            self.repeats_cosines = d.column("repeats_cosine").to_numpy()[order].astype(np.float32)
        else:  # written before the direct link was stored: keep_id is all there is
            self.repeats_ids, self.repeats_cosines = self.keep_ids, self.cosines
        by_root = np.lexsort((self.dup_ids, self.keep_ids))
        self._members = by_root  # rows grouped by root, ids ascending inside a group
        self._member_roots = self.keep_ids[by_root]
        self._roots, self._root_counts = np.unique(self.keep_ids, return_counts=True)

    # ------------------------------------------------------------------------------------------ checks
    def require(self, what: str = "curation") -> None:
        """NotFound (a 404 naming the command) when the run has no curation, or no subset for ``selection``."""
        if not self.available:
            raise NotFound(not_curated(self.uri))
        if what == "selection" and not self.has_selection:
            raise NotFound(no_subset(self.uri))

    # ------------------------------------------------------------------------------------------ groups
    def group(self, id_: int) -> Group:
        """The duplicate group ``id_`` belongs to (a group of one when it repeats nothing and nothing repeats it)."""
        self.require()
        pos, found = _sorted_lookup(self.dup_ids, np.array([id_], np.int64))
        root = int(self.keep_ids[pos[0]]) if found[0] else int(id_)
        lo = int(np.searchsorted(self._member_roots, root, side="left"))
        hi = int(np.searchsorted(self._member_roots, root, side="right"))
        rows = self._members[lo:hi]
        return Group(root, self.dup_ids[rows], self.keep_ids[rows], self.kinds[rows], self.cosines[rows],
                     self.repeats_ids[rows], self.repeats_cosines[rows])

    def groups(self) -> dict[str, np.ndarray]:
        """Every group of two or more, largest first (then by root): ``root``, ``size`` (the root included) and
        how many of its members are of each kind (one array per kind of ``KINDS``)."""
        self.require()
        roots, inverse = np.unique(self.keep_ids, return_inverse=True)
        out: dict[str, np.ndarray] = {"root": roots, "size": np.bincount(inverse, minlength=len(roots)) + 1}
        for kind in KINDS:
            out[kind] = np.bincount(inverse, weights=self.kinds == kind, minlength=len(roots)).astype(np.int64)
        order = np.lexsort((roots, -out["size"]))
        return {k: v[order] for k, v in out.items()}

    def is_duplicate(self, ids: np.ndarray) -> np.ndarray:
        """True for the ids that repeat another image."""
        return _sorted_lookup(self.dup_ids, np.asarray(ids, np.int64))[1]

    # ------------------------------------------------------------------------------------------ rarity, subset
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

    def badges(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """Per id: its group's size, its kind (``None``: it repeats nothing), the image it repeats, its
        uniqueness and its rank in the subset (``None``: not picked)."""
        ids = np.asarray(ids, np.int64)
        dpos, is_dup = _sorted_lookup(self.dup_ids, ids)
        roots = np.where(is_dup, self.keep_ids[dpos] if len(self.dup_ids) else ids, ids)
        rpos, has_group = _sorted_lookup(self._roots, roots)
        sizes = np.where(has_group, self._root_counts[rpos] + 1 if len(self._roots) else 1, 1)
        spos, scored = _sorted_lookup(self.score_ids, ids)
        ppos, picked = _sorted_lookup(self.sel_ids[self._sel_sorted], ids)
        return [{"group": int(sizes[i]), "kind": str(self.kinds[dpos[i]]) if is_dup[i] else None,
                 "keep_id": str(int(self.keep_ids[dpos[i]])) if is_dup[i] else None,
                 "uniqueness": round(float(self.uniqueness[spos[i]]), 4) if scored[i] else None,
                 "pick": int(self.sel_rank[self._sel_sorted[ppos[i]]]) if picked[i] else None}
                for i in range(len(ids))]

    # ------------------------------------------------------------------------------------------ tables, figure
    def table(self, name: str) -> pa.Table:
        """One table of the curation as stored (``neighbours``, ``duplicates``, ``scores``, ``selection``)."""
        self.require("selection" if name == "selection" else "curation")
        return read_table(self.layout.curation.tables()[name])

    def histogram_png(self) -> bytes:
        """The near-threshold histogram: the run's ``nn_cosines.png``, or redrawn from ``neighbours.parquet`` and
        the threshold in the manifest when the PNG is gone."""
        self.require()
        url = self.layout.curation.histogram
        if fsutil.exists(url):
            fs, path = fsutil.url_to_fs(url)
            return bytes(fs.cat_file(path))
        from .plot import threshold_histogram
        from .threshold import NearThreshold

        lists = self.table("neighbours").column("cosines").to_pylist()
        first = [c[0] if c else np.nan for c in lists]
        every = np.asarray([v for c in lists for v in c], np.float64)
        t = self.summary.threshold if self.summary is not None else None
        threshold = NearThreshold(t.cosine, t.rule, t.source) if t is not None else NearThreshold(1.0, "unknown", "")
        log.info("%s is missing: redrawn from the k-NN graph", url)
        return threshold_histogram(np.asarray(first, np.float64), threshold, every,
                                   title=f"{self.uri}: neighbour distances")

    # ------------------------------------------------------------------------------------------ summaries
    def text(self) -> str:
        """What ``job curate`` printed (from the manifest's entry; counted from the tables without one)."""
        self.require()
        if self.summary is not None:
            from .record import summary_lines

            return "\n".join(summary_lines(self.summary))
        counts = kind_counts(self.kinds)
        return (f"{len(self.score_ids):,} images: {len(self.dup_ids):,} repeat another ("
                + ", ".join(f"{k} {counts.get(k, 0):,}" for k in KINDS) + ")")

    def info(self) -> dict[str, Any] | None:
        """The summary the page shows (counts by kind, the threshold and its rule, the subset); None: not curated."""
        if not self.available:
            return None
        if self._info is not None:
            return self._info
        c = self.summary
        out: dict[str, Any] = {"duplicates": int(len(self.dup_ids)), "groups": int(len(self._roots)),
                               "scored": int(len(self.score_ids)), "selection": int(len(self.sel_ids)),
                               "by_kind": kind_counts(self.kinds)}
        if c is not None:
            out.update(unique=c.unique, threshold=c.threshold.cosine, rule=c.threshold.rule,
                       still_metres=c.still_metres, method=c.graph.method, k=c.k)
            if c.selection is not None:
                s = c.selection
                out.update(radius_cosine=s.radius_cosine, balance=list(s.balance), shares=s.shares,
                           labelled=s.labelled.matched if s.labelled else 0,
                           strata=[st.to_dict() for st in s.strata])  # coverage per stratum
        self._info = out
        return out
