"""The rehearsal of a first boot's apt (tests/rehearsal/): Ubuntu's cloud-init and apt-daily hold apt's locks when
user_data.sh installs s3fs, and `apt-get update` fails at once on the lists lock. The real script runs against a
rehearsed systemctl that answers like systemd for apt-daily's oneshot units ("activating" while they run, then
"inactive") and a rehearsed apt-get that fails on that lock a few times and then works (the script must wait for
apt-daily, retry and get through to the real s3fs mount; no job runs: it stops at the next check, too little time
left before max_run_hours), or never works: then the job reads the bucket straight from S3 and _STATUS says so."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_rehearsal import IMAGES, SMALL, _table, container_command

from rehearsal.checks import (  # noqa: F401 (account_fixture, no_instance_outlives_its_test: the module's fixtures)
    account_fixture,
    assert_ended,
    assert_read_through_s3fs,
    no_instance_outlives_its_test,
    stack_args,
)
from rehearsal.harness import Account, Instance

pytestmark = [pytest.mark.slow, pytest.mark.s3]

LOCK_ERROR = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1234 (apt-get)"


def _apt(instance: Instance, verb: str) -> list[str]:
    return [c for c in instance.calls() if c.startswith("apt-get ") and f" {verb}" in c]


def test_apt_lock_race_is_waited_out_and_the_script_gets_through(account: Account, tmp_path: Path) -> None:
    # apt-daily runs for the first 3 s of the boot; `apt-get update` then fails twice on the lists lock.
    inst = Instance(account, tmp_path / "i1", "aptrace", stack_args(account), account.group("g-aptrace"),
                    deadline_s=200, env={"REHEARSAL_APT": "lock:2", "REHEARSAL_APT_DAILY_S": "3"}).start()
    assert inst.wait() == 1, inst.console_text()
    doc = inst.status()
    # Through apt, the mount and the image build: it stops only where the rehearsal makes it (max_run_hours).
    assert [p["phase"] for p in doc["phases"]] == ["check-gpu", "scratch", "mount", "image", "weights"], doc
    assert doc["status"] == "failed" and doc["reason"].startswith("max_run_hours"), doc
    assert len(_apt(inst, "update")) == 3 and len(_apt(inst, "install")) == 1
    assert "s3fs" in _apt(inst, "install")[0] and "DPkg::Lock::Timeout=" in _apt(inst, "install")[0]
    for call in _apt(inst, "update") + _apt(inst, "install"):  # Ubuntu's archive only: no third-party source can fail it
        assert "Dir::Etc::sourcelist=" in call and f"Dir::Etc::sourceparts={inst.root / 'run' / 'apt-sources.d'}" in call
    assert "--no-install-recommends" in _apt(inst, "install")[0]
    console = inst.console_text()
    # It waited while apt-daily was "activating" (a oneshot unit is never "active"), then backed off: 1 s, then 2 s.
    assert "waiting for Ubuntu's apt-daily jobs to finish" in console
    assert re.search(r"apt-daily is done after [2-9]\d*s", console), console
    calls = inst.calls()
    assert calls.index(next(c for c in calls if c.startswith("systemctl is-active"))) < calls.index(_apt(inst, "update")[0])
    retries = re.findall(r"apt-get failed \(attempt (\d)/6\): (.*); retrying in (\d+)s", console)
    assert retries == [("1", LOCK_ERROR, "1"), ("2", LOCK_ERROR, "2")], retries
    assert "installed s3fs (attempt 3/6)" in console
    assert_read_through_s3fs(inst)  # and then the real s3fs mounted the bucket
    assert_ended(inst, released=True, apt=True)


def test_without_s3fs_the_job_reads_the_bucket_from_s3_and_status_says_so(account: Account, tmp_path: Path) -> None:
    """apt never gets its lock, so s3fs cannot be installed: after its retries the script hands the job the bucket's
    s3:// URIs instead of the mount's paths, the job reads the archives straight from S3 (its own reader), the run
    succeeds, and _STATUS's data_source says which way the data came and why."""
    inst = Instance(account, tmp_path / "i1", "nos3fs", stack_args(account) + SMALL, account.group("g-nos3fs"),
                    env={"REHEARSAL_APT": "never"}, settings={"APT_ATTEMPTS": "3"}).start()
    assert inst.wait() == 0, inst.console_text()
    doc = inst.status()
    assert doc["status"] == "succeeded" and doc["progress"]["done"] == IMAGES, doc
    assert "mount" in [p["phase"] for p in doc["phases"]]
    assert re.fullmatch(rf"S3 directly \(s3://{account.nuscenes_bucket}\); the s3fs mount failed: could not install "
                        rf"s3fs with apt-get after 3 attempts in \d+s: {re.escape(LOCK_ERROR)}", doc["data_source"]), doc
    assert len(_apt(inst, "update")) == 3 and not _apt(inst, "install")
    assert inst.mount_type is None  # nothing was mounted ...
    ran = container_command(inst)  # ... and the job was given the bucket itself
    sources = [ran[i + 1] for i, a in enumerate(ran) if a == "--source"]
    assert sources == [f"s3://{account.nuscenes_bucket}/public/v1.0/v1.0-mini.tgz"]
    assert not [a for a in ran if a.startswith(str(account.mount))]
    assert _table(inst.run_uri, "embeddings.parquet").num_rows == IMAGES
    assert_ended(inst, released=True, apt=True)
