"""One writer per output (the lease), parts that cannot clobber each other, and completeness before "succeeded"."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import TEST_MODEL, jpeg_bytes
from job import fsutil
from job.cli import main
from job.errors import DataError
from job.runfolder import Lease, LeaseHeld, LeaseInfo, LeaseLost
from job.embed.resume import check_complete, prepare_run, settle
from job.runfolder import RunLayout
from job.embed.parts import PartWriter
from job.runfolder import embedding_schema
from job.runfolder import PartKey, list_parts, read_vectors

REPO = Path(__file__).resolve().parents[1]
FAST = [*TEST_MODEL, "--image-size", "64", "--no-progress", "--log-level", "WARNING"]


def _images(root: Path, n: int) -> Path:
    for i in range(n):
        sub = root / ("CAM_FRONT" if i % 2 else "CAM_BACK")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:04d}.jpg").write_bytes(jpeg_bytes(160, 90, seed=i, quality=70))
    return root


def _paths_once(out: str, n: int) -> None:
    """Every image of the source exactly once in the embeddings, none in the failures."""
    fs, path = fsutil.url_to_fs(out)
    emb = pq.read_table(f"{path}/embeddings.parquet", columns=["path"], filesystem=fs).column("path").to_pylist()
    assert len(emb) == n and len(set(emb)) == n
    _, ids = read_vectors(f"{out}/embeddings.parquet")
    assert len(set(ids.tolist())) == n


def _error_lines(capsys) -> list[str]:
    """The command's own error lines on stderr (the in-process moto server logs there too)."""
    return [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("python -m job")]


def _stale(url: str, owner: str = "deadbeef0000", age_s: float = 3600) -> None:
    """A lease a killed writer left behind: its heartbeat is ``age_s`` old."""
    import datetime as dt

    beat = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_s)).isoformat()
    fsutil.atomic_write_bytes(url, LeaseInfo(owner, "old-host", 4242, beat, beat).to_bytes())


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs/two-writers"


def test_a_live_lease_turns_the_second_writer_away_and_a_stale_one_is_taken_over(out: str, tmp_path: Path,
                                                                               capsys) -> None:
    src = _images(tmp_path / "src", 6)
    layout = RunLayout.for_output(out)
    holder = Lease.acquire(layout.lease, heartbeat_s=0.2)
    try:
        assert LeaseInfo.from_bytes(fsutil.url_to_fs(layout.lease)[0].cat_file(fsutil.url_to_fs(layout.lease)[1]))
        for extra in ([], ["--overwrite"]):  # --overwrite does not bypass a live lease
            rc = main(["embed", "--image-dir", str(src), "--out", out, *FAST, *extra])
            err = _error_lines(capsys)
            assert rc == 75 and len(err) == 1, err
            assert f"held by attempt {holder.owner} on host " in err[0] and "last heartbeat" in err[0]
        assert not fsutil.exists(layout.embeddings) and not fsutil.exists(layout.state)  # nothing touched
        time.sleep(2.5)
        with pytest.raises(LeaseHeld):  # older than the timeout, yet live: the heartbeat renews it
            Lease.acquire(layout.lease, stale_after_s=2.0)
    finally:
        holder.release()
    assert not fsutil.exists(layout.lease)  # released: gone
    _stale(layout.lease)
    assert main(["embed", "--image-dir", str(src), "--out", out, *FAST, "--lease-timeout", "60"]) == 0
    assert not fsutil.exists(layout.lease)
    _paths_once(out, 6)


def test_a_writer_whose_lease_was_taken_commits_nothing_more(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path / "out"))
    lease = Lease.acquire(layout.lease, heartbeat_s=3600)
    w = PartWriter(layout, embedding_schema(4), part_size=2, attempt=lease.owner, guard=lease.check)
    import numpy as np

    w.add("a.jpg", np.ones(4, np.float32), 1, 1, None)
    w.add("b.jpg", np.ones(4, np.float32), 1, 1, None)  # a full part: committed under the attempt's name
    assert list(list_parts(layout.embeddings)) == [PartKey(0, lease.owner)]
    _stale(layout.lease, owner="thief0000000", age_s=0)  # somebody took the output over
    lease.renew()
    w.add("c.jpg", np.ones(4, np.float32), 1, 1, None)
    with pytest.raises(LeaseLost, match="taken over by attempt thief0000000"):
        w.add("d.jpg", np.ones(4, np.float32), 1, 1, None)
    assert list(list_parts(layout.embeddings)) == [PartKey(0, lease.owner)]
    lease.release()
    assert fsutil.exists(layout.lease)  # not ours any more: left to its owner


def _part(layout: RunLayout, key: PartKey, paths: list[str], failures: list[str] = ()) -> None:
    import numpy as np

    w = PartWriter(layout, embedding_schema(4), part_size=10_000, start_part=key.number, attempt=key.attempt)
    for p in paths:
        w.add(p, np.full(4, hash(p) % 7 + 1, np.float32), 1, 1, None)
    for p in failures:
        w.add_failure(p, "decode error: x")
    w.close()


