"""The _STATUS merge rules (job/status/rules.py): one module for the job and the instance script, standard library only,
and its command lines as the script runs them (a fresh python3 with no project environment)."""
from __future__ import annotations

import ast
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from job.config import LEASE_TIMEOUT_S
from job.status import StatusWriter, read_status, rules

RULES = Path(rules.__file__)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # -I: isolated, like the instance's python3: no PYTHONPATH, no site-packages of the project
    return subprocess.run([sys.executable, "-I", str(RULES), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_the_module_needs_nothing_but_the_standard_library() -> None:
    tree = ast.parse(RULES.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "datetime", "json", "os", "sys", "typing"}, imported
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))  # no relative imports


def test_the_instance_and_the_job_follow_the_same_rules(tmp_path: Path) -> None:
    """The script starts an attempt and records phases; the job continues the same document; the first terminal
    status wins over the script's later word unless it forces the stop reason it saw first."""
    env = {"STARTED_AT": "2026-12-01T00:00:00Z", "ATTEMPT": "20261201T000000Z-i-1", "RUN_ID": "r", "RUN_URI": "s3://b/r/",
           "INSTANCE_ID": "i-1", "INSTANCE_TYPE": "g6e.xlarge", "MARKET": "spot"}
    mine, stored = tmp_path / "mine.json", tmp_path / "_STATUS"
    (tmp_path / "old.json").write_text(json.dumps({"status": "interrupted", "reason": "spot", "phase": "embed"}))
    assert _run(str(mine), str(tmp_path / "old.json"), "running", "", "check-gpu", "", env=env).returncode == 0
    doc = json.loads(mine.read_text())
    assert doc["status"] == "running" and doc["previous"]["reason"] == "spot" and doc["instance_id"] == "i-1"
    stored.write_text(mine.read_text())
    job = StatusWriter.open(str(tmp_path))  # the job continues the script's running document
    job.phase("embed")
    job.finish("failed", "DataError: x")
    assert _run(str(mine), str(stored), "interrupted", "the job was stopped", "", "", env=env).returncode == 0
    assert (json.loads(mine.read_text())["status"], json.loads(mine.read_text())["reason"]) == ("failed", "DataError: x")
    assert _run(str(mine), str(stored), "interrupted", "spot interruption", "", "force", env=env).returncode == 0
    assert json.loads(mine.read_text())["reason"] == "spot interruption"
    assert [p["phase"] for p in json.loads(mine.read_text())["phases"]] == ["check-gpu", "embed"]


def test_a_waiting_note_survives_the_holders_next_write(tmp_path: Path) -> None:
    holder = StatusWriter.open(str(tmp_path))
    holder.phase("embed")
    status = tmp_path / "_STATUS"
    assert _run("note", str(status), "i-2", "instance i-2 waits: held by attempt x").returncode == 0
    holder.progress(5, 10, 0, 1.0, force=True)
    doc = read_status(str(tmp_path))
    assert doc.status == "running" and doc.waiting is not None and doc.waiting.host == "i-2"


def test_the_lease_command_names_a_live_holder_only(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    lease = tmp_path / "_LEASE"
    for age, live in ((5, True), (LEASE_TIMEOUT_S + 5, False)):
        beat = (now - dt.timedelta(seconds=age)).isoformat()
        lease.write_text(json.dumps({"owner": "abc", "host": "h", "pid": 7, "started": beat, "heartbeat": beat}))
        out = _run("lease", str(lease), str(LEASE_TIMEOUT_S)).stdout.strip()
        assert (out.startswith("attempt abc on host h (pid 7), last heartbeat") if live else out == ""), out
    lease.write_text("not json")
    assert _run("lease", str(lease), "600").stdout == ""
    assert _run("lease", str(tmp_path / "none"), "600").returncode == 0
    assert _run("what").returncode == 2
