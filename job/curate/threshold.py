"""The near-duplicate threshold: given (a cosine in (0, 1]) or ``auto``, read off the run's own nearest-neighbour cosines.

``auto`` works on the log of the cosine distance to the nearest neighbour, ``z = log10(1 - cos)``: near duplicates
(re-encodes, resizes, frames of a car that stands still) are typically orders of magnitude closer than an image's
nearest *distinct* neighbour, whatever the model — a trained CLIP puts distinct neighbours at distance ~0.05-0.2 and
re-encodes at ~0.001, a random-weight model puts everything 100x closer, but the ratio stays. A two-component
Gaussian mixture is fitted to ``z`` (EM, several deterministic starts). The lower component is taken for a duplicate
mode only when it is cleanly separated from the bulk (the upper component, whatever its share: a run full of
standstills may hold more duplicates than distinct frames): Ashman's D >= ``MIN_SEPARATION`` (D > 2 is the usual
mark of a bimodal mixture) and at least ``MIN_DUPLICATE_ROWS`` rows in it. The
threshold is then where the two components are equally likely, but never within ``BULK_MARGIN`` standard deviations
of the bulk's mean, and the rows below it must be at least ``EXCESS`` times what the bulk's own Gaussian tail
puts there (a long tail of distinct images is not a mode). Without such a mode — or with fewer than ``MIN_ROWS``
images — nothing is flagged: the threshold is set at half the closest pair's distance (only identical vectors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..values import parse_near_threshold

MIN_DISTANCE = 1e-7  # float32 cosines of identical vectors come out within ~1e-7 of 1
MIN_SEPARATION = 3.0  # Ashman's D between the duplicate and bulk components
MIN_ROWS = 50  # fewer nearest-neighbour distances than this are no distribution to fit
MIN_DUPLICATE_ROWS = 2  # a duplicate pair puts two rows at the same tiny distance
BULK_MARGIN = 4.0  # the threshold stays this many standard deviations below the bulk's mean (log distance)
MIN_SIGMA = 0.02  # decades: keeps EM off a zero-width component (identical distances)
EM_ITERATIONS = 300
HIST_BINS = 4000
EXCESS = 4.0  # the mode must hold this many times the rows the bulk's Gaussian tail puts below the threshold


@dataclass(frozen=True)
class NearThreshold:
    """A near-duplicate threshold: pairs with cosine >= ``cosine`` are near duplicates."""

    cosine: float
    rule: str  # one line a person can check
    source: str  # "auto" | "given"
    found_mode: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"cosine": self.cosine, "rule": self.rule, "source": self.source, "found_mode": self.found_mode,
                **self.details}


def log_distance(cosines: np.ndarray) -> np.ndarray:
    """``log10(1 - cos)`` clipped to [log10(MIN_DISTANCE), log10(2)] (NaNs dropped)."""
    c = np.asarray(cosines, np.float64)
    c = c[np.isfinite(c)]
    return np.log10(np.clip(1.0 - c, MIN_DISTANCE, 2.0))


def _em(z: np.ndarray, cnt: np.ndarray, split: float) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Two-Gaussian EM on values ``z`` with counts ``cnt`` (histogram bins), started from a split point;
    returns (log-likelihood, weights, means, sigmas), components ordered by mean."""
    lo = z <= split
    total = float(cnt.sum())
    if cnt[lo].sum() < 1 or cnt[~lo].sum() < 1:
        return -math.inf, np.zeros(2), np.zeros(2), np.ones(2)

    def moments(m: np.ndarray) -> tuple[float, float]:
        mean = float(np.average(z[m], weights=cnt[m]))
        return mean, float(np.sqrt(np.average((z[m] - mean) ** 2, weights=cnt[m])))

    (m0, s0), (m1, s1) = moments(lo), moments(~lo)
    w = np.array([cnt[lo].sum(), cnt[~lo].sum()]) / total
    mu = np.array([m0, m1])
    sd = np.maximum(np.array([s0, s1]), MIN_SIGMA)
    ll_old = -math.inf
    ll = -math.inf
    for _ in range(EM_ITERATIONS):
        logp = (np.log(np.maximum(w, 1e-300))[None, :] - np.log(sd)[None, :] - 0.5 * math.log(2 * math.pi)
                - 0.5 * ((z[:, None] - mu[None, :]) / sd[None, :]) ** 2)
        top = logp.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
        ll = float((cnt * lse).sum())
        resp = np.exp(logp - lse[:, None]) * cnt[:, None]
        nk = resp.sum(axis=0)
        if (nk < 1e-9).any():
            return -math.inf, w, mu, sd
        w = nk / total
        mu = (resp * z[:, None]).sum(axis=0) / nk
        sd = np.maximum(np.sqrt((resp * (z[:, None] - mu[None, :]) ** 2).sum(axis=0) / nk), MIN_SIGMA)
        if ll - ll_old < 1e-9 * abs(ll):
            break
        ll_old = ll
    order = np.argsort(mu)
    return ll, w[order], mu[order], sd[order]