def test_a_path_committed_twice_is_kept_once(tmp_path: Path) -> None:
    """Two attempts' parts never share a name; where two writers met, one copy of a path stays: an embedded copy
    beats a failure, the part first in key order keeps it, and the loser's part is rewritten without it."""
    layout = RunLayout(str(tmp_path / "out"))
    _part(layout, PartKey(0, "aaa"), ["x.jpg", "y.jpg"])
    _part(layout, PartKey(0, "bbb"), ["y.jpg", "z.jpg"], failures=["x.jpg"])  # same number, other attempt
    _part(layout, PartKey(1, "aaa"), ["w.jpg"], failures=["v.jpg"])
    assert len(list_parts(layout.embeddings)) == 3
    state = prepare_run(layout, {}, attempt="ccc")
    assert state.done_paths == {"v.jpg", "w.jpg", "x.jpg", "y.jpg", "z.jpg"} and state.rows == 4
    assert state.failures == 1 and state.next_part == 3
    parts = list_parts(layout.embeddings)
    assert PartKey(0, "bbb") not in parts and PartKey(2, "ccc") in parts  # rewritten under the writer's name
    fs, _ = fsutil.url_to_fs(layout.run_dir)
    kept = pq.read_table(parts[PartKey(2, "ccc")], filesystem=fs).column("path").to_pylist()
    assert kept == ["z.jpg"]
    fails = list_parts(layout.failures)
    assert PartKey(0, "bbb") not in fails  # x.jpg's failure is gone: its embedded copy wins
    assert pq.read_table(fails[PartKey(2, "ccc")], filesystem=fs).num_rows == 0
    ledger = settle(layout, "ddd")
    assert ledger.rewritten == 0 and ledger.rows == 4 and ledger.failures == 1


def test_a_part_lost_before_the_manifest_fails_the_run_and_the_same_command_completes(tmp_path: Path, capsys,
                                                                                      monkeypatch) -> None:
    src = _images(tmp_path / "src", 10)
    out = tmp_path / "out"
    argv = ["embed", "--image-dir", str(src), "--out", str(out), *FAST, "--shard-size", "3"]
    from job.embed import attempt as embed_module

    real = embed_module.encode_text_queries

    def lose_a_part(*args, **kwargs):  # between embedding and the manifest
        first = sorted((out / "embeddings.parquet").iterdir())[0]
        first.unlink()
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_module, "encode_text_queries", lose_a_part)
    assert main(argv) == 1
    err = _error_lines(capsys)
    assert len(err) == 1 and "3 of 10 images are neither in embeddings.parquet nor in failures.parquet" in err[0], err
    assert "Run the same command" in err[0] and not (out / "manifest.json").exists()
    monkeypatch.setattr(embed_module, "encode_text_queries", real)
    assert main(argv) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["embedded"] == 10 and m["counts"]["embedded_this_attempt"] == 3
    assert m["counts"]["resumed_from_earlier_attempts"] == 7
    _paths_once(str(out), 10)


@pytest.mark.slow
@pytest.mark.s3
def test_two_real_writers_on_s3_then_a_kill_then_the_same_command(s3_bucket: str, tmp_path: Path, capsys) -> None:
    """Writer A (a process) embeds into S3; writer B starts meanwhile and is turned away, _STATUS noting why; A is
    SIGKILLed mid-run; the same command takes the stale lease over and completes with every image exactly once."""
    n = 120
    src = _images(tmp_path / "src", n)
    out = f"s3://{s3_bucket}/runs/r1"
    # at the model's own 224 px A takes seconds, so B and the kill land mid-run
    args = ["run", "--source", str(src), "--out", out, *TEST_MODEL, "--no-progress", "--log-level", "WARNING",
            "--batch-size", "4", "--shard-size", "8", "--no-index", "--no-project", "--lease-timeout", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    a = subprocess.Popen([sys.executable, "-m", "job", *args], env=env, cwd=REPO)
    try:
        layout = RunLayout.for_output(out)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list_parts(layout.embeddings)) < 2:
            assert a.poll() is None, "writer A ended before the test could meet it"
            time.sleep(0.05)
        assert main(args) == 75
        err = _error_lines(capsys)
        assert len(err) == 1 and "held by attempt" in err[0] and "run the same command again later" in err[0], err
        status = json.loads(fsutil.url_to_fs(out)[0].cat_file(f"{s3_bucket}/runs/r1/_STATUS"))
        assert status["status"] == "running" and "held by attempt" in status["waiting"]["reason"]
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
    assert fsutil.exists(layout.lease) and 0 < len(list_parts(layout.embeddings)) < n // 8
    time.sleep(3.5)  # A's heartbeat grows older than --lease-timeout: the lease is stale
    assert main(args) == 0  # the same command takes the stale lease over and completes
    _paths_once(out, n)
    assert not fsutil.exists(layout.lease)


def test_old_run_folders_without_attempt_ids_still_resume(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path / "out"))
    _part(layout, PartKey(0, ""), ["a.jpg", "b.jpg"])
    assert (Path(layout.embeddings) / "part-00000.parquet").exists()
    state = prepare_run(layout, {}, attempt="new")
    assert state.done_paths == {"a.jpg", "b.jpg"} and state.next_part == 1
    with pytest.raises(DataError, match="1 of 3 images"):
        check_complete(layout, {"a.jpg", "b.jpg", "c.jpg"}, "new")


def test_every_row_carries_the_content_hash_of_its_bytes(tmp_path: Path) -> None:
    """Exact duplicates need no second read of the data: the decode stage hashes the bytes it already holds."""
    import hashlib

    src = _images(tmp_path / "src", 4)
    copy = src / "CAM_BACK" / "copy.jpg"
    copy.write_bytes((src / "CAM_FRONT" / "f0001.jpg").read_bytes())
    out = tmp_path / "out"
    assert main(["embed", "--image-dir", str(src), "--out", str(out), *FAST]) == 0
    t = pq.read_table(out / "embeddings.parquet", columns=["path", "content_hash"])
    hashes = dict(zip(t.column("path").to_pylist(), t.column("content_hash").to_pylist()))
    for path, digest in hashes.items():
        assert digest == hashlib.blake2b((src / path).read_bytes(), digest_size=16).digest()
    assert hashes["CAM_BACK/copy.jpg"] == hashes["CAM_FRONT/f0001.jpg"] and len(set(hashes.values())) == 4
    assert json.loads((out / "manifest.json").read_text())["schema_version"] == 3
