"""``job curate`` / ``job run --curate`` on a run folder: the files of curation/, the manifest entry, the summary, the
export, and bad input (exit 2, nothing written) or an index that is not the run's (exit 1, the rebuild command)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from job.cli import main
from job.runfolder import read_vectors
from job.config import CurateConfig
from job.curate import FIFTYONE_COMMIT, STILL_METRES

QUIET = ["--no-progress", "--log-level", "WARNING"]


@pytest.fixture(scope="module")
def curated(curated_run: Path) -> Path:
    """The session's finished run (conftest): keyframes and sweeps embedded, indexed and curated with a balanced
    subset in one `job run`. Read-only: the tests that change a run copy it first."""
    return curated_run


def _code(argv: list[str]) -> int:
    """The exit code, whether argparse or the command decided it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _rows(run: Path, name: str) -> list[dict]:
    return pq.read_table(run / "curation" / name).to_pylist()


def test_a_curated_run_holds_every_file_and_says_what_it_did(curated: Path, nuscenes_dataroot) -> None:
    info = nuscenes_dataroot
    m = json.loads((curated / "manifest.json").read_text())
    c = m["curation"]
    n = m["counts"]["embedded"]
    assert c["n"] == n and m["outputs"]["curation"] == "curation" and m["timings"]["curation_s"] > 0
    assert set(c["files"]) == {"neighbours.parquet", "duplicates.parquet", "scores.parquet", "selection.parquet",
                               "nn_cosines.png"}
    assert c["graph"]["method"] == "exact" and c["graph"]["recall"] == 1.0 and c["k"] == 10
    assert c["graph"]["pair_recall"] == 1.0
    assert c["threshold"]["source"] == "auto" and c["threshold"]["rule"] and 0 < c["threshold"]["cosine"] <= 1
    assert c["threshold"]["found_mode"] and c["threshold"]["rows_below"] > 0 and c["threshold"]["flank"]["edges"]
    assert c["still_metres"] == STILL_METRES == CurateConfig().still_metres
    assert c["still_cosine"] == CurateConfig().still_cosine and c["still_gap_s"] == CurateConfig().still_gap_s
    assert c["uniqueness"]["method"] == "kept" and c["uniqueness"]["weights"] == [0.6, 0.3, 0.1]
    neighbours = _rows(curated, "neighbours.parquet")
    assert len(neighbours) == n and all(len(r["neighbours"]) == 10 == len(r["cosines"]) for r in neighbours)
    assert all(r["cosines"] == sorted(r["cosines"], reverse=True) for r in neighbours)
    dups = _rows(curated, "duplicates.parquet")
    assert c["unique"] == n - len(dups) and sum(c["duplicates"].values()) == len(dups)
    assert not {d["keep_id"] for d in dups} & {d["id"] for d in dups}  # keep_id: the image kept for the whole group
    vec = dict(zip(*read_vectors(str(curated / "embeddings.parquet"))[::-1]))
    for d in dups:  # the direct link: near within the threshold, still within the still rule's cosine
        cos = float(vec[d["id"]] @ vec[d["repeats_id"]])
        assert cos == pytest.approx(d["repeats_cosine"], abs=1e-5)
        assert cos >= (c["threshold"]["cosine"] if d["kind"] == "near" else c["still_cosine"]) - 1e-6
    # the scene whose ego pose never changes repeats itself: standing still, kept image the earliest of its camera
    emb = {r["id"]: r for r in pq.read_table(curated / "embeddings.parquet",
                                             columns=["id", "scene_token", "channel", "timestamp"]).to_pylist()}
    still = [d for d in dups if d["kind"] == "still"]
    assert still and all(emb[d["id"]]["scene_token"] == info.stationary_scene for d in still)
    assert all(emb[d["keep_id"]]["channel"] == emb[d["id"]]["channel"] for d in still)
    assert all(emb[d["keep_id"]]["timestamp"] < emb[d["id"]]["timestamp"] for d in still)
    scores = _rows(curated, "scores.parquet")
    assert len(scores) == n and max(r["uniqueness"] for r in scores) == pytest.approx(1.0)
    selection = _rows(curated, "selection.parquet")
    assert [r["rank"] for r in selection] == list(range(24)) and all(r["sample_data_token"] for r in selection)
    assert not {r["id"] for r in selection} & {d["id"] for d in dups}  # the subset is picked among unique images
    exported = (curated.parent / "to_label.txt").read_text().splitlines()
    assert exported == [r["sample_data_token"] for r in selection]
    assert (curated / "curation" / "nn_cosines.png").read_bytes()[:4] == b"\x89PNG"


