"""The near threshold (``auto``) and the cases that made the two-Gaussian rule flag nothing, on small data: a 0.5 %
tail of rare images, 300 near-blank frames, every image copied, rows whose neighbours an approximate search lost —
each with planted copies (re-encodes at cosine 0.999-0.99995 and near copies at 0.96-0.999) that must all be found,
and no flagged pair below the threshold by exact cosine."""
from __future__ import annotations

import numpy as np
import pytest
from curate_data import clustered, every_copied, planted, with_blank, with_rare

from job.curate import (
    auto_threshold,
    find_duplicates,
    graph_from_arrays,
    keep_rank,
    knn_graph,
    parse_threshold,
    threshold_histogram,
    to_roots,
)
from job.errors import UsageError


def _cos(z: np.ndarray) -> np.ndarray:
    return 1 - 10.0 ** z


def _graph_z(rng: np.random.Generator, draw, n: int = 3000, k: int = 10) -> np.ndarray:
    """An (n, k) graph of log distances from one distribution, each row nearest first."""
    return np.sort(draw(rng, n * k).reshape(n, k), axis=1)


SHAPES = {
    "normal": lambda r, m: r.normal(-1.2, 0.15, m),
    "gumbel_min": lambda r, m: -1.2 - r.gumbel(0, 0.12, m),  # a heavy left tail: no mode, a tail thinning out
    "gumbel_max": lambda r, m: -1.2 + r.gumbel(0, 0.12, m),
    "student5": lambda r, m: -1.2 + 0.1 * r.standard_t(5, m),
    "wide": lambda r, m: r.normal(-1.5, 0.5, m),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_auto_flags_nothing_without_a_duplicate_mode(shape, seed):
    z = _graph_z(np.random.default_rng(seed), SHAPES[shape])
    t = auto_threshold(_cos(z))
    assert not t.found_mode and int(np.sum(_cos(z) >= t.cosine)) == 0
    assert "no duplicate mode" in t.rule and "would flag" in t.rule  # says what lies beyond the bulk: not a bare 0
    assert t.cosine == pytest.approx(1 - 1e-6)


@pytest.mark.parametrize(("n", "share"), [(200, 0.02), (3000, 0.01), (3000, 0.3), (20000, 0.05)])
def test_auto_finds_a_planted_mode_and_says_why(n, share):
    rng = np.random.default_rng(7)
    z = _graph_z(rng, SHAPES["normal"], n)  # distinct neighbours at 1-cos ~ 0.06
    m = max(2, int(n * share))
    z[:m, 0] = rng.normal(-3.0, 0.25, m)  # each of m rows has one neighbour ~60x closer
    t = auto_threshold(_cos(z))
    flagged = (_cos(z) >= t.cosine).any(axis=1)
    assert t.found_mode and flagged[:m].all() and not flagged[m:].any()
    assert f"auto: {m:,} images have a neighbour closer than the bulk reaches" in t.rule and "cosine >=" in t.rule


def test_a_sparse_spread_of_near_copies_is_cut_with_a_dense_cluster_of_re_encodes():
    """Re-encodes pile up at 1-cos ~3e-4 while near copies spread thinly over 0.001-0.04: the density between them
    dips, but the cut is the gap next to the bulk, so the near copies are flagged with the re-encodes."""
    rng = np.random.default_rng(9)
    n = 5000
    z = _graph_z(rng, lambda r, m: r.normal(-0.9, 0.03, m), n)  # CLIP-like bulk at 1-cos ~0.13
    z[:50, 0] = rng.normal(-3.5, 0.1, 50)  # re-encodes
    z[50:100, 0] = rng.uniform(-3.0, -1.4, 50)  # near copies, log-uniform: a few per tenth of a decade
    t = auto_threshold(_cos(z))
    flagged = (_cos(z) >= t.cosine).any(axis=1)
    assert t.found_mode and flagged[:100].all() and not flagged[100:].any(), t.rule


def test_identical_vectors_are_duplicates_whatever_the_rule():
    z = _graph_z(np.random.default_rng(3), SHAPES["gumbel_min"])
    c = _cos(z)
    c[:3, 0] = 1.0  # three rows with an identical neighbour, and no mode to read
    t = auto_threshold(c)
    assert not t.found_mode and t.identical_pairs == 3 and (c[:3, 0] >= t.cosine).all()


def test_too_few_rows_flag_only_identical_vectors():
    c = _cos(np.r_[np.full(3, -4.0), np.full(20, -1.2)])[:, None]
    t = auto_threshold(c)
    assert not t.found_mode and "too few" in t.rule and t.cosine == pytest.approx(1 - 1e-6)


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2", "nan", "high", 0.0])
def test_threshold_outside_the_range_is_a_usage_error(bad):
    with pytest.raises(UsageError, match=r"near threshold .* (outside \(0, 1\]|not understood); use auto or a cosine"):
        parse_threshold(bad)


# ----------------------------------------------------------------------------------------------- adversarial data


def _base(n: int = 3000) -> np.ndarray:
    """CLIP-like: nearest distinct neighbours at cosine ~0.9, none above ~0.95."""
    return clustered(n, d=128, clusters=30, spread=0.5, seed=11)


def _lose_rows(x: np.ndarray, share: float = 0.03, seed: int = 4):
    """An exact graph in which ``share`` of the rows lost their neighbours (given their 20th-30th instead), as an
    approximate search loses some: a long right tail of nearest-neighbour distances."""
    n = len(x)
    g = knn_graph(x, np.arange(n), 30, method="exact", progress=False)
    rows, cos = g.rows[:, :10].copy(), g.cosines[:, :10].copy()
    lost = np.random.default_rng(seed).choice(n, int(n * share), replace=False)
    rows[lost], cos[lost] = g.rows[lost, 20:30], g.cosines[lost, 20:30]
    return graph_from_arrays(np.arange(n), rows, cos, "degraded"), lost


CASES = {
    "planted": lambda: planted(_base()),
    "rare images (0.5 %)": lambda: with_rare(*planted(_base())),
    "300 near-blank frames": lambda: with_blank(*planted(_base())),
    "every image copied": lambda: every_copied(_base(1500)),
}


@pytest.mark.parametrize("case", [*CASES, "rows the search lost"])
def test_planted_copies_are_found_in_every_adversarial_case(case):
    x, src = CASES.get(case, CASES["planted"])()
    n = len(x)
    if case == "rows the search lost":
        g, lost = _lose_rows(x)
    else:
        g = knn_graph(x, np.arange(n), 10, method="exact", progress=False)
    rank = keep_rank(np.arange(n), np.arange(n))  # sources come first in time
    d = find_duplicates(g, x, rank)
    to_roots(d, x)
    t = d.threshold
    assert t is not None and t.found_mode, t.rule
    copies = np.nonzero(src >= 0)[0]
    if case == "rows the search lost":  # a pair whose both rows lost it cannot be found; the others are
        copies = copies[~(np.isin(copies, lost) & np.isin(src[copies], lost))]
    found = np.isin(copies, d.rows)
    assert found.mean() >= 0.99, (case, found.mean(), t.rule)
    cos = np.einsum("ij,ij->i", x[d.rows], x[d.links])
    np.testing.assert_allclose(d.link_cosines, cos, atol=1e-5)
    assert (cos >= t.cosine - 1e-6).all()  # no flagged pair below the threshold by exact cosine
    distinct = src < 0
    distinct[src[copies]] = False  # sources and rows with no copy
    if case == "300 near-blank frames":
        distinct[-300:] = False  # near-blank frames are near-identical to each other: flagged, and rightly
    if distinct.any():  # images with no copy are, all but a few natural look-alikes, left alone
        assert np.isin(np.nonzero(distinct)[0], d.rows).mean() < 0.005


def test_the_histogram_is_a_png_that_shows_the_rule(tmp_path):
    x, _ = planted(_base())
    g = knn_graph(x, np.arange(len(x)), 10, method="exact", progress=False)
    t = auto_threshold(g.cosines)
    png = threshold_histogram(g.cosines[:, 0], t, g.cosines, title="planted")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    (tmp_path / "h.png").write_bytes(png)
    assert threshold_histogram(g.cosines[:, 0], parse_threshold(0.995))[:4] == b"\x89PNG"
