"""Duplicates: the auto threshold on synthetic distributions, exact groups, greedy keep-first near groups, still."""
from __future__ import annotations

import numpy as np
import pytest
from curate_data import clustered, plant

from job.curate import (
    auto_threshold,
    content_hash,
    exact_duplicates,
    find_duplicates,
    hash_groups,
    keep_rank,
    knn_graph,
    near_duplicates,
    parse_threshold,
    still_duplicates,
)
from job.errors import UsageError


def _cos(z: np.ndarray) -> np.ndarray:
    return 1 - 10.0 ** z


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", ["normal", "gumbel_min", "gumbel_max", "student5", "wide"])
def test_auto_flags_nothing_without_a_duplicate_mode(shape, seed):
    rng = np.random.default_rng(seed)
    n = 3000
    z = {"normal": rng.normal(-1.2, 0.15, n), "gumbel_min": -1.2 - rng.gumbel(0, 0.12, n),
         "gumbel_max": -1.2 + rng.gumbel(0, 0.12, n), "student5": -1.2 + 0.1 * rng.standard_t(5, n),
         "wide": rng.normal(-1.5, 0.5, n)}[shape]
    t = auto_threshold(_cos(z))
    assert not t.found_mode and int(np.sum(_cos(z) >= t.cosine)) == 0
    assert "nothing is flagged" in t.rule and 0 < t.cosine <= 1


@pytest.mark.parametrize(("n", "share"), [(200, 0.02), (3000, 0.01), (3000, 0.3), (20000, 0.05)])
def test_auto_finds_a_planted_mode_and_says_why(n, share):
    rng = np.random.default_rng(7)
    z = rng.normal(-1.2, 0.15, n)  # distinct neighbours at 1-cos ~ 0.06
    m = max(2, int(n * share))
    z[:m] = rng.normal(-3.0, 0.25, m)  # duplicates ~ 60x closer
    t = auto_threshold(_cos(z))
    flagged = _cos(z) >= t.cosine
    assert t.found_mode and flagged[:m].all() and not flagged[m:].any()
    assert f"({m} rows)" in t.rule and "cosine >=" in t.rule


def test_too_few_rows_flag_nothing():
    t = auto_threshold(_cos(np.r_[np.full(3, -4.0), np.full(20, -1.2)]))
    assert not t.found_mode and "too few" in t.rule


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2", "nan", "high", 0.0])
def test_threshold_outside_the_range_is_a_usage_error(bad):
    with pytest.raises(UsageError, match=r"near threshold .* (outside \(0, 1\]|not understood); use auto or a cosine"):
        parse_threshold(bad)


def test_content_hash_and_exact_groups_keep_the_earliest():
    a, b = b"\xff\xd8 one image", b"\xff\xd8 another"
    assert content_hash(a) == content_hash(bytes(a)) and len(content_hash(a)) == 16 and content_hash(a) != content_hash(b)
    hashes = [content_hash(a), content_hash(b), content_hash(a), None, content_hash(a).hex(), content_hash(b)]
    groups = hash_groups(hashes)
    assert groups[3] == -1 and groups[0] == groups[2] == groups[4] and groups[1] == groups[5] != groups[0]
    ts = np.array([50, 10, 20, 0, 20, 5])
    paths = ["e.jpg", "b.jpg", "z.jpg", "x.jpg", "a.jpg", "c.jpg"]
    rank = keep_rank(np.arange(6), ts, paths)
    d = exact_duplicates(groups, rank)
    # group a: rows 0 (t=50), 2 (t=20, z.jpg), 4 (t=20, a.jpg) -> row 4 kept (earliest, then path); group b: row 5 kept
    assert dict(zip(d.rows.tolist(), d.keep_rows.tolist(), strict=True)) == {0: 4, 2: 4, 1: 5}
    assert set(d.kinds) == {"exact"} and (d.cosines == 1).all()


def test_keep_rank_puts_missing_timestamps_last():
    rank = keep_rank(np.array([5, 6, 7]), np.array([np.nan, 3.0, 1.0]))
    assert rank.tolist() == [2, 1, 0]


