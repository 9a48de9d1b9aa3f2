"""The near-duplicate threshold: given (a cosine in (0, 1]) or ``auto``, read off the run's own k-NN graph.

``auto`` looks at every edge of the graph (each image's k nearest neighbours, byte-identical copies left out) on a
log scale, ``z = log10(1 - cos)``. Distinct images sit in one bulk; copies — re-encodes, resizes, frames of a car
that stands still — sit orders of magnitude closer, or at least closer than the bulk reaches. The rule models only
what it can trust, the bulk's **left flank**:

* the bulk is located from each image's *farthest* graph edge (its k-th neighbour is a distinct image unless the
  image has k copies or more), and its peak is the densest point near there;
* the flank's width ``sigma`` is read where the density falls to ``e^-2`` of the peak on the left (two standard
  deviations of a Gaussian; the half-width at ``e^-1/2`` is taken if wider);
* the bulk's **reach** is ``REACH_SIGMAS`` (4.75) flank widths below its peak: where a Gaussian flank puts one edge in
  a million;
* the edges below the reach must form a **mode apart** from the bulk (``_valley``): a bulk whose left tail merely
  thins out (heavier than a Gaussian) has none, and then only identical vectors are flagged;
* the threshold is cut in the empty gap between that mode and the reach (its middle), or at the reach when no bin
  between them is empty.

Nothing else is fitted, so the cases that pulled a two-Gaussian fit apart do not move it: a tail of rare images or of
rows whose neighbours an approximate search lost lies on the right; a second tight cluster (near-blank frames) is a
bump on the left that is flagged with the copies; a run where every image has a copy still has a bulk of edges (an
image's other k - 1 neighbours). Pairs at ``1 - cos < MIN_DISTANCE`` (1e-6: identical vectors) are duplicates
whatever the data. Without a mode the rule says how many edges lie beyond the reach and what cosine would flag them —
never a bare zero. Below ``MIN_ROWS`` images there is no distribution to read: only identical vectors are flagged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..values import parse_near_threshold

MIN_DISTANCE = 1e-6  # 1 - cos below this is the same vector (float32 cosines of identical vectors land within 1e-7)
MIN_ROWS = 50  # fewer images than this are no distribution to read
BIN = 0.01  # decades per histogram bin
SMOOTH = 3.0  # bins: the Gaussian kernel smoothing the histogram
REACH_SIGMAS = 4.75  # the bulk's reach: this many flank widths below its peak (a Gaussian's one in a million)
MIN_SIGMA = 0.01  # decades: a flank narrower than the histogram's resolution is read as this
BULK_WINDOW = (-1.0, 0.5)  # decades around the median farthest edge where the bulk's peak is looked for
VALLEY = 0.5  # a left mode: the density between it and the bulk falls below this share of the mode's own peak
EMPTY = 0.01  # edges per bin (smoothed) below which a bin is empty: a gap between copies and the bulk


@dataclass(frozen=True)
class BulkFlank:
    """The bulk of the graph's edge distances, as the rule read it (decades of ``1 - cos``)."""

    peak: float  # log10(1 - cos) at the bulk's densest point
    sigma: float  # width of its left flank
    height: float  # edges per decade at the peak
    edges: int  # edges read


@dataclass(frozen=True)
class NearThreshold:
    """A near-duplicate threshold: pairs with cosine >= ``cosine`` are near duplicates."""

    cosine: float
    rule: str  # one line a person can check
    source: str  # "auto" | "given"
    found_mode: bool = False
    flank: BulkFlank | None = None
    rows_below: int = 0  # images with a neighbour at or above the threshold (auto)
    edges_below: int = 0
    identical_pairs: int = 0  # graph edges at 1 - cos < MIN_DISTANCE


def log_distance(cosines: np.ndarray) -> np.ndarray:
    """``log10(1 - cos)`` of the finite cosines, clipped to [log10(1e-7), log10(2)]."""
    c = np.asarray(cosines, np.float64)
    c = c[np.isfinite(c)]
    return np.log10(np.clip(1.0 - c, 1e-7, 2.0))


