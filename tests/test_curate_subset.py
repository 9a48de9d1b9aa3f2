"""The subset for a labelling loop (``job.curate.select``, ``cover``, ``greedy``, ``strata``, ``subset``): the batched
engine makes the plain greedy's picks, labelled images warm-start it (none of them nor their duplicates picked
again, the radius no worse than a fresh pick's), shares are honoured within one pick, ``--min-gap-s`` keeps picks
of a scene and camera apart."""
from __future__ import annotations

import numpy as np
import pytest
from curate_data import clustered, plant

from job.config import CurateConfig
from job.curate import Strata, find_duplicates, keep_rank, knn_graph, quotas, select_diverse, to_roots, weights
from job.curate.cover import FarthestFirst
from job.curate.greedy import TimeGaps
from job.curate.subset import SubsetPlan, match_labelled
from job.errors import UsageError


def _radius(x: np.ndarray, points: np.ndarray, centres: np.ndarray) -> float:
    """Largest distance from a point to its nearest centre (brute force, float64)."""
    d = np.linalg.norm(x[points, None, :].astype(np.float64) - x[None, centres, :], axis=2)
    return float(d.min(axis=1).max())


def _reference(x: np.ndarray, cand: np.ndarray, codes: np.ndarray, quota: np.ndarray, first: int,
               group: np.ndarray | None = None, t: np.ndarray | None = None, gap: float = 0.0) -> list[int]:
    """Plain greedy k-center: one pass per pick over every point, quotas and gaps checked row by row."""
    dist = np.full(len(x), np.inf)
    taken = np.zeros(len(quota), int)
    ok = cand.copy()
    picks: list[int] = []
    p = first
    while p >= 0 and len(picks) < quota.sum():
        picks.append(p)
        taken[codes[p]] += 1
        ok[p] = False
        if group is not None and t is not None:
            ok &= ~((group == group[p]) & (np.abs(t - t[p]) < gap))
        dist = np.minimum(dist, np.linalg.norm(x - x[p], axis=1))
        eligible = ok & (taken[codes] < quota[codes])
        p = int(np.argmax(np.where(eligible, dist, -np.inf))) if eligible.any() else -1
    return picks


def test_the_batched_engine_picks_what_the_plain_greedy_picks():
    x = clustered(900, seed=11)
    first = 17
    for size, pending in ((8, 3), (64, 512), (4096, 512)):  # tiny candidate sets force uncertified picks and passes
        eligible = np.ones(900, bool)
        engine = FarthestFirst(x, None, eligible, candidates=size, max_pending=pending)
        picks = [first]
        eligible[first] = False
        engine.add(first)
        for _ in range(59):
            p = engine.farthest()
            picks.append(p)
            eligible[p] = False
            engine.add(p)
        assert picks == _reference(x, np.ones(900, bool), np.zeros(900, int), np.array([60]), first)
        assert engine.passes >= (10 if size == 8 else 1)
    # the nearest centre it reports is the true nearest one
    near = engine.nearest_centre()
    d = np.linalg.norm(x[:, None, :] - x[None, picks, :], axis=2)
    np.testing.assert_array_equal(near, np.asarray(picks)[d.argmin(axis=1)])


def test_quotas_and_gaps_pick_what_a_plain_greedy_with_the_same_rules_picks():
    x = clustered(700, seed=12)
    codes = np.repeat([0, 1, 2], [400, 200, 100])
    group = np.arange(700) // 50  # 14 scenes-and-cameras of 50 frames, 0.5 s apart
    t = (np.arange(700) % 50) * 0.5
    s = select_diverse(x, np.arange(700), 30, balance={"c": codes}, gap=TimeGaps(group, t, 2.0), progress=False)
    first = int(s.rows[0])
    quota = np.array([s.quotas[f"c={v}"] for v in range(3)])
    assert s.rows.tolist() == _reference(x, np.ones(700, bool), codes, quota, first, group, t, 2.0)


def test_continuing_from_the_first_picks_gives_the_rest_of_a_fresh_selection():
    x = clustered(1500, seed=13)
    ids = np.arange(1500) + 1000
    dups = np.zeros(1500, bool)
    dups[::7] = True
    fresh = select_diverse(x, ids, 50, exclude=dups, progress=False)
    labelled = np.zeros(1500, bool)
    labelled[fresh.rows[:20]] = True
    cont = select_diverse(x, ids, 30, exclude=dups, labelled=labelled, progress=False)
    assert cont.rows.tolist() == fresh.rows[20:].tolist()
    assert cont.radius_cosine == pytest.approx(fresh.radius_cosine, abs=1e-5)  # labelled + picks cover like fresh 50
    np.testing.assert_allclose(cont.coverage_cosine, fresh.coverage_cosine[20:], atol=1e-5)
    assert cont.info["labelled"] == 20 and not np.isnan(cont.coverage_cosine[0])


