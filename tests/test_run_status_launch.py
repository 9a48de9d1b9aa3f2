"""``job status`` of a run whose instance could not launch: the note cdk/launch_notes.py writes (OUTDIR/_launch.json,
the group's latest failed launch) makes the run read as ``waiting`` with AWS's reason, until an instance writes its
own ``_STATUS``. Local folders, no AWS (the rehearsal does it on S3: tests/test_rehearsal_capacity.py)."""
from __future__ import annotations

import json
from pathlib import Path

from job.cli import main
from job.runfolder import LAUNCH_NOTE
from job.status import StatusWriter, read_run_status
from job.status.view import waiting_for_capacity

QUOTA = ("You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket that "
         "the specified instance type belongs to. Launching EC2 instance failed.")


def _note(run: Path, at: str, message: str = QUOTA) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LAUNCH_NOTE).write_text(json.dumps({"at": at, "group": "G-r", "message": message, "az": "ap-northeast-1a"}))


def test_a_run_no_instance_could_start_reads_as_waiting_for_capacity(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    _note(run, "2026-11-25T19:02:09Z")
    doc = read_run_status(str(run))
    assert doc["status"] == "waiting" and doc["phase"] == "launch" and "previous" not in doc
    assert doc["reason"] == (f"waiting for capacity: the group's last launch in ap-northeast-1a failed at "
                             f"2026-11-25T19:02:09Z: {QUOTA}")
    assert main(["status", str(run)]) == 0
    assert capsys.readouterr().out.startswith("status  waiting — waiting for capacity: the group's last launch")


def test_an_instance_that_writes_after_the_note_is_the_status(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _note(run, "2000-01-01T00:00:00Z")  # the failures before the launch that worked
    StatusWriter.open(str(run)).phase("embed")
    assert read_run_status(str(run))["status"] == "running"


def test_a_replacement_that_cannot_launch_after_a_reclaim_is_waiting_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    StatusWriter.open(str(run)).finish("interrupted", "spot interruption")
    _note(run, "2999-01-01T00:00:00Z")  # after the interrupted attempt's last word
    doc = read_run_status(str(run))
    assert doc["status"] == "waiting" and doc["previous"]["status"] == "interrupted"
    assert doc["previous"]["reason"] == "spot interruption"


def test_a_succeeded_run_is_never_waiting() -> None:
    later = {"at": "2999-01-01T00:00:00Z", "message": QUOTA}
    assert waiting_for_capacity({"status": "succeeded", "updated_at": "2000-01-01T00:00:00Z"}, later) is None
    assert waiting_for_capacity(None, None) is None and waiting_for_capacity(None, {"message": QUOTA}) is None