def _smoothed(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres and the smoothed histogram of ``z`` (edges per decade)."""
    lo, hi = float(z.min()) - 5 * SMOOTH * BIN, float(z.max()) + 5 * SMOOTH * BIN
    edges = np.arange(lo, hi + BIN, BIN)
    counts, _ = np.histogram(z, bins=edges)
    half = int(4 * SMOOTH)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / SMOOTH) ** 2)
    density = np.convolve(counts, kernel / kernel.sum(), mode="same") / BIN
    return 0.5 * (edges[1:] + edges[:-1]), density


def bulk_flank(z: np.ndarray, farthest: np.ndarray) -> BulkFlank:
    """The bulk's peak and left-flank width from the edges' log distances ``z`` and each row's farthest edge."""
    centres, f = _smoothed(z)
    m = float(np.median(farthest))
    window = (centres >= m + BULK_WINDOW[0]) & (centres <= m + BULK_WINDOW[1])
    at = int(np.argmax(np.where(window, f, -1.0)))
    peak, height = float(centres[at]), float(f[at])

    def fall(level: float) -> float:
        left = np.nonzero(f[: at + 1] < level * height)[0]
        return float(centres[left[-1]]) if len(left) else float(centres[0])

    sigma = max(MIN_SIGMA, peak - fall(math.exp(-0.5)), 0.5 * (peak - fall(math.exp(-2.0))))
    return BulkFlank(peak, sigma, height, int(len(z)))


def _reach(flank: BulkFlank) -> float:
    """The ``z`` the bulk reaches: ``REACH_SIGMAS`` flank widths below its peak."""
    return flank.peak - REACH_SIGMAS * flank.sigma


def _valley(centres: np.ndarray, f: np.ndarray, below: float) -> float | None:
    """Where to cut a left mode off the bulk, or None when there is no mode apart from it.

    A mode apart: the densest point left of ``below`` (the bulk's reach) is followed, before the reach, by density
    under ``VALLEY`` times its own (a bulk whose left tail just thins out has its densest such point at the reach and
    no valley). The cut: the middle of the empty stretch (under ``EMPTY`` edges a bin) nearest the reach — the gap
    between the copies and the bulk, so a sparse spread of near copies right of a dense cluster of re-encodes is
    flagged with it; the reach itself when no bin between the mode and the reach is empty."""
    left = np.nonzero(centres < below)[0]
    if len(left) < 2:
        return None
    top = int(left[np.argmax(f[left])])
    span = np.arange(top, int(left[-1]) + 1)
    if not f[top] > 0 or float(f[span].min()) >= VALLEY * float(f[top]):
        return None
    empty = np.nonzero(f[span] * BIN < EMPTY)[0]
    if not len(empty):
        return below
    last = int(empty[-1])
    first = last
    while first > 0 and f[span[first - 1]] * BIN < EMPTY:
        first -= 1
    return float(0.5 * (centres[span[first]] + min(float(centres[span[last]]), below)))


def auto_threshold(cosines: np.ndarray, ignore: np.ndarray | None = None) -> NearThreshold:
    """The ``auto`` threshold from the graph's (n, k) cosines (NaN where there is no neighbour); ``ignore``: a mask
    of the same shape for edges between byte-identical copies (found by their hash, not by this rule)."""
    c = np.asarray(cosines, np.float64)
    if c.ndim == 1:
        c = c[:, None]
    valid = np.isfinite(c) if ignore is None else np.isfinite(c) & ~np.asarray(ignore, bool).reshape(c.shape)
    n = int(valid.any(axis=1).sum())
    floor_cos = 1.0 - MIN_DISTANCE
    identical = int(np.sum(c[valid] >= floor_cos))
    if n < MIN_ROWS:
        return NearThreshold(floor_cos, f"auto: {n} images are too few to read a distribution from (at least "
                             f"{MIN_ROWS}); only identical vectors (1-cos < {MIN_DISTANCE:g}) are flagged: "
                             f"{identical} pairs (pass a cosine to choose one)", "auto", identical_pairs=identical)
    z = np.log10(np.clip(1.0 - c, 1e-7, 2.0))
    has = valid.any(axis=1)
    last = valid.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    zv = z[valid]
    flank = bulk_flank(zv, z[np.nonzero(has)[0], last[has]])
    reach = max(_reach(flank), math.log10(MIN_DISTANCE))
    centres, f = _smoothed(zv)
    valley = _valley(centres, f, reach)
    t = reach if valley is None else max(min(reach, valley), math.log10(MIN_DISTANCE))
    cos = round(1.0 - 10 ** t, 8)
    beyond = int(np.sum(zv <= reach))
    where = (f"the bulk of neighbour distances peaks at 1-cos ~ {10 ** flank.peak:.2g} with a left flank "
             f"{flank.sigma:.3f} decades wide ({flank.edges:,} graph edges) and reaches 1-cos {10 ** reach:.2g} "
             f"({REACH_SIGMAS:g} widths)")
    below = valid & (c >= cos)
    rows, edges = int(below.any(axis=1).sum()), int(below.sum())
    if valley is not None and rows >= 2:
        return NearThreshold(cos, f"auto: {rows:,} images have a neighbour closer than the bulk reaches, a mode "
                             f"apart from it (cut at 1-cos ~ {10 ** t:.2g}) — {where}: threshold cosine >= "
                             f"{cos:.6f}", "auto", True, flank, rows, edges, identical)
    below = valid & (c >= floor_cos)
    return NearThreshold(floor_cos, f"auto: no duplicate mode — {where}, and the {beyond:,} edges beyond that are a "
                         f"tail thinning out, not a mode apart from the bulk: only identical vectors (1-cos < "
                         f"{MIN_DISTANCE:g}, {identical} pairs) are flagged; cosine >= {1 - 10 ** reach:.6f} would "
                         f"flag {beyond:,} pairs (pass --near-threshold to choose; see the histogram)", "auto",
                         False, flank, int(below.any(axis=1).sum()), int(below.sum()), identical)


def parse_threshold(value: str | float, cosines: np.ndarray | None = None,
                    ignore: np.ndarray | None = None) -> NearThreshold:
    """``'auto'`` (needs the graph's ``cosines``) or a cosine in (0, 1] (``values.parse_near_threshold``)."""
    parsed = parse_near_threshold(value)
    if parsed == "auto":
        if cosines is None:
            raise UsageError("near threshold 'auto' needs the k-NN graph's cosines")
        return auto_threshold(cosines, ignore)
    cos = float(parsed)
    return NearThreshold(cos, f"given: cosine >= {cos:g}", "given")
