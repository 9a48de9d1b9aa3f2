"""Runs that survive interruption: graceful stop (SIGTERM → commit → exit 75 → resume), live _STATUS and
``job status``, and tag weights fetched once per account through a shared cache."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import TEST_MODEL, jpeg_bytes
from job.cli import main
from job.errors import DataError, Interrupted
from job.status import StatusWriter, read_status

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--no-progress", "--log-level", "WARNING"]


def _status(run: Path) -> dict:
    return json.loads((run / "_STATUS").read_text())


def test_a_finished_run_records_its_phases_and_progress(image_dir: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", "--source", str(image_dir), *TEST_MODEL, "--out", str(run), "--n-epochs", "20", *QUIET]) == 0
    doc = _status(run)
    assert doc["status"] == "succeeded" and doc["reason"] == ""
    assert [p["phase"] for p in doc["phases"]] == ["embed", "index", "project"]
    assert doc["progress"]["done"] == doc["progress"]["total"] == 12 and doc["progress"]["failed"] == 0
    capsys.readouterr()
    assert main(["status", str(run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "succeeded" and shown["log_tail"] == []
    assert main(["status", str(run), "--watch", "0.1"]) == 0  # already finished: returns at once
    text = capsys.readouterr().out
    assert "status  succeeded" in text and "12/12 (100.0%)" in text and "embed" in text


def test_status_writer_keeps_the_first_reason_and_the_previous_attempt(tmp_path: Path) -> None:
    w = StatusWriter.open(str(tmp_path))
    w.phase("embed")
    w.progress(10, 100, 1, 5.0, force=True)
    assert _status(tmp_path)["progress"] == {**_status(tmp_path)["progress"], "done": 10, "total": 100, "eta_s": 18}
    w.progress(20, 100, 1, 5.0)  # within PROGRESS_EVERY_S of the last one: not written
    assert _status(tmp_path)["progress"]["done"] == 10
    w.finish("interrupted", "spot interruption notice")
    w.finish("failed", "terminated by a signal")  # a later trap must not overwrite why it stopped
    assert (_status(tmp_path)["status"], _status(tmp_path)["reason"]) == ("interrupted", "spot interruption notice")
    again = StatusWriter.open(str(tmp_path))  # a new attempt (a new instance resuming the run)
    again.phase("embed")
    doc = _status(tmp_path)
    assert doc["status"] == "running" and doc["previous"]["reason"] == "spot interruption notice"


@pytest.mark.parametrize(("content", "code", "message"), [
    (None, 2, "holds no run status"),
    ("{not json", 1, "is corrupt (not JSON"),
    ('{"status": "sleeping"}', 1, "is corrupt (no valid status"),
])
def test_job_status_bad_input_is_one_line(tmp_path: Path, capsys, content: str | None, code: int, message: str) -> None:
    if content is not None:
        (tmp_path / "_STATUS").write_text(content)
    assert main(["status", str(tmp_path)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_job_status_unreachable_bucket_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "job", "status", "s3://some-bucket/runs/x/"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read s3://some-bucket/runs/x/_STATUS" in lines[0], done.stderr


def test_read_status_refuses_corrupt_documents(tmp_path: Path) -> None:
    (tmp_path / "_STATUS").write_text("[]")
    with pytest.raises(DataError):
        read_status(str(tmp_path))


@pytest.mark.slow
def test_sigterm_commits_exits_75_and_the_same_command_resumes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(48):
        (src / f"img_{i:03d}.jpg").write_bytes(jpeg_bytes(320, 180, seed=300 + i))
    args = ["-m", "job", "run", "--source", str(src), *TEST_MODEL, "--batch-size", "2", "--shard-size", "6",
            "--workers", "0", "--no-index", "--no-project", *QUIET]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    whole, run = tmp_path / "whole", tmp_path / "run"
    subprocess.run([sys.executable, *args, "--out", str(whole)], check=True, env=env, cwd=REPO)

    proc = subprocess.Popen([sys.executable, *args, "--out", str(run)], env=env, cwd=REPO)
    parts = run / "embeddings.parquet"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(parts.glob("part-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = proc.wait(timeout=60)
    assert rc == Interrupted.exit_code and time.monotonic() - t0 < 30
    doc = _status(run)
    assert doc["status"] == "interrupted" and "SIGTERM" in doc["reason"]
    committed = pq.read_table(parts).num_rows
    assert 6 <= committed < 48 and committed % 2 == 0, "the batch in flight is committed, nothing half-written"
    assert not (run / "manifest.json").exists() and not list(run.rglob("*.tmp-*"))

    subprocess.run([sys.executable, *args, "--out", str(run)], check=True, env=env, cwd=REPO)
    m = json.loads((run / "manifest.json").read_text())
    assert m["counts"]["resumed_from_earlier_attempts"] == committed and m["counts"]["embedded"] == 48
    a = {r["id"]: r["embedding"] for r in pq.read_table(whole / "embeddings.parquet").to_pylist()}
    b = pq.read_table(parts).to_pylist()
    assert len(b) == len({r["id"] for r in b}) == 48 and a.keys() == {r["id"] for r in b}
    for r in b:
        np.testing.assert_allclose(r["embedding"], a[r["id"]], atol=1e-5)
    assert _status(run)["status"] == "succeeded" and _status(run)["previous"]["status"] == "interrupted"


@pytest.mark.s3
def test_tag_weights_are_fetched_once_through_the_shared_cache(s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    import open_clip
    import torch

    from job.config import ModelConfig
    from job.model.load import load_model

    ckpt = tmp_path / "hub" / "open_clip_model.safetensors"
    ckpt.parent.mkdir()
    torch.manual_seed(7)
    from safetensors.torch import save_file

    state = open_clip.create_model("ViT-B-32", pretrained=None).state_dict()
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(ckpt))  # half the bytes to move through moto
    downloads: list[str] = []

    def fake_hub(cfg: dict, prefer_hf_hub: bool = True, cache_dir: str | None = None) -> str:
        downloads.append(cfg.get("hf_hub", ""))  # stands in for the network: the hub is not reachable here
        return str(ckpt)

    monkeypatch.setattr(open_clip, "download_pretrained", fake_hub)
    cache = f"s3://{s3_bucket}/cache/weights"
    cfg = ModelConfig(model="ViT-B-32", pretrained="laion2b-s34b-b79k", device="cpu", weights_cache=cache,
                      cache_dir=str(tmp_path / "local-cache"))
    first = load_model(cfg)
    assert len(downloads) == 1
    import s3fs

    stored = s3fs.S3FileSystem().ls(f"{s3_bucket}/cache/weights/ViT-B-32/laion2b_s34b_b79k/")
    assert [p.rsplit("/", 1)[-1] for p in stored] == ["open_clip_model.safetensors"]
    second = load_model(ModelConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "other-machine")}))
    assert len(downloads) == 1, "the second run loads from the shared cache, not the hub"
    assert first.weights_sha256 == second.weights_sha256
    pcfg = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    assert second.mean == tuple(pcfg["mean"]) and second.std == tuple(pcfg["std"])
