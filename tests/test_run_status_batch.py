"""``job status`` of a run on AWS Batch when Batch ended one of its jobs FAILED without the job saying so: the note
cdk/batch_notes.py writes (OUTDIR/_batch/shard-<I>.json, merge.json) becomes the shard's or the merge's reason, e.g.
a job cancelled after waiting in RUNNABLE for capacity, which never ran and wrote no _STATUS. Local folders, no AWS."""
from __future__ import annotations

import json
from pathlib import Path

from job.cli import main
from job.status import StatusWriter
from job.runfolder import BATCH_NOTES as BATCH_NOTES_DIR
from job.status import aggregate, read_run_status

CANCELLED = "Canceled by JobStateTimeLimit action due to reason: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"


def _note(run: Path, name: str, reason: str) -> None:
    """What the notes state machine puts for a FAILED job (cdk/batch_notes.py NOTE_BODY_JSONATA)."""
    folder = run / BATCH_NOTES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"jobId": f"{name}-id", "jobName": "Stack-run-shards",
                                                     "status": "FAILED", "statusReason": reason, "at": "2026-11-25T20:00:00Z"}))


def _shard(run: Path, i: int, n: int, end: str | None = None, reason: str = "") -> None:
    w = StatusWriter.open(str(run / "shards" / str(i)), (i, n))
    w.phase("embed")
    w.progress(3, 10, 0, 1.0, force=True)
    if end:
        w.finish(end, reason)


def test_every_shard_cancelled_in_runnable_reads_as_failed_with_batchs_reason(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    for i in range(2):  # no shard ever ran: no shards/ folder at all, only Batch's word
        _note(run, f"shard-{i}", CANCELLED)
    _note(run, "merge", "Dependent Job failed")
    doc = read_run_status(str(run))
    assert doc["status"] == "failed" and doc["reason"] == f"shard 0: AWS Batch: {CANCELLED}"
    assert [s["status"] for s in doc["shards"]] == ["failed", "failed"]
    assert doc["merge"] == {"status": "failed", "reason": "AWS Batch: Dependent Job failed"}
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"status  failed — shard 0: AWS Batch: {CANCELLED}"
    assert "merge     failed" in out and "AWS Batch: Dependent Job failed" in out
    assert main(["status", str(run), "--watch", "0.1"]) == 1  # the watch ends at once: the run failed


def test_a_note_overrides_pending_running_and_interrupted_but_not_the_jobs_own_failure(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _shard(run, 0, 4, end="succeeded")
    _shard(run, 1, 4)  # running when Batch timed the attempt out
    _shard(run, 2, 4, end="failed", reason="DataError: no image could be embedded")
    _note(run, "shard-1", "Job attempt duration exceeded timeout")
    _note(run, "shard-2", "Essential container in task exited")
    _note(run, "shard-3", CANCELLED)  # never started
    doc = read_run_status(str(run))
    rows = {s["index"]: (s["status"], s.get("reason", "")) for s in doc["shards"]}
    assert rows == {0: ("succeeded", ""), 1: ("failed", "AWS Batch: Job attempt duration exceeded timeout"),
                    2: ("failed", "DataError: no image could be embedded"), 3: ("failed", f"AWS Batch: {CANCELLED}")}
    assert doc["status"] == "failed" and doc["summary"] == "1 succeeded, 3 failed of 4 shards"


def test_without_notes_nothing_changes() -> None:
    docs = {0: None}
    assert aggregate(docs, None) == aggregate(docs, None, {})
    assert aggregate(docs, None)["shards"] == [{"index": 0, "status": "pending"}]
