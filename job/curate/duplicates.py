"""Duplicates: exact (equal content hash), near (k-NN graph at a cosine threshold) and still (see ``still``).

Grouping is **greedy keep-first** (FiftyOne Brain's rule), walked in keep order (``order.keep_rank``): the first
image not yet claimed is kept, and claims every unclaimed image whose cosine to *it* is at or above the threshold.
So every near duplicate is within the threshold of the image it directly repeats (``links``) — connected components
would chain distinct images through intermediate ones (A~B, B~C, A far from C) and are not used. The graph's cosines
are exact (every graph method computes or re-scores them from the vectors), so no pair below the threshold is
flagged. Candidates come from the k-NN
graph in both directions (i lists j, or j lists i). A kept image whose k-th neighbour is still within the threshold
may have more duplicates than k: its neighbourhood is searched again, exactly and deeper (``expand``), and the walk
repeated, until no kept image is saturated or ``MAX_EXPAND_K`` is reached.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..index.exact import exact_search
from .knn import KnnGraph
from .threshold import NearThreshold

log = logging.getLogger(__name__)

KINDS = ("exact", "still", "near")  # the order the steps run in (find.find_duplicates)
MAX_EXPAND_K = 1024  # deepest re-search of a saturated kept image
EXPAND_FLOPS = 2e12  # exact re-search per round at most (~1-2 min on 2 CPU cores): 12k rows at 205k x 768, 1.9k at 1.4M


@dataclass
class Duplicates:
    """One line per image that repeats another: its row, the row it directly repeats (``links``: byte-identical for
    ``exact``, within the near threshold for ``near``, the standstill's first frame for ``still``), the kind, and the
    cosine to that row. ``keep_rows`` / ``keep_cosines``: the image kept for the whole group (the root, ``to_roots``)
    and the cosine to it; the direct link until the roots are resolved."""

    rows: np.ndarray  # int64
    links: np.ndarray  # int64
    kinds: np.ndarray  # str (object)
    link_cosines: np.ndarray  # float32
    threshold: NearThreshold | None = None
    info: dict[str, Any] = field(default_factory=dict)
    keep_rows: np.ndarray | None = None
    keep_cosines: np.ndarray | None = None

    @classmethod
    def empty(cls) -> Duplicates:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def mask(self, n: int) -> np.ndarray:
        """Boolean (n,): True for the rows that are duplicates."""
        m = np.zeros(n, bool)
        m[self.rows] = True
        return m

    def counts(self) -> dict[str, int]:
        return {k: int(np.sum(self.kinds == k)) for k in KINDS}

    def roots(self) -> tuple[np.ndarray, np.ndarray]:
        """(kept row, cosine to it) per line: the group's root once resolved, else the direct link."""
        if self.keep_rows is None or self.keep_cosines is None:
            return self.links, self.link_cosines
        return self.keep_rows, self.keep_cosines

    def with_ids(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The ``duplicates.parquet`` columns: ``id``, ``keep_id`` (the group's root), ``kind``, ``cosine`` (to
        ``keep_id``), ``repeats_id`` (the image it directly repeats), ``repeats_cosine``; sorted by (keep_id, id)."""
        keep, keep_cos = self.roots()
        order = np.lexsort((ids[self.rows], ids[keep]))
        return {"id": ids[self.rows][order], "keep_id": ids[keep][order], "kind": self.kinds[order],
                "cosine": keep_cos[order], "repeats_id": ids[self.links][order],
                "repeats_cosine": self.link_cosines[order]}

    @staticmethod
    def concat(parts: list[Duplicates]) -> Duplicates:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Duplicates.empty()
        return Duplicates(np.concatenate([p.rows for p in parts]), np.concatenate([p.links for p in parts]),
                          np.concatenate([p.kinds for p in parts]), np.concatenate([p.link_cosines for p in parts]))


def _cos(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x[a], x[b]).astype(np.float32) if len(a) else np.zeros(0, np.float32)


def exact_duplicates(groups: np.ndarray, rank: np.ndarray, x: np.ndarray | None = None) -> Duplicates:
    """Rows sharing a content-hash group (``order.hash_groups``; -1 = no hash) repeat the group's first in keep
    order. ``x``: vectors, to record each copy's cosine to the kept one (1.0 without them)."""
    valid = np.nonzero(groups >= 0)[0]
    if len(valid) == 0:
        return Duplicates.empty()
    order = valid[np.lexsort((rank[valid], groups[valid]))]
    g = groups[order]
    first = np.r_[True, g[1:] != g[:-1]]
    keep_of = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    dup = ~first
    rows, keeps = order[dup], keep_of[dup]
    cos = _cos(x, rows, keeps) if x is not None else np.ones(len(rows), np.float32)
    return Duplicates(rows, keeps, np.full(len(rows), "exact", object), cos)


def nearest_distinct_cosines(graph: KnnGraph, groups: np.ndarray | None = None) -> np.ndarray:
    """Each row's cosine to its nearest neighbour that is not a byte-identical copy of it (NaN if none in k)."""
    rows, cos = graph.rows, graph.cosines
    ok = rows >= 0
    if groups is not None:
        same = (groups[:, None] >= 0) & (groups[np.clip(rows, 0, None)] == groups[:, None])
        ok &= ~same
    first = np.argmax(ok, axis=1)
    out = cos[np.arange(len(rows)), first].astype(np.float32)
    out[~ok.any(axis=1)] = np.nan
    return out


def _edges(graph: KnnGraph, extra: dict[int, tuple[np.ndarray, np.ndarray]], t: float,
           active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both directions of every graph edge at cosine >= t between active rows, as CSR (indptr, nbr, cos)."""
    n = len(graph.rows)
    src = np.repeat(np.arange(n), graph.k)
    dst = graph.rows.reshape(-1)
    cos = graph.cosines.reshape(-1)
    for r, (nb, c) in extra.items():
        src = np.r_[src, np.full(len(nb), r)]
        dst, cos = np.r_[dst, nb], np.r_[cos, c]
    keep = (dst >= 0) & (cos >= t) & (src != dst)
    src, dst, cos = src[keep], dst[keep], cos[keep]
    keep = active[src] & active[dst]
    src, dst, cos = np.r_[src[keep], dst[keep]], np.r_[dst[keep], src[keep]], np.r_[cos[keep], cos[keep]]
    order = np.lexsort((dst, src))
    src, dst, cos = src[order], dst[order], cos[order]
    uniq = np.r_[True, (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])] if len(src) else np.zeros(0, bool)
    src, dst, cos = src[uniq], dst[uniq], cos[uniq]
    indptr = np.zeros(n + 1, np.int64)
    np.add.at(indptr, src + 1, 1)
    return np.cumsum(indptr), dst, cos.astype(np.float32)


def _walk(indptr: np.ndarray, nbr: np.ndarray, cos: np.ndarray, rank: np.ndarray,
          active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy keep-first in keep order over rows with edges; returns (dup rows, keep rows, cosines, keeps)."""
    has = np.nonzero((np.diff(indptr) > 0) & active)[0]
    claimed = np.zeros(len(rank), bool)
    d_rows: list[np.ndarray] = []
    d_keep: list[np.ndarray] = []
    d_cos: list[np.ndarray] = []
    keeps: list[int] = []
    for r in has[np.argsort(rank[has], kind="stable")]:
        if claimed[r]:
            continue
        keeps.append(int(r))
        nb, c = nbr[indptr[r]:indptr[r + 1]], cos[indptr[r]:indptr[r + 1]]
        free = ~claimed[nb]
        nb, c = nb[free], c[free]
        if len(nb):
            claimed[nb] = True
            claimed[r] = True
            d_rows.append(nb)
            d_keep.append(np.full(len(nb), r, np.int64))
            d_cos.append(c)
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))  # noqa: E731
    return cat(d_rows, np.int64), cat(d_keep, np.int64), cat(d_cos, np.float32), np.array(keeps, np.int64)


def near_duplicates(graph: KnnGraph, x: np.ndarray, threshold: NearThreshold, rank: np.ndarray, *,
                    exclude: np.ndarray | None = None, device: str = "auto") -> Duplicates:
    """Near duplicates among the rows not in ``exclude`` (boolean mask: exact or still duplicates already)."""
    n = len(x)
    t = float(threshold.cosine)
    active = np.ones(n, bool) if exclude is None else ~exclude
    extra: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    expanded_k: dict[int, int] = {}
    saturated_left = 0
    for _round in range(8):
        indptr, nbr, cos = _edges(graph, extra, t, active)
        rows, keeps, cosines, kept = _walk(indptr, nbr, cos, rank, active)
        full = (graph.rows[kept, -1] >= 0) & (graph.cosines[kept, -1] >= t)
        todo = [int(r) for r in kept[full] if expanded_k.get(int(r), graph.k) < MAX_EXPAND_K]
        todo = [r for r in todo if r not in extra or extra[r][1][-1] >= t]
        saturated_left = len(todo)
        if not todo:
            break
        cap = max(100, int(EXPAND_FLOPS // max(1, n * x.shape[1])))
        if len(todo) > cap:
            log.warning("near duplicates: %d saturated kept images, re-searching the first %d (keep order)",
                        len(todo), cap)
            todo = todo[:cap]
        for r in todo:
            expanded_k[r] = min(MAX_EXPAND_K, 4 * expanded_k.get(r, graph.k))
        by_k: dict[int, list[int]] = {}
        for r in todo:
            by_k.setdefault(expanded_k[r], []).append(r)
        for kk, rs in by_k.items():
            found, sims = exact_search(x[rs], x, min(kk + 1, n), device=device)
            for r, f, s in zip(rs, found, sims, strict=True):
                m = (f != r) & (f >= 0)
                extra[r] = (f[m], s[m].astype(np.float32))
        log.info("near duplicates: %d kept images had all %d neighbours within the threshold; searched deeper",
                 len(todo), graph.k)
    if saturated_left:
        log.warning("near duplicates: %d kept images still have more neighbours within the threshold than the "
                    "deepest search (%d); their groups may be split", saturated_left, MAX_EXPAND_K)
    out = Duplicates(rows, keeps, np.full(len(rows), "near", object), cosines, threshold)
    out.info = {"expanded_rows": len(extra), "saturated_left": saturated_left, "extra": extra}
    return out


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


def to_roots(dups: Duplicates, x: np.ndarray) -> None:
    """Resolve each line's kept image for its whole group (``keep_rows``): its direct link, followed while that image
    is itself a duplicate (an exact copy's original may be a frame of a standstill, found first as kinds run exact →
    still → near), with the cosine to it. The direct links stay as they are."""
    roots = duplicate_roots(dups.rows, dups.links)
    moved = roots != dups.links
    cos = dups.link_cosines.copy()
    if moved.any():
        cos[moved] = np.einsum("ij,ij->i", x[dups.rows[moved]], x[roots[moved]])
    dups.keep_rows, dups.keep_cosines = roots, cos
