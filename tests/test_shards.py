"""Scale-out in the job: ``job run --shard I/N`` and ``job merge``; merged = unsplit (ids, vectors, metadata)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import TEST_MODEL
from job.cli import main
from job.runfolder import RunLayout
from job.runfolder import read_table
from nuscenes_fixture import make_nuscenes_fixture, pack_trainval_archives

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ["--channels", "CAM_FRONT,CAM_BACK"]  # 36 of the fixture's 108 keyframes: enough to split three ways
QUIET = ["--no-progress", "--log-level", "WARNING"]
N_IMAGES = 36

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The fixture dataroot, its trainval-style archives (3 keyframe archives + meta) and an unsplit run of them."""
    tmp = tmp_path_factory.mktemp("shards")
    info = make_nuscenes_fixture(tmp / "ds", split="v1.0-trainval")
    arch = pack_trainval_archives(info, tmp / "arch", parts=3)
    sources: list[str] = []
    for p in [*arch["keyframes"], *arch["meta"]]:
        sources += ["--source", str(p)]
    whole = tmp / "whole"
    assert main(["run", *sources, *TEST_MODEL, *CHANNELS, "--out", str(whole), "--no-index", "--no-project",
                 *QUIET]) == 0
    return {"info": info, "sources": sources, "whole": whole, "dataroot": info.root}


def _rows(run: Path | str) -> dict[int, dict]:
    t = read_table(RunLayout.for_output(str(run)).embeddings)
    rows = {r["id"]: r for r in t.to_pylist()}
    assert len(rows) == t.num_rows, "no duplicate ids"
    return rows


def _assert_same(merged: Path | str, whole: Path | str) -> None:
    a, b = _rows(merged), _rows(whole)
    assert a.keys() == b.keys() and len(a) == N_IMAGES
    vectors = [k for k in next(iter(b.values())) if k.startswith("embedding")]  # embedding, embedding_trained
    for i, row in b.items():
        for k in vectors:
            np.testing.assert_allclose(a[i][k], row[k], atol=1e-6)
        assert {k: v for k, v in a[i].items() if k not in vectors} == {k: v for k, v in row.items() if k not in vectors}


def _shards(out: Path | str, sources: list[str], n: int, *extra: str) -> None:
    for i in range(n):
        assert main(["run", *sources, *TEST_MODEL, *CHANNELS, "--out", str(out), "--shard", f"{i}/{n}",
                     *extra, *QUIET]) == 0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_merged_equals_unsplit_over_archives(data: dict, tmp_path: Path, n: int) -> None:
    out = tmp_path / "run"
    _shards(out, data["sources"], n)
    for i in range(n):
        m = json.loads((out / "shards" / str(i) / "manifest.json").read_text())
        assert m["source"]["shard"] == {"index": i, "count": n, "mode": "archives"}
        assert not (out / "shards" / str(i) / "index").exists(), "a shard is embeddings only"
    full = n == 2  # one case runs the whole ending (index + UMAP) like `job run`; the others only merge
    assert main(["merge", "--run", str(out), *([] if full else ["--no-index", "--no-project"]),
                 "--n-epochs", "20", *QUIET]) == 0
    _assert_same(out, data["whole"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["embedded"] == N_IMAGES and manifest["counts"]["failed"] == 0
    assert [s["index"] for s in manifest["source"]["shards"]] == list(range(n))
    assert (manifest["index"] is not None) == full and (manifest["projection"] is not None) == full
    if full:
        assert (out / "index" / "index.faiss").exists() and pq.read_table(out / "umap2d.parquet").num_rows == N_IMAGES
        assert main(["search", "--run", str(out), "--text", "night", "-k", "3", *QUIET]) == 0
    # merging again redoes it from the shards, with the same result
    assert main(["merge", "--run", str(out), "--no-index", "--no-project", *QUIET]) == 0
    _assert_same(out, data["whole"])


def test_hash_shards_of_a_folder_with_a_killed_and_resumed_shard(data: dict, tmp_path: Path) -> None:
    """A dataroot folder splits by a stable hash of the path; shard 1 is SIGKILLed mid-run and resumed."""
    out = tmp_path / "run"
    src = ["--source", str(data["dataroot"])]
    assert main(["run", *src, *TEST_MODEL, *CHANNELS, "--out", str(out), "--shard", "0/2", *QUIET]) == 0
    args = ["-m", "job", "run", *src, *TEST_MODEL, *CHANNELS, "--out", str(out), "--shard", "1/2",
            "--batch-size", "2", "--shard-size", "2", "--workers", "0", *QUIET]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=REPO)
    parts = out / "shards" / "1" / "embeddings.parquet"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(list(parts.glob("part-*.parquet"))) < N_IMAGES // 4, "the kill should land mid-shard"

    assert main(["merge", "--run", str(out), "--no-index", "--no-project", *QUIET]) == 1  # shard 1 unfinished
    assert not (out / "manifest.json").exists() and not (out / "embeddings.parquet").exists()

    subprocess.run([sys.executable, *args], check=True, env=env, cwd=REPO)
    m1 = json.loads((out / "shards" / "1" / "manifest.json").read_text())
    assert m1["counts"]["resumed_from_earlier_attempts"] >= 4 and m1["source"]["shard"]["mode"] == "hash"
    assert main(["merge", "--run", str(out), "--no-index", "--no-project", *QUIET]) == 0
    _assert_same(out, data["whole"])


def test_merge_names_the_missing_or_unfinished_shard(data: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["merge", "--run", str(out)]) == 2
    assert "has no shards/ folder" in capsys.readouterr().err
    assert main(["run", *data["sources"], *TEST_MODEL, *CHANNELS, "--out", str(out), "--shard", "2/3", *QUIET]) == 0
    (out / "shards" / "0").mkdir()  # started, never finished
    capsys.readouterr()
    assert main(["merge", "--run", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "shards/1 was never started" in err[0] and "shards/0 has not finished" in err[0]
    assert "--shard 0/3" in err[0]
    assert not (out / "manifest.json").exists() and not (out / "embeddings.parquet").exists()


@pytest.mark.parametrize("spec", ["3/2", "0/0", "x", "1/", "-1/2"])
def test_bad_shard_exits_2_and_writes_nothing(data: dict, tmp_path: Path, capsys, spec: str) -> None:
    out = tmp_path / "run"
    rc = main(["run", *data["sources"], *TEST_MODEL, "--out", str(out), f"--shard={spec}"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--shard {spec!r}" in err[0], err
    assert not out.exists()


@pytest.mark.s3
def test_shards_and_merge_on_s3(data: dict, s3_bucket: str) -> None:
    out = f"s3://{s3_bucket}/runs/sharded"
    _shards(out, data["sources"], 2)
    assert main(["merge", "--run", out, "--no-project", *QUIET]) == 0
    _assert_same(out, data["whole"])
    import s3fs

    fs = s3fs.S3FileSystem()
    assert fs.exists(f"{s3_bucket}/runs/sharded/manifest.json")
    assert fs.exists(f"{s3_bucket}/runs/sharded/index/index.faiss")
