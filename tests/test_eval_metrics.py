"""The metric code against references on random rankings: scikit-learn's average precision, SearchAD's devkit
functions (``tests/searchad_reference.py``, copied from their commit 512fcf3), and the chance formulas against
simulated random rankings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from searchad_reference import mean_average_precision, mean_rprecision, precision_at_k
from sklearn.metrics import average_precision_score

from job.eval import metrics
from job.eval.rank import Queries, score_queries


def _rankings(rng: np.random.Generator, n: int, count: int) -> list[np.ndarray]:
    """Random relevance vectors (best first), from no relevant item to all of them, rare and common."""
    out = []
    for _ in range(count):
        r = int(rng.choice([0, 1, 3, rng.integers(1, n + 1), n // 2, n]))
        rel = np.zeros(n, bool)
        rel[rng.choice(n, size=r, replace=False)] = True
        out.append(rel)
    return out


@pytest.mark.parametrize("n", [3, 50, 100, 101, 640])
def test_ap_at_k_equals_the_devkit_where_it_can(n):
    """MAP@100 is the devkit's mean_average_precision(target, 100) whenever R <= 100, and that times R / 100 above
    (the devkit divides by R, so a perfect top 100 of R > 100 relevant items would score 100/R there)."""
    rng = np.random.default_rng(n)
    for rel in _rankings(rng, n, 60):
        r = int(rel.sum())
        ours = metrics.ap_at_k(rel[None, :100], np.array([r]))[0]
        ref = float(mean_average_precision(torch.tensor(rel, dtype=torch.float32), 100))
        assert ours == pytest.approx(ref * (r / min(r, 100) if r else 1.0), abs=1e-6)


@pytest.mark.parametrize("n", [5, 64, 500])
def test_full_ap_equals_sklearn_and_the_devkit(n):
    rng = np.random.default_rng(7 + n)
    for rel in _rankings(rng, n, 60):
        if not rel.any():
            assert metrics.average_precision(rel) == 0.0
            continue
        scores = np.arange(n, 0, -1, dtype=float)  # best first
        assert metrics.average_precision(rel) == pytest.approx(average_precision_score(rel, scores), abs=1e-9)
        ref = float(mean_average_precision(torch.tensor(rel, dtype=torch.float32), n))
        assert metrics.average_precision(rel) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("n", [3, 40, 300])
def test_r_precision_and_p_at_5_equal_the_devkit(n):
    rng = np.random.default_rng(11 + n)
    for rel in _rankings(rng, n, 60):
        r = int(rel.sum())
        t = torch.tensor(rel, dtype=torch.float32)
        assert metrics.r_precision(np.array([rel[:r].sum()]), np.array([r]))[0] == \
            pytest.approx(float(mean_rprecision(t)), abs=1e-6)
        assert metrics.precision_at_k(rel[None, :100], 5)[0] == pytest.approx(float(precision_at_k(t, 5)), abs=1e-6)


def test_scoring_a_ranking_by_vectors_equals_the_devkit_on_the_sorted_list():
    """The ranking engine (exact cosine, top-k by partition, R-Precision by a second partition) gives the devkit's
    numbers on the list sorted by the same scores, for rare and common groups, with a scene left out."""
    rng = np.random.default_rng(3)
    n, d = 900, 16
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    relevance = np.stack([rng.random(n) < p for p in (0.005, 0.05, 0.3, 0.8)])
    scenes = rng.integers(0, 30, n)
    qv = rng.standard_normal((8, d)).astype(np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    groups = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    q = Queries(task="image", names=[str(g) for g in groups], vectors=qv, groups=groups,
                exclude_scene=np.array([-1, -1, -1, -1, 3, 4, 5, 6]), query_rows=np.array([-1] * 4 + [10, 11, 12, 13]))
    got = score_queries(x, q, relevance, scenes)
    for i in range(len(groups)):
        keep = np.ones(n, bool)
        if q.exclude_scene[i] >= 0:
            keep &= scenes != q.exclude_scene[i]
            keep[q.query_rows[i]] = False
        s = (x @ qv[i])[keep]
        rel = relevance[groups[i]][keep][np.argsort(-s, kind="stable")]
        t = torch.tensor(rel, dtype=torch.float32)
        r = int(rel.sum())
        assert got.n[i] == keep.sum() and got.relevant[i] == r
        assert got.map_at_100[i] == pytest.approx(float(mean_average_precision(t, 100)) * (r / min(r, 100) if r else 1),
                                                  abs=1e-6)
        assert got.r_precision[i] == pytest.approx(float(mean_rprecision(t)), abs=1e-6)
        assert got.p_at_5[i] == pytest.approx(float(precision_at_k(t, 5)), abs=1e-6)


@pytest.mark.parametrize(("n", "r"), [(50, 1), (60, 7), (300, 40), (400, 250), (120, 120)])
def test_chance_values_equal_random_rankings_on_average(n, r):
    """The closed forms are the mean over many random rankings (within 4 standard errors)."""
    rng = np.random.default_rng(n * 1000 + r)
    trials = 4000
    rel = np.zeros((trials, n), bool)
    for t in range(trials):
        rel[t, rng.choice(n, size=r, replace=False)] = True
    ap = metrics.ap_at_k(rel[:, :100], np.full(trials, r))
    rp = metrics.r_precision(rel[:, :r].sum(axis=1), np.full(trials, r))
    p5 = metrics.precision_at_k(rel[:, :100], 5)
    for values, expected in ((ap, metrics.chance_ap_at_k(np.array([n]), np.array([r]))[0]),
                             (rp, metrics.chance_precision(np.array([n]), np.array([r]))[0]),
                             (p5, metrics.chance_precision(np.array([n]), np.array([r]))[0])):
        se = values.std() / np.sqrt(trials)
        assert abs(values.mean() - expected) <= 4 * se + 1e-9