def _planted(seed: int = 14) -> tuple[np.ndarray, np.ndarray]:
    base = clustered(1200, seed=seed)
    sources = np.arange(0, 1200, 12)  # 100 images with a copy each
    return np.concatenate([base, plant(base, sources, 0.02, seed=seed)]), sources


def test_labelled_images_and_their_duplicates_are_not_picked_and_coverage_is_no_worse(tmp_path):
    x, sources = _planted()
    n = len(x)
    ids = np.arange(n, dtype=np.int64) * 3 + 5
    graph = knn_graph(x, ids, 10, progress=False)
    dups = find_duplicates(graph, x, keep_rank(ids), near_threshold_value=0.99)
    to_roots(dups, x)
    keep = dups.roots()[0]
    rng = np.random.default_rng(0)
    labelled_rows = np.concatenate([rng.choice(1200, 60, replace=False), 1200 + rng.choice(100, 20, replace=False)])
    f = tmp_path / "labelled.txt"
    f.write_text("# round 1\n" + "\n".join(str(i) for i in ids[labelled_rows]) + "\n\nnot-an-image.jpg\n")
    cfg = CurateConfig(select=80, labelled=str(f))
    plan = SubsetPlan.prepare(cfg, ids, {"path": np.array([f"img/{i}.jpg" for i in range(n)], object)})
    s = plan.select(x, ids, dups.rows, keep, graph.rows, graph.cosines, 0.99, progress=False)
    assert s.info["labelled"] == {"file": str(f), "entries": 81, "matched": 80, "unmatched": 1,
                                  "duplicates_avoided": s.info["labelled"]["duplicates_avoided"]}
    picks = set(s.rows.tolist())
    assert not picks & set(labelled_rows.tolist())
    cos = x[s.rows] @ x[labelled_rows].T
    assert cos.max() < 0.99  # no pick repeats a labelled image (exact cosines, every pair)
    copies_of_labelled = {int(r) for r, k in zip(dups.rows, keep) if k in labelled_rows or r in labelled_rows}
    keep_of = dict(zip(dups.rows.tolist(), keep.tolist()))
    roots_of_labelled = {keep_of.get(int(r), int(r)) for r in labelled_rows} - set(labelled_rows.tolist())
    assert roots_of_labelled and not picks & (copies_of_labelled | roots_of_labelled)
    assert s.info["labelled"]["duplicates_avoided"] >= len(roots_of_labelled)
    # the continued selection covers the union at least as well as a fresh 80 that ignores what was labelled
    unique = np.setdiff1d(np.arange(n), dups.rows)
    fresh = select_diverse(x, ids, 80, exclude=dups.mask(n), progress=False)
    mine = _radius(x, unique, np.concatenate([labelled_rows, s.rows]))
    theirs = _radius(x, unique, np.concatenate([labelled_rows, fresh.rows]))
    assert mine <= theirs
    assert s.radius() == pytest.approx(_radius(x, np.union1d(unique, labelled_rows),
                                               np.concatenate([labelled_rows, s.rows])), abs=1e-4)


def test_labelled_entries_match_by_token_path_id_and_unique_file_name(tmp_path):
    ids = np.array([11, 22, 33, 44], np.int64)
    meta = {"sample_data_token": np.array(["t1", "t2", None, "t4"], object),
            "path": np.array(["samples/A/a.jpg", "samples/B/b.jpg", "samples/C/c.jpg", "sweeps/C/c.jpg"], object)}
    rows = match_labelled("line", ["t2", "samples/A/a.jpg", "44", "/data/nuscenes/samples/B/b.jpg", "c.jpg", "zz"],
                          ids, meta)
    assert rows.tolist() == [1, 0, 3, 1, -1, -1]  # c.jpg names two images: no match
    assert match_labelled("id", ["33"], ids, meta).tolist() == [2]
    wrong = tmp_path / "other_run.txt"
    wrong.write_text("t9\n")
    with pytest.raises(UsageError, match="none of its 1 entries names an image of this run.*e.g. 't9'"):
        SubsetPlan.prepare(CurateConfig(select=2, labelled=str(wrong)), ids, meta)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"rank": [0, 1], "sample_data_token": ["t4", "t1"], "path": ["x", "y"]}),
                   tmp_path / "selection.parquet")  # an earlier round's selection.parquet: its tokens
    plan = SubsetPlan.prepare(CurateConfig(select=2, labelled=str(tmp_path / "selection.parquet")), ids, meta)
    assert plan.labelled is not None and np.nonzero(plan.labelled)[0].tolist() == [0, 3]


