"""A diverse subset: greedy farthest-point (k-center) selection over the non-duplicate images, warm-started from the
images already labelled, with target shares per stratum and a minimum gap in time within a scene and camera.

Greedy k-center (Gonzalez) keeps, for every candidate, its distance to the nearest pick and picks the farthest
candidate next; its coverage radius (the largest distance from any image to its nearest pick) is within 2x of the
best possible. The engine (``cover.FarthestFirst``) makes the same picks as the plain greedy, with its distance passes
batched into matrix products. Above ``EXACT_BUDGET`` multiply-adds of plain passes the
distances are those of a **random projection** of the vectors to ``PROJECTED_DIMS`` dimensions (Johnson-
Lindenstrauss: every distance is kept within a few per cent, uniformly, unlike PCA, which drops whole directions and
with them the outliers that set the radius: on 20k clustered CLIP-like vectors PCA-128 gave 1.35x the exact greedy's
radius, random projections to 128 dimensions 1.06x and 1.12x on two data sets, to 192 dimensions 1.07x and to 256
1.06x: 192 is the default). The cosines reported are always measured on the full vectors.

* **Labelled images** (``labelled``) are centres from the start: the first pick is the image farthest from all of
  them, and none of them is picked again; ``avoid`` rows (their duplicates) are covered but never picked, nor is any
  candidate whose cosine to its nearest labelled image is at or above ``near``. Without labelled images the first
  pick is the candidate farthest from the candidates' mean direction (deterministic). Picking N more after labelling
  the first M picks of a greedy selection gives exactly picks M..M+N-1 of a fresh selection of M+N.
* **Strata** (``balance``: the combinations of the given columns' values) get quotas from ``shares``
  (``strata.quotas``); the greedy picks the farthest candidate among the strata still below quota.
* **Gaps** (``gap``): after a pick (or a labelled image), candidates of the same scene and camera less than
  ``min_gap_s`` seconds from it are no longer eligible. When the gaps leave a stratum unable to fill its quota, the
  picks it cannot take go to the strata that still have eligible candidates; when none has, the selection ends short
  and says so (``Selection.shortfall``).

Distances are Euclidean between unit vectors, ``sqrt(2 - 2·cos)``, whose order is the cosine's. Memory: the run's
vectors are never copied; the projection (when used) is ``n x 192`` float32, the bookkeeping a few bytes per image.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UsageError
from ..index.exact import single_threaded_blas
from .cover import CHUNK, FarthestFirst
from .greedy import Gaps, TimeGaps, groups_of, pick_loop
from .strata import Strata, quotas, weights

log = logging.getLogger(__name__)

EXACT_BUDGET = 3e11  # multiply-adds of the plain greedy (~1 min on 2 cores) before projecting
PROJECTED_DIMS = 192  # 1.07x the exact greedy's radius on 20k clustered 768-d vectors; 128 gave 1.06-1.12x
RADIUS_BUDGET = 3e11  # multiply-adds of an exact nearest-pick search for the radius; above it, a bound (see below)


@dataclass
class StratumCoverage:
    """One stratum of a subset: its images, how many were labelled before, its target and quota, its picks, and the
    cosine at which every one of its images has a labelled image or a pick (NaN when not measured)."""

    stratum: str
    images: int
    labelled: int
    candidates: int
    target: float
    quota: int
    picks: int
    radius_cosine: float


@dataclass
class Selection:
    """Picked rows in pick order, their ids, and each pick's cosine to the nearest earlier pick or labelled image
    (NaN for a first pick without labelled images)."""

    rows: np.ndarray
    ids: np.ndarray
    coverage_cosine: np.ndarray  # float32
    radius_cosine: float  # every image has a pick or a labelled image at cosine >= this (the radius as a cosine)
    quotas: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    strata: list[StratumCoverage] = field(default_factory=list)
    stratum: np.ndarray = field(default_factory=lambda: np.zeros(0, object))  # each pick's stratum label
    shortfall: int = 0  # picks asked for that no eligible image was left for (--min-gap-s)

    def radius(self) -> float:
        """The coverage radius as a Euclidean distance between unit vectors."""
        return math.sqrt(max(0.0, 2.0 - 2.0 * self.radius_cosine))


def _project(x: np.ndarray, rows: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """A Gaussian random projection of ``x[rows]`` to ``dims`` dimensions (distances kept in expectation), made a
    block at a time (the rows are never copied whole)."""
    r = np.random.default_rng(seed).standard_normal((x.shape[1], dims)).astype(np.float32) / np.float32(math.sqrt(dims))
    out = np.empty((len(rows), dims), np.float32)
    for s in range(0, len(rows), CHUNK):
        out[s:s + CHUNK] = x[rows[s:s + CHUNK]] @ r
    return out


def select_diverse(x: np.ndarray, ids: np.ndarray, count: int, *, exclude: np.ndarray | None = None,
                   labelled: np.ndarray | None = None, avoid: np.ndarray | None = None, near: float | None = None,
                   balance: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
                   shares: str | Sequence[tuple[str, str, float]] = "proportional", gap: TimeGaps | None = None,
                   dims: int | None = None, measure_radius: bool = True, seed: int = 0,
                   progress: bool = True) -> Selection:
    """Pick ``count`` rows of ``x`` (unit vectors) by greedy k-center (see the module docstring).

    ``exclude``: rows that are no candidates and need no cover (duplicates). ``labelled``: rows already labelled
    (centres from the start, never picked; duplicates among them are fine). ``avoid``: rows covered but never picked.
    ``near``: a cosine; candidates at or above it to their nearest labelled image are avoided too. ``balance``: the
    columns whose value combinations are the strata; ``shares``: their targets (``strata.weights``). ``gap``: keep
    picks of one scene and camera apart in time. ``dims``: project to this many dimensions (default:
    ``PROJECTED_DIMS`` above ``EXACT_BUDGET``). ``measure_radius``: the coverage radius on the full vectors."""
    n = len(x)
    t0 = time.perf_counter()
    lab = np.zeros(n, bool) if labelled is None else np.asarray(labelled, bool)
    pool = np.nonzero((~np.asarray(exclude, bool) if exclude is not None else np.ones(n, bool)) | lab)[0]
    is_lab = lab[pool]
    cand = ~is_lab if avoid is None else ~is_lab & ~np.asarray(avoid, bool)[pool]
    strata = Strata.of(balance, pool)
    d = x.shape[1]
    if dims is None and len(pool) * count * d > EXACT_BUDGET and d > PROJECTED_DIMS:
        dims = PROJECTED_DIMS
    projected = bool(dims and dims < d)
    z = _project(x, pool, int(dims or d), seed) if projected else x
    timings = {"project_s": time.perf_counter() - t0}
    cover = FarthestFirst(z, None if projected else pool, cand.copy())
    gaps = Gaps(gap, pool) if gap is not None else None
    gapped = np.zeros(len(pool), bool)
    with single_threaded_blas():  # per-pick products are small: BLAS's threads made them 6x slower on a busy machine
        for p in np.nonzero(is_lab)[0]:  # warm start: the labelled images are centres
            cover.add(int(p))
            if gaps is not None:
                gapped[gaps.near(int(p))] = True
    near_avoided = 0
    if near is not None and cover.count:
        at = np.nonzero(cand)[0]
        close = at[_cosines(x, pool[at], pool[cover.nearest_centre()[at]]) >= near]
        near_avoided = len(close)
        cand[close] = False
    if not (1 <= count <= int(cand.sum())):
        raise UsageError(f"select {count} is out of range; use 1 to {int(cand.sum())} (the images that are not "
                         "duplicates" + (", not labelled and not duplicates of labelled ones)" if lab.any() else ")"))
    counts = np.bincount(strata.codes[cand], minlength=len(strata))
    targets: list[np.ndarray] = []
    w = weights(strata, counts, shares) if balance else None
    quota = quotas(strata.codes[cand], count, w, min_one=shares in ("proportional", "equal"), targets_out=targets)
    quota = np.concatenate([quota, np.zeros(len(strata) - len(quota), np.int64)])
    target = np.concatenate([targets[0], np.zeros(len(strata) - len(targets[0]))])
    cover.eligible[:] = cand & ~gapped & (quota > 0)[strata.codes]
    cover.invalidate()
    with single_threaded_blas():
        picks, shortfall = pick_loop(x, pool, cover, strata.codes, quota, cand, gapped, gaps, w, count, progress)
    timings["greedy_s"] = time.perf_counter() - t0 - timings["project_s"]
    t1 = time.perf_counter()
    centre_rows = pool[cover.centre_pos[: cover.count]]
    nlab = int(is_lab.sum())
    cov = _coverage_cosines(x, centre_rows)[nlab:]
    radius_cos, per_row, exact = math.nan, None, False
    if measure_radius:
        per_row, exact = _radius(x, pool, cover, centre_rows)
        radius_cos = float(per_row.min())
    timings["measure_s"] = time.perf_counter() - t1
    picked = pool[picks]
    m = len(strata)
    images = np.bincount(strata.codes, minlength=m)
    labelled_n = np.bincount(strata.codes[is_lab], minlength=m)
    taken = np.bincount(strata.codes[picks], minlength=m)
    low = np.full(m, np.nan)
    if per_row is not None:
        for s, rows in enumerate(groups_of(strata.codes, m)):
            low[s] = float(per_row[rows].min()) if len(rows) else math.nan
    covers = [StratumCoverage(strata.labels[s], int(images[s]), int(labelled_n[s]), int(counts[s]),
                              round(float(target[s]), 3), int(quota[s]), int(taken[s]), float(low[s]))
              for s in range(m)]
    log.info("selection: %d picks of %d candidates (%d labelled before) in %.1f s, %s distance evaluations "
             "(%.1f%% of a plain greedy's)", len(picks), int(cand.sum()), nlab, timings["greedy_s"],
             f"{cover.touched:,}", 100.0 * cover.touched / max(1, len(pool) * (len(picks) + nlab)))
    return Selection(picked, ids[picked], cov, radius_cos,
                     {strata.labels[i]: int(q) for i, q in enumerate(quota) if q} if balance else {},
                     {"candidates": int(cand.sum()), "dims": int(z.shape[1]), "projected": projected,
                      "labelled": nlab, "near_labelled_avoided": near_avoided, "radius_exact": exact,
                      "distance_evaluations": int(cover.touched), "timings": timings},
                     covers, np.array([strata.labels[c] for c in strata.codes[picks]], object), shortfall)


def _cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of rows ``a[i]`` and ``b[i]`` of ``x`` (unit vectors), a block at a time."""
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), CHUNK):
        out[s:s + CHUNK] = np.einsum("ij,ij->i", x[a[s:s + CHUNK]], x[b[s:s + CHUNK]])
    return out


