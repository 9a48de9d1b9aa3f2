"""A curated run's subset scored on the rare categories it captures, against random subsets of the same size: the
exact formulas equal simulated random subsets, and the curated run of the test session carries the record."""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from job.cli import main
from job.eval.selection import score_selection
from job.runfolder import RunLayout, read_manifest


def _labels(cats: list[list[str]]) -> pa.Table:
    return pa.table({"id": pa.array(range(len(cats)), pa.int64()), "categories": pa.array(cats, pa.list_(pa.string()))})


def test_random_subset_numbers_equal_simulation():
    rng = np.random.default_rng(5)
    n_img, rows, m = 400, 700, 60
    names = ["common", "rare_a", "rare_b", "rare_c"]
    share = {"common": 0.4, "rare_a": 0.01, "rare_b": 0.02, "rare_c": 0.005}
    cats = [[c for c in names if rng.random() < share[c]] for _ in range(n_img)]
    labels = _labels(cats)
    chosen = rng.choice(rows, size=m, replace=False)
    rec = score_selection(chosen, labels, rows, rare_share=0.05)
    assert rec["rare_categories"] == 3 and "common" not in rec["categories"]
    rare_rows = np.array([any(c != "common" for c in cs) for cs in cats] + [False] * (rows - n_img))
    assert rec["rare_images_in_subset"] == int(rare_rows[chosen].sum())
    trials = 20000
    draws = np.argsort(rng.random((trials, rows)), axis=1)[:, :m]
    got = rare_rows[draws].sum(axis=1)
    assert rec["random_rare_images_mean"] == pytest.approx(got.mean(), abs=4 * got.std() / np.sqrt(trials))
    assert rec["random_rare_images_sd"] == pytest.approx(got.std(), rel=0.03)
    assert rec["p_value"] == pytest.approx((got >= rec["rare_images_in_subset"]).mean(), abs=0.01)
    hits = np.zeros(trials)
    for c in rec["categories"]:
        member = np.array([c in cs for cs in cats] + [False] * (rows - n_img))
        any_hit = member[draws].any(axis=1)
        hits += any_hit
        assert rec["categories"][c]["random_hits_any"] == pytest.approx(any_hit.mean(), abs=0.015)
    assert rec["random_rare_categories_hit_mean"] == pytest.approx(hits.mean(), abs=0.03)


def test_curated_run_records_its_subset_against_random_ones(curated_run, tmp_path, capsys):
    """The session's curated run (``--select 24``) was evaluated by ``job run``; ``job eval --rare-share`` scores it
    again with another notion of rare and prints the comparison."""
    m = read_manifest(RunLayout(str(curated_run)))
    assert m.eval is not None and m.eval.selection is not None
    assert m.eval.selection["subset"] == 24 and m.eval.selection["rows"] == m.counts.embedded
    run = tmp_path / "run"
    shutil.copytree(curated_run, run)
    assert main(["eval", "--run", str(run), "--rare-share", "0.1", "--min-positives", "3", "--no-progress",
                 "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "curated subset of 24" in out and "rare categories hit" in out
    rec = read_manifest(RunLayout(str(run))).eval.selection
    labels = pq.read_table(run / "eval" / "labels.parquet")
    selected = set(pq.read_table(run / "curation" / "selection.parquet")["id"].to_pylist())
    counts: dict[str, int] = {}
    for cs in labels["categories"].to_pylist():
        for c in cs:
            counts[c] = counts.get(c, 0) + 1
    rare = {c for c, k in counts.items() if k < 0.1 * labels.num_rows}
    assert set(rec["categories"]) == rare and rare
    in_subset = sum(1 for i, cs in zip(labels["id"].to_pylist(), labels["categories"].to_pylist())
                    if i in selected and rare & set(cs))
    assert rec["rare_images_in_subset"] == in_subset
