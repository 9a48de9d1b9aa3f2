"""Duplicates: exact groups, greedy keep-first near groups, standing still (its own rule), and the direct link each
line keeps (the threshold itself: tests/test_curate_threshold.py)."""
from __future__ import annotations

import numpy as np
import pytest
from curate_data import clustered, plant

from job.curate import (
    content_hash,
    exact_duplicates,
    find_duplicates,
    hash_groups,
    keep_rank,
    knn_graph,
    near_duplicates,
    parse_threshold,
    still_duplicates,
    to_roots,
)
from job.errors import UsageError


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
    assert dict(zip(d.rows.tolist(), d.links.tolist(), strict=True)) == {0: 4, 2: 4, 1: 5}
    assert set(d.kinds) == {"exact"} and (d.link_cosines == 1).all()


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
    assert (d.links == src[d.rows - 2000]).all()  # kept: the original, the earliest
    assert (np.einsum("ij,ij->i", xa[d.rows], xa[d.links]) >= d.threshold.cosine - 1e-6).all()
    assert d.info["near"]["expanded_rows"] >= 1
    cols = d.with_ids(ids)
    assert list(cols) == ["id", "keep_id", "kind", "cosine", "repeats_id", "repeats_cosine"]
    assert set(cols["kind"]) == {"near"} and (cols["keep_id"] == cols["repeats_id"]).all()


def test_each_line_keeps_the_image_it_directly_repeats_while_keep_id_is_the_root():
    """An exact copy of a frame that stood still: its keep_id is the standstill's first frame (the group's root),
    but it directly repeats the frame it is byte-identical to, with cosine 1 (to_roots keeps the direct link)."""
    x = clustered(8, seed=21)
    x[1] = x[0]  # frame 1 stood still at frame 0 (same view)
    x[2] = x[1]  # row 2: the same bytes as frame 1
    hashes = [b"a" * 16, b"b" * 16, b"b" * 16, *[bytes([i]) * 16 for i in range(5)]]
    still = {"scene": np.array(["s"] * 8, object), "channel": np.array(["CAM_FRONT"] * 8, object),
             "timestamp": np.r_[0.0, 500_000.0, 900_000.0, np.arange(5) * 1e7 + 1e8],
             "ego_x": np.r_[0.0, 0.1, 0.1, np.arange(5) * 100.0 + 500], "ego_y": np.zeros(8)}
    g = knn_graph(x, np.arange(8), 4, progress=False)
    d = find_duplicates(g, x, keep_rank(np.arange(8), still["timestamp"]), hashes=hashes, still=still,
                        near_threshold_value=0.999)
    to_roots(d, x)
    line = {int(r): (str(k), int(link), int(root)) for r, k, link, root in zip(d.rows, d.kinds, d.links, d.keep_rows)}
    assert line[2] == ("exact", 1, 0) and line[1] == ("still", 0, 0)
    cols = d.with_ids(np.arange(8) + 100)
    at = list(cols["id"]).index(102)
    assert cols["keep_id"][at] == 100 and cols["repeats_id"][at] == 101 and cols["repeats_cosine"][at] == 1.0


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
    assert dict(zip(d.rows.tolist(), d.links.tolist(), strict=True)) == {1: 0}


def _still(x, pose_x, **kw):
    n = len(x)
    return still_duplicates(x, scene=np.array(["s"] * n, object), channel=np.array(["CAM_FRONT"] * n, object),
                            ego_y=np.zeros(n), ego_x=pose_x, **{"timestamp": np.arange(n) * 500_000, **kw})


def test_still_is_its_own_rule_pose_time_gap_and_cosine():
    rng = np.random.default_rng(1)
    x = clustered(12, seed=2)
    x[1:6] = plant(x, np.zeros(5, int), 0.3)  # frames 0-5: the same view, traffic passing (cosine ~0.95)
    x[7:12] = plant(x, np.full(5, 6), 0.3)
    assert 0.9 < float(np.min(x[1:6] @ x[0])) < 0.99  # below any near threshold, above the still cosine
    pose_x = np.r_[np.full(6, 10.0) + rng.normal(0, 0.02, 6), 10.0 + np.arange(6) * 2.0]  # parked, then driving
    d = _still(x, pose_x)
    assert d.rows.tolist() == [1, 2, 3, 4, 5] and (d.links == 0).all() and set(d.kinds) == {"still"}
    assert d.info["still_cosine"] == 0.9 and d.info["still_gap_s"] == 1.5
    creep = _still(x, np.arange(12) * 0.3)
    assert creep.rows.tolist() == [1, 3, 5, 7, 9, 11]  # 0.3 m a frame: only every other frame is within 0.5 m
    strict = _still(x, pose_x, still_cosine=0.999)  # the view must not change at all: nothing stands still
    assert strict.rows.tolist() == []
    gap = _still(x, pose_x, timestamp=np.r_[np.arange(3) * 500_000, 10_000_000 + np.arange(9) * 500_000])
    assert gap.rows.tolist() == [1, 2, 4, 5]  # frames 3-5 follow a 9 s gap: a new standstill starts at 3
    with pytest.raises(UsageError, match="still metres -1 is out of range; use a distance in metres > 0"):
        _still(x, pose_x, still_metres=-1)
