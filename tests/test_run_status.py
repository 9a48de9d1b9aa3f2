"""``job status`` of a run split into shards (OUTDIR/shards/I/, e.g. AWS Batch's array children) and merged: every
shard's status and progress, the merge's, and the whole (done/total summed, slowest ETA). Local folders, no AWS."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from job.cli import main
from job.errors import Interrupted
from job.status import StatusWriter
from job.status import aggregate, read_run_status


def typed(docs: dict) -> dict:
    """Status documents as ``job.status.read_status`` returns them."""
    import msgspec

    from job.runfolder import StatusDoc

    return {i: msgspec.convert(d, type=StatusDoc) for i, d in docs.items()}


def _shard(run: Path, i: int, n: int, *, done: int, total: int, rate: float = 2.0, end: str | None = None,
           reason: str = "") -> None:
    """Write shard i's _STATUS the way `job run --shard i/n` does."""
    w = StatusWriter.open(str(run / "shards" / str(i)), (i, n))
    w.phase("embed")
    w.progress(done, total, 1, rate, force=True)
    if end:
        w.finish(end, reason)


def _merge(run: Path, *phases: str, end: str | None = None) -> None:
    """Write the run folder's own _STATUS the way `job merge` does."""
    w = StatusWriter.open(str(run))
    for ph in phases:
        w.phase(ph)
    if end:
        w.finish(end)


def _show(run: Path, capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["status", str(run), *args])
    return rc, capsys.readouterr().out


def test_shards_running_and_one_not_started(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    _shard(run, 0, 3, done=10, total=10, end="succeeded")
    _shard(run, 1, 3, done=4, total=12, rate=2.0)  # 8 left at 2/s: 4 s
    doc = read_run_status(str(run))
    assert doc["status"] == "running" and doc["merge"] is None
    assert [s["status"] for s in doc["shards"]] == ["succeeded", "running", "pending"]  # N from shard 1's _STATUS
    assert doc["progress"]["done"] == 14 and doc["progress"]["failed"] == 2
    assert doc["progress"]["total"] is None and doc["progress"]["eta_s"] is None  # shard 2 has not said how many
    assert doc["progress"]["images_per_s"] == 2.0
    assert doc["phase"] == "shards" and doc["summary"] == "1 succeeded, 1 running, 1 pending of 3 shards"

    rc, text = _show(run, capsys)
    assert rc == 0
    lines = text.splitlines()
    assert lines[0] == "status  running"
    assert any(ln.startswith("shard 1") and "running" in ln and "4/12 (33.3%)" in ln and "ETA 0m04s" in ln for ln in lines)
    assert any(ln.startswith("shard 2") and "pending" in ln for ln in lines)
    assert any(ln.startswith("merge") and "not started" in ln for ln in lines)

    _shard(run, 2, 3, done=0, total=8, rate=1.0)  # every shard started: totals and the slowest ETA are known
    doc = read_run_status(str(run))
    assert doc["progress"]["total"] == 30 and doc["progress"]["eta_s"] == 8 and doc["progress"]["images_per_s"] == 3.0
    rc, text = _show(run, capsys)
    assert "images  14/30 (46.7%), 3 failed, 3.0 images/s, ETA 0m08s (slowest shard)" in text
    assert "phase   shards; 1 succeeded, 2 running of 3 shards (updated " in text


def test_merge_phases_then_success_and_json(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    for i in range(2):
        _shard(run, i, 2, done=5, total=5, end="succeeded")
    assert read_run_status(str(run))["phase"] == "merge pending"
    _merge(run, "merge", "index")
    doc = read_run_status(str(run))
    assert (doc["status"], doc["phase"]) == ("running", "merge: index")
    _merge(run, "project", end="succeeded")
    rc, out = _show(run, capsys, "--json")
    shown = json.loads(out)
    assert shown["status"] == "succeeded" and shown["progress"]["done"] == shown["progress"]["total"] == 10
    assert [s["status"] for s in shown["shards"]] == ["succeeded", "succeeded"]
    assert [p["phase"] for p in shown["merge"]["phases"]] == ["merge", "index", "project"]
    rc, text = _show(run, capsys, "--watch", "0.1")  # finished: returns at once with the run's exit code
    assert rc == 0 and "merge     succeeded" in text and "merge " in text and "index" in text


@pytest.mark.parametrize(("end", "rc", "word"), [("failed", 1, "failed"), ("interrupted", Interrupted.exit_code, "interrupted")])
def test_a_stopped_shard_ends_the_watch_with_its_exit_code(tmp_path: Path, capsys, end: str, rc: int, word: str) -> None:
    run = tmp_path / "run"
    _shard(run, 0, 2, done=5, total=5, end="succeeded")
    _shard(run, 1, 2, done=2, total=5, end=end, reason="stopped by SIGTERM")
    code, text = _show(run, capsys, "--watch", "0.1")
    assert code == rc
    assert text.splitlines()[0] == f"status  {word} — shard 1: stopped by SIGTERM"


def test_an_interrupted_shard_while_others_run_is_still_a_running_run() -> None:
    """Batch retries an interrupted shard (exit 75): while others still run, the run is running."""
    docs = {0: {"status": "interrupted", "reason": "SIGTERM", "shard": [0, 2]}, 1: {"status": "running", "shard": [1, 2]}}
    assert aggregate(typed(docs), None)["status"] == "running"
    docs[1] = {"status": "succeeded", "shard": [1, 2]}
    assert aggregate(typed(docs), None)["status"] == "interrupted"


def test_a_run_without_shards_reads_as_before(tmp_path: Path) -> None:
    _merge(tmp_path, "embed", end="succeeded")
    doc = read_run_status(str(tmp_path))
    assert doc["status"] == "succeeded" and "shards" not in doc


def test_a_finished_archive_shard_counts_what_it_did_as_its_total() -> None:
    """A .tgz stream does not know its total before the end; a finished shard's total is what it embedded."""
    docs = {0: {"status": "succeeded", "shard": [0, 2], "progress": {"done": 7, "total": None, "failed": 0}},
            1: {"status": "running", "shard": [1, 2], "progress": {"done": 3, "total": None, "failed": 0, "eta_s": None}}}
    doc = aggregate(typed(docs), None)
    assert doc["progress"]["done"] == 10 and doc["progress"]["total"] is None and doc["progress"]["eta_s"] is None
    docs[1] = {**docs[1], "status": "succeeded"}
    assert aggregate(typed(docs), None)["progress"]["total"] == 10