def test_curate_again_with_a_given_threshold_and_no_subset(curated: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(curated, run)
    assert main(["curate", "--run", str(run), "--near-threshold", "0.999", *QUIET]) == 0
    out = capsys.readouterr().out
    assert "near threshold: cosine >= 0.9990 (given: cosine >= 0.999)" in out and "repeat another" in out
    c = json.loads((run / "manifest.json").read_text())["curation"]
    assert c["threshold"]["source"] == "given" and c["selection"] is None
    assert not (run / "curation" / "selection.parquet").exists()  # the earlier subset is not this curation's


def test_curate_through_the_partition_with_fiftyones_uniqueness(curated: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(curated, run)
    before = {d["id"] for d in _rows(curated, "duplicates.parquet")}
    assert main(["curate", "--run", str(run), "--knn-method", "partition", "--uniqueness", "fiftyone", *QUIET]) == 0
    out = capsys.readouterr().out
    assert "k-NN graph: partition, k=10, pair recall" in out and "uniqueness: fiftyone-brain's" in out
    c = json.loads((run / "manifest.json").read_text())["curation"]
    g = c["graph"]
    assert g["method"] == "partition" and g["pair_recall"] >= 0.99 and g["target_met"] and g["lists"] >= 1
    assert g["tuning"] and g["pair_threshold"] == pytest.approx(c["threshold"]["cosine"])
    assert c["uniqueness"]["method"] == "fiftyone" and c["uniqueness"]["commit"] == FIFTYONE_COMMIT
    assert {d["id"] for d in _rows(run, "duplicates.parquet")} == before  # the same duplicates as the exact graph


@pytest.mark.parametrize(("argv", "message"), [
    (["--select", "0"], "must be a positive integer"),
    (["--select", "100000"], "--select 100000 is out of range; use 1 to"),
    (["--near-threshold", "1.5"], "near-threshold '1.5' is outside (0, 1]"),
    (["--near-threshold", "often"], "'often' is not understood; use auto or a cosine in (0, 1]"),
    (["--select", "3", "--balance", "weather"], "balance column 'weather' unknown; valid choices:"),
    (["--still-metres", "-1"], "--still-metres -1.0 is out of range"),
    (["--k", "1"], "'1' must be 4 or more"),
    (["--still-cosine", "2"], "--still-cosine 2.0 is outside (0, 1]"),
    (["--uniqueness", "lightly"], "unknown uniqueness 'lightly'"),
    (["--uniqueness-weights", "0.5,x"], "--uniqueness-weights 'x' is not a number"),
    (["--uniqueness", "fiftyone", "--k", "4", "--uniqueness-weights", "1,1,1,1"], "reads 5 neighbours; --k 4"),
    (["--balance", "channel"], "--balance shapes the subset: give --select N too"),
    (["--balance", "channel", "--export", "x.txt"], "--balance and --export shape the subset: give --select N too"),
])
def test_bad_input_exits_2_and_writes_nothing(curated: Path, tmp_path: Path, capsys, argv, message) -> None:
    run = tmp_path / "run"
    shutil.copytree(curated, run)
    shutil.rmtree(run / "curation")
    before = (run / "manifest.json").read_text()
    assert _code(["curate", "--run", str(run), *argv, *QUIET]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and message in err[0], err
    assert not (run / "curation").exists() and (run / "manifest.json").read_text() == before


def test_a_run_without_vectors_and_an_index_of_other_vectors(curated: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["curate", "--run", str(empty), *QUIET]) == 2
    run = tmp_path / "run"
    shutil.copytree(curated, run)
    parts = sorted((run / "embeddings.parquet").iterdir())
    parts[0].unlink()  # the index now holds vectors the embeddings do not
    capsys.readouterr()
    assert main(["curate", "--run", str(run), "--knn-method", "index", *QUIET]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "does not match its embeddings" in err[0]
    assert f"python -m job index --run {run}" in err[0]