def _planted(n: int = 2000, groups: int = 30, seed: int = 0):
    x = clustered(n, seed=seed)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, groups)
    sizes[0] = 25  # a group far larger than k + 1: the kept image must be searched deeper
    src = np.repeat(rng.choice(n, groups, replace=False), sizes)
    xa = np.concatenate([x, plant(x, src, 0.02, seed)])
    return xa, src


def test_near_groups_are_greedy_keep_first_and_complete():
    xa, src = _planted()
    n_all = len(xa)
    ids = np.arange(n_all) * 11 + 3
    g = knn_graph(xa, ids, 10, progress=False)
    rank = keep_rank(ids, np.arange(n_all))  # originals come first in time
    d = find_duplicates(g, xa, rank)
    assert d.threshold is not None and d.threshold.found_mode
    assert sorted(d.rows.tolist()) == list(range(2000, n_all))  # every copy, nothing else
    assert (d.keep_rows == src[d.rows - 2000]).all()  # kept: the original, the earliest
    assert (np.einsum("ij,ij->i", xa[d.rows], xa[d.keep_rows]) >= d.threshold.cosine - 1e-6).all()
    assert d.info["near"]["expanded_rows"] >= 1
    cols = d.with_ids(ids)
    assert list(cols) == ["id", "keep_id", "kind", "cosine"] and set(cols["kind"]) == {"near"}


def test_chains_do_not_merge_distinct_images():
    """A ~ B and B ~ C while A is far from C: B joins A's group, C stays its own image (no connected components)."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal(64)
    step = rng.standard_normal(64)
    step -= step @ base / (base @ base) * base
    pts = [base + t * 0.12 * np.linalg.norm(base) * step / np.linalg.norm(step) for t in (0.0, 1.0, 2.0)]
    x = np.concatenate([np.array(pts), clustered(200, seed=9) * 3]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c_ab, c_ac = float(x[0] @ x[1]), float(x[0] @ x[2])
    t = parse_threshold((c_ab + c_ac) / 2)  # A~B and B~C pass, A~C does not
    g = knn_graph(x, np.arange(len(x)), 5, progress=False)
    d = near_duplicates(g, x, t, keep_rank(np.arange(len(x)), np.arange(len(x))))
    assert dict(zip(d.rows.tolist(), d.keep_rows.tolist(), strict=True)) == {1: 0}


def test_still_needs_both_an_unmoved_pose_and_close_vectors():
    rng = np.random.default_rng(1)
    x = clustered(12, seed=2)
    x[1:6] = plant(x, np.zeros(5, int), 0.01)  # frames 0-5 look alike
    x[7:12] = plant(x, np.full(5, 6), 0.01)  # frames 6-11 look alike
    t = parse_threshold(0.99)
    pose_x = np.r_[np.full(6, 10.0) + rng.normal(0, 0.02, 6), 10.0 + np.arange(6) * 2.0]  # parked, then driving
    d = still_duplicates(x, t, scene=np.array(["s"] * 12, object), channel=np.array(["CAM_FRONT"] * 12, object),
                         timestamp=np.arange(12) * 500_000, ego_x=pose_x, ego_y=np.zeros(12))
    assert d.rows.tolist() == [1, 2, 3, 4, 5] and (d.keep_rows == 0).all() and set(d.kinds) == {"still"}
    creep = still_duplicates(x, t, scene=np.array(["s"] * 12, object), channel=np.array(["CAM_FRONT"] * 12, object),
                             timestamp=np.arange(12) * 500_000, ego_x=np.arange(12) * 0.3, ego_y=np.zeros(12))
    assert creep.rows.tolist() == [1, 3, 5, 7, 9, 11]  # 0.3 m a frame: only every other frame is within 0.5 m
    with pytest.raises(UsageError, match="still metres -1 is out of range; use a distance in metres > 0"):
        still_duplicates(x, t, scene=np.array(["s"] * 12, object), channel=np.array(["c"] * 12, object),
                         timestamp=np.arange(12), ego_x=pose_x, ego_y=np.zeros(12), still_metres=-1)