def _equal_posterior(w: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> float:
    """The z between the two means where both weighted densities are equal (bisection; the lower mean if none)."""
    def diff(t: float) -> float:
        a = math.log(w[0]) - math.log(sd[0]) - 0.5 * ((t - mu[0]) / sd[0]) ** 2
        b = math.log(w[1]) - math.log(sd[1]) - 0.5 * ((t - mu[1]) / sd[1]) ** 2
        return a - b

    lo, hi = float(mu[0]), float(mu[1])
    if diff(lo) <= 0:
        return lo
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if diff(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def fit_mixture(z: np.ndarray) -> dict[str, Any]:
    """The best two-component fit of ``z`` over deterministic starts (quantile splits and the widest gap in the
    lower half). Fitted on a histogram of ``HIST_BINS`` bins (a bin is ~0.003 decades wide for typical spreads), so
    1.4M rows cost what 4,000 do; a bin holding two rows is still its own point."""
    zs = np.sort(z)
    if len(zs) > HIST_BINS:
        cnt, edges = np.histogram(zs, bins=HIST_BINS)
        centres = 0.5 * (edges[1:] + edges[:-1])
        keep = cnt > 0
        vals, cnt = centres[keep], cnt[keep].astype(np.float64)
    else:
        vals, cnt = zs, np.ones(len(zs))
    starts = [float(np.quantile(zs, q)) for q in (0.005, 0.02, 0.1, 0.3, 0.5)]
    half = zs[: max(2, len(zs) // 2)]
    if len(half) > 1:
        gap = int(np.argmax(np.diff(half)))
        starts.append(float(half[gap]))
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    for s in starts:
        fit = _em(vals, cnt, s)
        if best is None or fit[0] > best[0]:
            best = fit
    assert best is not None
    ll, w, mu, sd = best
    sep = math.sqrt(2) * abs(mu[1] - mu[0]) / math.sqrt(sd[0] ** 2 + sd[1] ** 2) if math.isfinite(ll) else 0.0
    return {"loglik": ll, "weights": w.tolist(), "means": mu.tolist(), "sigmas": sd.tolist(), "separation": sep}


def auto_threshold(nn_cosines: np.ndarray) -> NearThreshold:
    """The ``auto`` threshold from each image's cosine to its nearest (non byte-identical) neighbour."""
    z = log_distance(nn_cosines)
    n = len(z)
    if n == 0:
        return NearThreshold(1.0, "auto: no nearest-neighbour cosines, nothing is flagged", "auto")
    closest = float(np.min(z))
    c = np.asarray(nn_cosines, np.float64)
    none_rule_cos = float(min(1.0, 1.0 - max(0.0, 1.0 - float(np.nanmax(c))) / 2))  # half the closest distance
    details: dict[str, Any] = {"rows": n, "median_nn_cosine": round(float(1 - 10 ** np.median(z)), 6)}
    if n < MIN_ROWS:
        return NearThreshold(none_rule_cos, f"auto: {n} images are too few to read a distribution from (at least "
                             f"{MIN_ROWS}); nothing is flagged near (pass a cosine to choose one)", "auto", False,
                             details)
    if float(np.ptp(z)) > 0:
        fit = fit_mixture(z)
        details["mixture"] = {k: ([round(v, 4) for v in val] if isinstance(val, list) else round(val, 4))
                              for k, val in fit.items()}
        w, mu, sd = np.array(fit["weights"]), np.array(fit["means"]), np.array(fit["sigmas"])
        lo_rows = int(np.sum(z <= _equal_posterior(w, mu, sd))) if fit["separation"] > 0 else 0
        t = min(_equal_posterior(w, mu, sd), float(mu[1] - BULK_MARGIN * sd[1]))
        flagged = int(np.sum(z <= t))
        expected = n * 0.5 * math.erfc((mu[1] - t) / (sd[1] * math.sqrt(2)))  # the bulk's own tail below t
        details.update(flagged_rows=flagged, bulk_tail_rows=round(expected, 3))
        if (fit["separation"] >= MIN_SEPARATION and lo_rows >= MIN_DUPLICATE_ROWS
                and flagged >= max(MIN_DUPLICATE_ROWS, EXCESS * expected + 3 * math.sqrt(expected))):
            cos = 1.0 - 10 ** t
            return NearThreshold(
                round(cos, 8),
                f"auto: the nearest-neighbour distances have a duplicate mode at 1-cos ~ {10 ** mu[0]:.2g} "
                f"({flagged} rows), {fit['separation']:.1f} standard deviations (Ashman's D) from the bulk at "
                f"~ {10 ** mu[1]:.2g}; threshold where the two are equally likely: cosine >= {cos:.6f}",
                "auto", True, details)
    return NearThreshold(
        none_rule_cos,
        f"auto: no separate duplicate mode in the nearest-neighbour distances (median 1-cos "
        f"{10 ** float(np.median(z)):.2g}, closest {10 ** closest:.2g}): nothing is flagged near "
        "(pass a cosine to choose one; see the histogram)", "auto", False, details)


def parse_threshold(value: str | float, nn_cosines: np.ndarray | None = None) -> NearThreshold:
    """``'auto'`` (needs ``nn_cosines``) or a cosine in (0, 1] (``values.parse_near_threshold``)."""
    parsed = parse_near_threshold(value)
    if parsed == "auto":
        if nn_cosines is None:
            raise UsageError("near threshold 'auto' needs the nearest-neighbour cosines")
        return auto_threshold(nn_cosines)
    cos = float(parsed)
    return NearThreshold(cos, f"given: cosine >= {cos:g}", "given")
