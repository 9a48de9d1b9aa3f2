"""The pick loop of a subset (``select.select_diverse``): the farthest eligible candidate, again and again, with the
strata's quotas and the gaps in time (``--min-gap-s``) deciding what is eligible.

Eligible = a candidate (not labelled, not avoided), not picked, not within ``min_gap_s`` of a pick or a labelled image
of its scene and camera, in a stratum below its quota. When the gaps leave every stratum below quota without an
eligible candidate, the picks missing there go to the strata that still have eligible candidates (by weight); when
none has, the loop ends short.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .cover import CHUNK, FarthestFirst

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimeGaps:
    """``--min-gap-s``: a group per row (scene and camera; -1: none, never blocked) and its time in seconds."""

    group: np.ndarray  # int64
    seconds: np.ndarray  # float64 (NaN: no time, never blocked)
    min_gap_s: float


class Gaps:
    """Pool positions sorted by (group, time): the positions of one group within ``min_gap_s`` of a time."""

    def __init__(self, gap: TimeGaps, pool: np.ndarray) -> None:
        g, t = np.asarray(gap.group, np.int64)[pool], np.asarray(gap.seconds, np.float64)[pool]
        ok = (g >= 0) & np.isfinite(t)
        order = np.nonzero(ok)[0]
        order = order[np.lexsort((t[order], g[order]))]
        self.pos, self.g, self.t = order, g[order], t[order]
        self.group, self.seconds, self.min_gap = g, t, gap.min_gap_s

    def near(self, pos: int) -> np.ndarray:
        """Pool positions of ``pos``'s scene and camera less than ``min_gap_s`` from it (``pos`` included)."""
        g, t = self.group[pos], self.seconds[pos]
        if g < 0 or not np.isfinite(t):
            return np.zeros(0, np.int64)
        lo, hi = np.searchsorted(self.g, g, "left"), np.searchsorted(self.g, g, "right")
        a = lo + np.searchsorted(self.t[lo:hi], t - self.min_gap, "right")
        b = lo + np.searchsorted(self.t[lo:hi], t + self.min_gap, "left")
        return self.pos[a:b]


def groups_of(codes: np.ndarray, m: int) -> list[np.ndarray]:
    """The positions of each code 0..m-1 (one sort, not m scans)."""
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes, minlength=m))[:-1])


def first_pick(x: np.ndarray, pool: np.ndarray, eligible: np.ndarray, cand: np.ndarray) -> int:
    """Without labelled images: the eligible candidate farthest from the candidates' mean direction."""
    rows = pool[np.nonzero(cand)[0]]
    mean = np.zeros(x.shape[1], np.float64)
    for s in range(0, len(rows), CHUNK):
        mean += x[rows[s:s + CHUNK]].sum(axis=0, dtype=np.float64)
    mean32 = (mean / max(1, len(rows))).astype(np.float32)
    options = np.nonzero(eligible)[0]
    best, at = np.inf, -1
    for s in range(0, len(options), CHUNK):
        dots = x[pool[options[s:s + CHUNK]]] @ mean32
        j = int(np.argmin(dots))
        if dots[j] < best:
            best, at = float(dots[j]), int(options[s + j])
    return at


def pick_loop(x: np.ndarray, pool: np.ndarray, cover: FarthestFirst, codes: np.ndarray, quota: np.ndarray,
              cand: np.ndarray, gapped: np.ndarray, gaps: Gaps | None, w: np.ndarray | None, count: int,
              progress: bool) -> tuple[np.ndarray, int]:
    """The picks (pool positions, in order) and the shortfall. ``cover.eligible`` is updated in place; ``quota``
    too, when picks move to other strata."""
    from tqdm import tqdm

    eligible = cover.eligible
    taken = np.zeros(len(quota), np.int64)
    members = groups_of(codes, len(quota))
    picked = np.zeros(len(pool), bool)
    picks: list[int] = []
    p = cover.farthest() if cover.count else first_pick(x, pool, eligible, cand)
    with tqdm(total=count, desc="selecting (greedy k-center)", unit="pick", disable=not progress, leave=False) as bar:
        while len(picks) < count:
            if p < 0:
                if not _reopen(quota, taken, members, eligible, cand & ~gapped & ~picked, w, count - len(picks)):
                    break
                cover.invalidate()
                p = cover.farthest()
                continue
            picks.append(p)
            picked[p] = True
            s = int(codes[p])
            taken[s] += 1
            eligible[p] = False
            if gaps is not None:
                block = gaps.near(p)
                gapped[block] = True
                eligible[block] = False
            if taken[s] >= quota[s]:
                eligible[members[s]] = False
            cover.add(p)
            bar.update(1)
            p = cover.farthest() if len(picks) < count else -1
    shortfall = count - len(picks)
    if shortfall:
        log.warning("selection: %d of %d picks made: no candidate is left %.3g s or more from the picks and labelled "
                    "images of its scene and camera (--min-gap-s)", len(picks), count, gaps.min_gap if gaps else 0.0)
    return np.asarray(picks, np.int64), shortfall


def _reopen(quota: np.ndarray, taken: np.ndarray, members: list[np.ndarray], eligible: np.ndarray,
            free: np.ndarray, w: np.ndarray | None, missing: int) -> bool:
    """The strata below quota have no eligible candidate left: their ``missing`` picks go to the strata with
    ``free`` candidates (by weight; by free candidates without weights). False when no stratum has one."""
    room = np.array([int(np.sum(free[m])) for m in members], np.int64)
    if room.sum() == 0:
        return False
    share = (np.asarray(w, np.float64) if w is not None else room.astype(np.float64)) * (room > 0)
    share = share / share.sum() if share.sum() > 0 else (room > 0) / np.sum(room > 0)
    want = share * min(missing, int(room.sum()))
    add = np.minimum(np.floor(want + 1e-9).astype(np.int64), room)
    while add.sum() < min(missing, int(room.sum())):
        add[int(np.argmax(np.where(add < room, want - add, -np.inf)))] += 1
    for s in np.nonzero(add)[0]:
        quota[s] = taken[s] + add[s]
        eligible[members[s]] = free[members[s]]
    log.info("selection: %d picks that --min-gap-s left no candidate for went to other strata", missing)
    return True
