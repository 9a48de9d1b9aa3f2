"""``job curate --select`` in a labelling loop, on the session's curated nuScenes run: round 2 continues from what
round 1 exported (``--labelled``), shares and ``--min-gap-s`` shape the subset, coverage per stratum is printed and
recorded; every bad option exits 2 before the k-NN graph is built, with nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import exit_code

from job.cli import main

QUIET = ["--no-progress", "--log-level", "WARNING"]



@pytest.fixture()
def run(curated_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's curated run (keyframes and sweeps of the generated nuScenes fixture)."""
    out = tmp_path / "run"
    shutil.copytree(curated_run, out)
    return out


def _meta(run: Path) -> dict[int, dict]:
    cols = ["id", "sample_data_token", "scene_token", "channel", "timestamp", "location"]
    return {r["id"]: r for r in pq.read_table(run / "embeddings.parquet", columns=cols).to_pylist()}


def test_a_second_round_continues_from_the_first(run: Path, tmp_path: Path, capsys) -> None:
    first = tmp_path / "round1.txt"
    assert main(["curate", "--run", str(run), "--select", "10", "--export", str(first), *QUIET]) == 0
    capsys.readouterr()
    second = tmp_path / "round2.txt"
    assert main(["curate", "--run", str(run), "--select", "10", "--labelled", str(first), "--export", str(second),
                 "--balance", "location", "--shares", "equal", *QUIET]) == 0
    out = capsys.readouterr().out
    r1, r2 = first.read_text().split(), second.read_text().split()
    assert len(r1) == len(r2) == 10 and not set(r1) & set(r2)
    dups = pq.read_table(run / "curation" / "duplicates.parquet").to_pylist()
    meta = _meta(run)
    token = {i: m["sample_data_token"] for i, m in meta.items()}
    group = {token[d["id"]]: token[d["keep_id"]] for d in dups}  # image -> its group's kept image
    assert not {group.get(t, t) for t in r1} & {group.get(t, t) for t in r2}  # no duplicate of a round-1 image
    c = json.loads((run / "manifest.json").read_text())["curation"]["selection"]
    assert c["labelled"]["matched"] == 10 and c["labelled"]["unmatched"] == 0 and c["shares"] == "equal"
    strata = {s["stratum"]: s for s in c["strata"]}
    assert sum(s["picks"] for s in strata.values()) == 10 and sum(s["labelled"] for s in strata.values()) == 10
    assert all(abs(s["picks"] - 10 / len(strata)) <= 1 for s in strata.values())
    assert all(s["radius_cosine"] is not None and s["radius_cosine"] <= 1 for s in strata.values())
    assert "continuing from 10 labelled" in out and "equal shares over location" in out
    for s in strata:
        assert f"  {s}: {strata[s]['picks']} picks" in out  # coverage per stratum, one line each
    sel = pq.read_table(run / "curation" / "selection.parquet").to_pylist()
    assert {r["stratum"] for r in sel} <= set(strata)
    # the same loop with the earlier selection.parquet as the labelled file
    (tmp_path / "r2.parquet").write_bytes((run / "curation" / "selection.parquet").read_bytes())
    assert main(["curate", "--run", str(run), "--select", "5", "--labelled", str(tmp_path / "r2.parquet"),
                 *QUIET]) == 0
    r3 = {r["sample_data_token"] for r in pq.read_table(run / "curation" / "selection.parquet").to_pylist()}
    assert not r3 & set(r2)


