"""Diverse selection (greedy k-center, balance quotas)."""
from __future__ import annotations

import numpy as np
import pytest
from curate_data import clustered

from job.curate import check_balance, quotas, select_diverse
from job.errors import UsageError


def _plain_greedy(x: np.ndarray, count: int, first: int) -> list[int]:
    dist = np.full(len(x), np.inf)
    picks = [first]
    for _ in range(count - 1):
        dist = np.minimum(dist, np.linalg.norm(x - x[picks[-1]], axis=1))
        dist[picks] = -1
        picks.append(int(np.argmax(dist)))
    return picks


def _radius(x: np.ndarray, picks) -> float:
    return float(np.max(np.min(np.linalg.norm(x[:, None, :] - x[None, picks, :], axis=2), axis=1)))


def test_selection_is_exact_greedy_k_center_with_honest_coverage():
    x = clustered(800, seed=1)
    s = select_diverse(x, np.arange(800) + 100, 40, progress=False)
    first = int(np.argmin(x @ x.mean(axis=0)))
    assert s.rows.tolist() == _plain_greedy(x, 40, first)
    assert (s.ids == s.rows + 100).all() and np.isnan(s.coverage_cosine[0])
    earlier = [float(np.max(x[s.rows[:i]] @ x[s.rows[i]])) for i in range(1, 40)]
    np.testing.assert_allclose(s.coverage_cosine[1:], earlier, atol=1e-5)
    assert s.radius() == pytest.approx(_radius(x, s.rows), abs=1e-4)
    assert np.all(np.diff(s.coverage_cosine[1:]) >= -1e-5)  # farthest first: each pick is closer than the last


def test_projected_greedy_stays_close_to_exact():
    x = clustered(3000, d=256, seed=2)
    exact = select_diverse(x, np.arange(3000), 150, progress=False)
    proj = select_diverse(x, np.arange(3000), 150, dims=64, progress=False)
    assert proj.info["projected"] and not exact.info["projected"]
    assert proj.radius() <= 1.1 * exact.radius()
    rand = np.random.default_rng(0).choice(3000, 150, replace=False)
    assert exact.radius() < _radius(x, rand)


def test_planted_outliers_come_before_their_crowded_neighbours():
    x = clustered(1000, seed=3)
    rng = np.random.default_rng(4)
    outliers = rng.standard_normal((5, 64)).astype(np.float32)
    xa = np.concatenate([x, outliers / np.linalg.norm(outliers, axis=1, keepdims=True)])
    s = select_diverse(xa, np.arange(len(xa)), 20, progress=False)
    assert set(range(1000, 1005)) <= set(s.rows[:8].tolist())


def test_balance_gives_every_value_its_share():
    assert quotas(np.array([0] * 90 + [1] * 9 + [2]), 10).tolist() == [8, 1, 1]  # the rare value still gets one
    assert quotas(np.array([0] * 50 + [1] * 50), 7).sum() == 7
    x = clustered(600, seed=5)
    loc = np.array(["boston"] * 400 + ["singapore"] * 200, object)
    cam = np.array(["CAM_FRONT", "CAM_BACK"] * 300, object)
    s = select_diverse(x, np.arange(600), 30, balance={"location": loc, "channel": cam}, progress=False)
    got = {}
    for r in s.rows:
        key = f"location={loc[r]}, channel={cam[r]}"
        got[key] = got.get(key, 0) + 1
    assert got == s.quotas and sum(got.values()) == 30 and set(got.values()) == {10, 5}
    exclude = np.zeros(600, bool)
    exclude[::2] = True
    s2 = select_diverse(x, np.arange(600), 10, exclude=exclude, progress=False)
    assert not exclude[s2.rows].any()


def test_bad_selection_input_is_a_usage_error():
    x = clustered(30)
    exclude = np.zeros(30, bool)
    exclude[:10] = True
    with pytest.raises(UsageError, match="select 0 is out of range; use 1 to 20 .the images that are not duplicates."):
        select_diverse(x, np.arange(30), 0, exclude=exclude)
    with pytest.raises(UsageError, match="select 21 is out of range; use 1 to 20"):
        select_diverse(x, np.arange(30), 21, exclude=exclude)
    with pytest.raises(UsageError, match="balance column 'weather' unknown; valid choices: channel, location"):
        check_balance(["location", "weather"], ["location", "channel"])
    with pytest.raises(UsageError, match="select 2 is fewer than the 3 balance groups"):
        select_diverse(x, np.arange(30), 2, balance={"c": np.arange(30) % 3})