def _coverage_cosines(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each centre's cosine to the nearest earlier centre (NaN for the first), on the full vectors."""
    xp = x[rows]
    cov = np.full(len(rows), np.nan, np.float32)
    for s in range(1, len(rows), 4096):
        e = min(len(rows), s + 4096)
        sims = xp[s:e] @ xp[:e].T
        sims[np.arange(e - s)[:, None] <= np.arange(e)[None, :] - s] = -np.inf
        cov[s:e] = sims.max(axis=1)
    return cov


def _radius(x: np.ndarray, pool: np.ndarray, cover: FarthestFirst, centre_rows: np.ndarray) -> tuple[np.ndarray, bool]:
    """Every pool image's cosine to its nearest centre on the full vectors, and whether that is exact: an exact
    search within ``RADIUS_BUDGET``, else the cosine to the centre the greedy assigned it (its nearest in the
    projection), a lower bound of the cosine to its nearest centre (so the radius it gives is never too good)."""
    if len(pool) * len(centre_rows) * x.shape[1] <= RADIUS_BUDGET or cover.rows is not None:
        if cover.rows is not None:  # not projected: the greedy's distances are exact, and so is its assignment
            return _cosines(x, pool, pool[cover.nearest_centre()]), True
        from ..index.exact import exact_search

        xc = x[centre_rows]
        out = np.empty(len(pool), np.float32)
        for s in range(0, len(pool), CHUNK):
            out[s:s + CHUNK] = exact_search(x[pool[s:s + CHUNK]], xc, 1)[1][:, 0]
        return out, True
    return _cosines(x, pool, pool[cover.nearest_centre()]), False
