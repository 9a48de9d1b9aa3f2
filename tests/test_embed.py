"""The embed/run commands end to end: seed command, outputs, bad files, errors, resume after SIGKILL."""
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

from conftest import TEST_MODEL, jpeg_bytes
from job.cli import main
from job.runfolder import path_id

REPO = Path(__file__).resolve().parents[1]


def _rows(parquet: Path) -> dict[str, dict]:
    t = pq.read_table(parquet)
    return {r["path"]: r for r in t.to_pylist()}


@pytest.mark.skipif(bool(__import__("torch").cuda.is_available()), reason="needs a machine without CUDA")
def test_device_cuda_fails_fast_in_status(image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``job run --device cuda`` without a GPU: exit 2 before the source or the model is touched, ``_STATUS`` failed
    with the reason (what the cloud run shows), and no data written."""
    out = tmp_path / "run"
    t0 = time.perf_counter()
    rc = main(["run", "--model", TEST_MODEL, "--pretrained", "none", "--image-dir", str(image_dir), "--out", str(out),
               "--device", "cuda", "--no-progress"])
    assert rc == 2 and time.perf_counter() - t0 < 10
    assert "--device cuda: torch" in capsys.readouterr().err
    status = json.loads((out / "_STATUS").read_text())
    assert status["status"] == "failed" and "sees no CUDA device" in status["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["_STATUS"]


@pytest.fixture()
def messy_dir(image_dir: Path) -> Path:
    """image_dir plus a zero-byte file, a truncated JPEG, a text file named .jpg and a non-image file."""
    (image_dir / "CAM_FRONT" / "zero.jpg").write_bytes(b"")
    (image_dir / "CAM_FRONT" / "truncated.jpg").write_bytes(jpeg_bytes(320, 180, seed=50)[:1500])
    (image_dir / "CAM_BACK" / "notes.jpg").write_bytes(b"hello, not a jpeg")
    (image_dir / "CAM_BACK" / "readme.txt").write_text("ignored: not an image extension")
    return image_dir


def test_seed_command(image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The product brief's exact command (with offline random weights) writes the parquet."""
    monkeypatch.chdir(tmp_path)
    rc = main(["embed", "--model", "vit_b_32", "--pretrained", "none", "--image-dir", str(image_dir),
               "--image-size", "224", "--pool", "mean", "--batch-size", "8", "--out", "vectors/embeddings.parquet",
               "--no-progress"])
    assert rc == 0
    table = pq.read_table("vectors/embeddings.parquet")
    assert table.num_rows == 12
    assert table.schema.names[:5] == ["id", "path", "embedding", "width", "height"]
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[512]"
    assert str(table.schema.field("id").type) == "int64"
    rows = table.to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(
        f"{'CAM_FRONT' if i % 2 == 0 else 'CAM_BACK'}/frame_{i:03d}.jpg" for i in range(12))
    for r in rows:
        assert r["id"] == path_id(r["path"]) and (r["width"], r["height"]) == (320, 180)
        assert abs(np.linalg.norm(r["embedding"]) - 1.0) < 1e-5
    assert len({r["id"] for r in rows}) == 12
    manifest = json.loads(Path("vectors/manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["model"]["name"] == "ViT-B-32" and manifest["model"]["pool"] == "mean"
    assert manifest["counts"]["seen"] == 12 and manifest["counts"]["embedded"] == 12
    assert manifest["config"]["decode"]["resize_mode"] == "pad"
    assert len(manifest["model"]["weights_sha256"]) == 64
    assert {"torch", "open-clip-torch", "pyarrow"} <= set(manifest["versions"])
    assert manifest["images_per_s"] > 0
    assert pq.read_table("vectors/failures.parquet").num_rows == 0


def test_bad_files_go_to_failures(messy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["embed", *TEST_MODEL, "--image-dir", str(messy_dir), "--out", str(out), "--batch-size", "4",
               "--workers", "2", "--npy", "--thumbnails", "--no-progress"])
    assert rc == 0
    failures = {r["path"]: r["reason"] for r in pq.read_table(out / "failures.parquet").to_pylist()}
    assert failures.keys() == {"CAM_FRONT/zero.jpg", "CAM_FRONT/truncated.jpg", "CAM_BACK/notes.jpg"}
    assert "empty" in failures["CAM_FRONT/zero.jpg"]
    assert "truncated" in failures["CAM_FRONT/truncated.jpg"]
    assert "not an image" in failures["CAM_BACK/notes.jpg"]
    emb = pq.read_table(out / "embeddings.parquet")
    assert emb.num_rows == 12
    npy = np.load(out / "embeddings.npy")
    np.testing.assert_array_equal(npy, np.stack(emb.column("embedding").to_pylist()).astype(np.float32))
    thumbs = pq.read_table(out / "thumbnails.parquet")
    assert sorted(thumbs.column("id").to_pylist()) == sorted(emb.column("id").to_pylist())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] | {} == manifest["counts"] and manifest["counts"]["failed"] == 3
    assert manifest["counts"]["seen"] == 15


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "ViT-Q-99"], "unknown model 'ViT-Q-99'; valid choices:"),
        (["--pretrained", "laion9000"], "unknown pretrained tag 'laion9000' for ViT-B-32; valid choices:"),
        (["--pool", "max"], "unknown pool 'max'; valid choices: mean, cls"),
        (["--resize-mode", "zoom"], "unknown resize mode 'zoom'; valid choices: pad, crop, squash"),
        (["--precision", "int4"], "unknown precision 'int4'; valid choices: auto, fp32, fp16, bf16"),
        (["--batch-size", "0"], "must be a positive integer"),
        (["--channels", "CAM_ROOF"], "--channels 'CAM_ROOF' is not a channel; valid choices: CAM_FRONT"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(image_dir: Path, tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "out"
    base = ["embed", "--model", "ViT-B-32", "--pretrained", "none", "--image-dir", str(image_dir), "--out", str(out)]
    # later flags win in argparse, so appending overrides the defaults above
    with pytest.raises(SystemExit) as exc_info:
        rc = main(base + args)
        raise SystemExit(rc)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("make_dir", ["missing", "empty", "file"])
def test_missing_or_empty_input_is_a_clear_error(tmp_path: Path, capsys, make_dir: str) -> None:
    src = tmp_path / "src"
    if make_dir == "empty":
        src.mkdir()
        (src / "notes.txt").write_text("no images here")
    elif make_dir == "file":
        src.write_text("x")
    out = tmp_path / "out"
    rc = main(["embed", *TEST_MODEL, "--image-dir", str(src), "--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(src) in err and ("does not exist" in err or "holds no" in err or "not a .tgz/.tar archive" in err)
    assert not (out / "manifest.json").exists()


def test_other_options_refuse_to_resume(image_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    base = ["embed", *TEST_MODEL, "--image-dir", str(image_dir), "--out", str(out), "--no-progress"]
    assert main(base) == 0
    assert main(base + ["--pool", "cls"]) == 2
    # --pool cls also drops the embedding_trained column (embedding is the CLS vector): both are named
    assert "holds a run made with other options (pool, text_vectors)" in capsys.readouterr().err
    assert main(base + ["--pool", "cls", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["model"]["pool"] == "cls"


def test_rerun_of_finished_run_embeds_nothing_new(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["embed", *TEST_MODEL, "--image-dir", str(image_dir), "--out", str(out), "--no-progress",
            "--shard-size", "5"]
    assert main(base) == 0
    first = _rows(out / "embeddings.parquet")
    assert main(base) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["embedded_this_attempt"] == 0
    assert manifest["counts"]["resumed_from_earlier_attempts"] == 12
    assert _rows(out / "embeddings.parquet").keys() == first.keys()


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cams").mkdir(parents=True)
    for i in range(40):
        (src / "cams" / f"img_{i:03d}.jpg").write_bytes(jpeg_bytes(320, 180, seed=100 + i))
    (src / "cams" / "broken.jpg").write_bytes(b"\xff\xd8broken")
    args = ["-m", "job", "embed", *TEST_MODEL, "--image-dir", str(src), "--batch-size", "4",
            "--shard-size", "8", "--workers", "0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    whole = tmp_path / "whole"
    subprocess.run([sys.executable, *args, "--out", str(whole)], check=True, env=env, cwd=REPO)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *args, "--out", str(killed)], env=env, cwd=REPO)
    parts = killed / "embeddings.parquet"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(parts.glob("part-*.parquet")))
    assert 2 <= n_before < 6, "the kill should land mid-run"
    assert not (killed / "manifest.json").exists()

    subprocess.run([sys.executable, *args, "--out", str(killed)], check=True, env=env, cwd=REPO)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["counts"]["resumed_from_earlier_attempts"] >= 16
    a, b = _rows(whole / "embeddings.parquet"), _rows(killed / "embeddings.parquet")
    table = pq.read_table(killed / "embeddings.parquet")
    assert table.num_rows == len(set(table.column("path").to_pylist())) == 40, "no duplicates, none missing"
    assert a.keys() == b.keys()
    for p in a:
        assert a[p]["id"] == b[p]["id"]
        np.testing.assert_allclose(a[p]["embedding"], b[p]["embedding"], atol=1e-5)
    assert [r["path"] for r in pq.read_table(killed / "failures.parquet").to_pylist()] == ["cams/broken.jpg"]
    assert not list(killed.rglob("*.tmp-*"))


def test_help_on_every_command(capsys) -> None:
    for cmd in ("run", "embed", "index", "search", "project", "publish", "models", "merge", "curate", "eval", "compare",
                "import", "serve", "status"):
        with pytest.raises(SystemExit) as exc_info:
            main([cmd, "--help"])
        assert exc_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_empty_source_leaves_no_run_behind(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    out = tmp_path / "out"
    assert main(["embed", *TEST_MODEL, "--image-dir", str(src), "--out", str(out), "--no-progress"]) == 2
    assert not out.exists() or not any(out.rglob("*"))