def test_min_gap_keeps_a_scene_and_camera_s_picks_apart(run: Path, capsys) -> None:
    assert main(["curate", "--run", str(run), "--select", "30", "--min-gap-s", "1.5", *QUIET]) == 0
    meta = _meta(run)
    picks = [meta[r["id"]] for r in pq.read_table(run / "curation" / "selection.parquet").to_pylist()]
    for a in picks:
        for b in picks:
            if a is not b and (a["scene_token"], a["channel"]) == (b["scene_token"], b["channel"]):
                assert abs(a["timestamp"] - b["timestamp"]) >= 1.5e6
    c = json.loads((run / "manifest.json").read_text())["curation"]["selection"]
    assert c["min_gap_s"] == 1.5 and c["n"] + c["shortfall"] == 30
    assert "picks of a scene and camera >= 1.5 s apart" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--k", "1"], "'1' must be 4 or more"),
    (["--k", "3"], "'3' must be 4 or more"),
    (["--select", "5", "--shares", "bogus"], "--shares 'bogus' is not understood; use proportional, equal, or"),
    (["--select", "5", "--shares", "location=x:1.5"], "location=x:1.5: the share is outside [0, 1]"),
    (["--select", "5", "--shares", "location=a:0.7,location=b:0.6"], "the shares of location sum to 1.3"),
    (["--select", "5", "--shares", "equal"], "--shares equal needs --balance COLUMNS"),
    (["--select", "5", "--shares", "weather=rain:0.5"], "balance column 'weather' unknown"),
    (["--select", "5", "--shares", "location=atlantis:0.5"], "--shares location=atlantis: no image of this run has"),
    (["--select", "5", "--labelled", "nowhere.txt"], "--labelled nowhere.txt does not exist"),
    (["--select", "5", "--labelled", "{other}"], "none of its 2 entries names an image of this run"),
    (["--select", "5", "--min-gap-s", "0"], "--min-gap-s 0.0 is out of range; use a time in s > 0"),
    (["--labelled", "x.txt"], "--labelled shapes the subset: give --select N too"),
    (["--min-gap-s", "3"], "--min-gap-s shapes the subset: give --select N too"),
])
def test_bad_subset_options_exit_2_before_the_graph_and_write_nothing(run: Path, tmp_path: Path, capsys, monkeypatch,
                                                                      argv, message) -> None:
    import job.curate.run as step

    def no_graph(*args, **kwargs):
        raise AssertionError("the k-NN graph was started before the options were checked")

    monkeypatch.setattr(step, "knn_graph", no_graph)
    other = tmp_path / "other.txt"
    other.write_text("feedc0ffee\nsamples/CAM_FRONT/not_this_run.jpg\n")
    shutil.rmtree(run / "curation")
    before = (run / "manifest.json").read_text()
    argv = [a.replace("{other}", str(other)) for a in argv]
    assert exit_code(["curate", "--run", str(run), *argv, *QUIET]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and message in err[0], err
    assert not (run / "curation").exists() and (run / "manifest.json").read_text() == before


def test_k_below_the_minimum_fails_when_the_command_is_parsed(tmp_path: Path, capsys) -> None:
    from job.config import CURATE_MIN_K, CurateConfig
    from job.errors import UsageError

    assert exit_code(["curate", "--run", str(tmp_path / "no-such-run"), "--k", "1", *QUIET]) == 2
    err = capsys.readouterr().err
    assert f"'1' must be {CURATE_MIN_K} or more" in err and "no-such-run" not in err  # before the run is looked at
    assert exit_code(["run", "--source", str(tmp_path), "--out", str(tmp_path / "o"), "--curate", "--k", "1",
                      *QUIET]) == 2
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError, match=f"--k 2 must be {CURATE_MIN_K} or more"):
        CurateConfig(k=2)
    assert CurateConfig(k=CURATE_MIN_K).k == CURATE_MIN_K


def test_the_labelled_file_may_be_on_s3(run: Path, s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    tokens = [r["sample_data_token"] for r in pq.read_table(run / "curation" / "selection.parquet").to_pylist()][:6]
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="labels/done.txt", Body="\n".join(tokens).encode())
    assert main(["curate", "--run", str(run), "--select", "6", "--labelled", f"s3://{s3_bucket}/labels/done.txt",
                 *QUIET]) == 0
    picked = {r["sample_data_token"] for r in pq.read_table(run / "curation" / "selection.parquet").to_pylist()}
    assert not picked & set(tokens)
    c = json.loads((run / "manifest.json").read_text())["curation"]["selection"]
    assert c["labelled"]["file"] == f"s3://{s3_bucket}/labels/done.txt" and c["labelled"]["matched"] == 6


def test_given_shares_on_the_run(run: Path) -> None:
    assert main(["curate", "--run", str(run), "--select", "12", "--shares", "location=boston-seaport:0.5",
                 *QUIET]) == 0
    c = json.loads((run / "manifest.json").read_text())["curation"]["selection"]
    assert c["shares"] == "given" and c["given_shares"] == {"location": {"boston-seaport": 0.5}}
    assert c["balance"] == ["location"]  # the column a share names is balanced
    meta = _meta(run)
    locs = [meta[r["id"]]["location"] for r in pq.read_table(run / "curation" / "selection.parquet").to_pylist()]
    assert abs(locs.count("boston-seaport") - 6) <= 1 and len(locs) == 12