@pytest.mark.parametrize(("shares", "expected"), [
    ("equal", {"a": 40 / 3, "b": 40 / 3, "c": 40 / 3}),
    ((("loc", "a", 0.5), ("loc", "b", 0.1)), {"a": 20, "b": 4, "c": 16}),  # c, not named, gets the rest
    ((("loc", "c", 0.2),), {"a": 32 * 600 / 900, "b": 32 * 300 / 900, "c": 8}),  # a and b share the rest by images
    ("proportional", {"a": 24, "b": 12, "c": 4}),
])
def test_shares_are_honoured_within_one_pick(shares, expected):
    x = clustered(1000, seed=15)
    loc = np.repeat(np.array(["a", "b", "c"], object), [600, 300, 100])
    s = select_diverse(x, np.arange(1000), 40, balance={"loc": loc}, shares=shares, progress=False)
    got = {v: int(np.sum(loc[s.rows] == v)) for v in "abc"}
    assert sum(got.values()) == 40
    for v, target in expected.items():
        assert abs(got[v] - target) <= 1, (v, got, expected)
    assert {c.stratum: c.picks for c in s.strata} == {f"loc={v}": got[v] for v in "abc"}
    assert all(abs(c.quota - c.target) < 1 for c in s.strata)


def test_a_share_larger_than_the_images_goes_to_the_others_and_two_columns_multiply():
    counts = np.array([5, 500, 500])
    strata = Strata(np.repeat([0, 1, 2], counts), ["v=a", "v=b", "v=c"], ("v",), [("a",), ("b",), ("c",)])
    w = weights(strata, counts, (("v", "a", 0.5),))
    targets: list[np.ndarray] = []
    q = quotas(strata.codes, 40, w, min_one=False, targets_out=targets)
    assert q.tolist()[0] == 5 and q.sum() == 40 and abs(q[1] - q[2]) <= 1  # a holds 5: its other 15 go to b and c
    two = Strata(np.repeat([0, 1, 2, 3], 100), ["", "", "", ""], ("loc", "cam"),
                 [("a", "F"), ("a", "B"), ("b", "F"), ("b", "B")])
    w2 = weights(two, np.full(4, 100), (("loc", "a", 0.8), ("cam", "F", 0.25)))
    np.testing.assert_allclose(w2, [0.8 * 0.25, 0.8 * 0.75, 0.2 * 0.25, 0.2 * 0.75])
    with pytest.raises(UsageError, match="no image to pick has that loc; valid values: a, b"):
        weights(two, np.full(4, 100), (("loc", "z", 0.5),))
    with pytest.raises(UsageError, match="strata with a share hold only 5 images"):
        quotas(strata.codes, 40, weights(strata, counts, (("v", "a", 1.0),)), min_one=False)


def test_min_gap_keeps_picks_of_a_scene_and_camera_apart_and_says_when_it_runs_short():
    x = clustered(600, seed=16)
    group = np.arange(600) // 100  # 6 scene-cameras of 100 frames at 2 Hz (t = 0 ... 49.5 s)
    t = (np.arange(600) % 100) * 0.5
    labelled = np.zeros(600, bool)
    labelled[[10, 250]] = True
    s = select_diverse(x, np.arange(600), 60, labelled=labelled, gap=TimeGaps(group, t, 2.0), progress=False)
    rows = np.concatenate([s.rows, [10, 250]])
    for i in rows:  # picks and labelled images of one scene-camera: 2 s apart or more
        same = rows[(group[rows] == group[i]) & (rows != i)]
        assert np.all(np.abs(t[same] - t[i]) >= 2.0)
    assert s.shortfall == 0 and len(s.rows) == 60  # a greedy packing leaves >= 12 per scene-camera at 2 s
    short = select_diverse(x, np.arange(600), 100, gap=TimeGaps(group, t, 10.0), progress=False)
    assert short.shortfall == 100 - len(short.rows) and 18 <= len(short.rows) <= 30  # 3 to 5 per 50 s at 10 s
    # a stratum the gap empties gives its picks to the others: "one" holds 10 s of one scene-camera (5 picks at most)
    loc = np.where((group == 0) & (t < 10), "one", "many").astype(object)
    s2 = select_diverse(x, np.arange(600), 40, balance={"loc": loc}, shares="equal", gap=TimeGaps(group, t, 2.0),
                        progress=False)
    assert len(s2.rows) == 40 and s2.shortfall == 0 and np.sum(loc[s2.rows] == "one") <= 5
    assert s2.quotas["loc=many"] >= 35
