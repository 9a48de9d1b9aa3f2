"""The rehearsal of a deploy that finds no GPU (tests/rehearsal/): the stack no longer waits for one. Its group is
created empty and raised to one instance by the custom resource's call (cdk.compute.start_call, made here against the
moto server's Auto Scaling); the launch fails (a new account's G/VT quota of 0, or no capacity in any AZ), AWS emits
"EC2 Instance Launch Unsuccessful", and the launch notes' state machine puts what it computes from that event (its key
and body JSONata, run by JSONata 2.0.6 as Step Functions runs it) next to the run. ``python -m job status`` on the
run's S3 prefix, the command the stack prints, then says the run waits for capacity, with AWS's reason; once an
instance launches and writes its own _STATUS, that is what it shows."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cdk_events import _asg_event, jsonata

from cdk import constants as C
from rehearsal.checks import (  # noqa: F401 (account_fixture, no_instance_outlives_its_test: the module's fixtures)
    account_fixture,
    no_instance_outlives_its_test,
    stack_args,
)
from rehearsal.harness import REGION, Account, Instance

pytestmark = [pytest.mark.slow, pytest.mark.s3]

QUOTA_0 = ("You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket "
           "that the specified instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request to "
           "request an adjustment to this limit. Launching EC2 instance failed.")


def launch_failed(account: Account, group: str, run_prefix: str, message: str, at: str) -> str:
    """What the launch notes' state machine does with AWS's event: put the note its JSONata computes. Returns the key."""
    from cdk.launch_notes import LAUNCH_UNSUCCESSFUL, NOTE_BODY_JSONATA

    event = {**_asg_event(LAUNCH_UNSUCCESSFUL, group, message), "time": at}
    event["detail"]["Details"]["Availability Zone"] = f"{REGION}a"
    key = f"{run_prefix}_launch.json"
    assert key == f"{run_prefix}{C.LAUNCH_NOTE}"  # the construct's key (tests/test_cdk_audit3.py reads it in the template)
    account.client("s3").put_object(Bucket=account.bucket, Key=key, Body=jsonata(NOTE_BODY_JSONATA, event).encode(),
                                    ContentType="application/json")
    return key


def job_status(run_uri: str) -> subprocess.CompletedProcess:
    """The stack's StatusCommand: ``python -m job status <run prefix>``, a process of its own, on the moto server."""
    return subprocess.run([sys.executable, "-m", "job", "status", run_uri], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "AWS_REGION": REGION}, cwd=Path(__file__).resolve().parents[1])


def test_a_launch_without_capacity_shows_as_waiting_then_the_instance_takes_over(account: Account, tmp_path: Path):
    group = account.group("g-capacity", start=False)
    assert account.capacity(group) == (0, 1, 0)  # as CloudFormation leaves it: CREATE_COMPLETE without a GPU
    from cdk.compute import start_call

    account.client("autoscaling").set_desired_capacity(**start_call(group))  # the custom resource's one call
    assert account.capacity(group) == (0, 1, 1)
    run_prefix, run_uri = "runs/capacity/", f"s3://{account.bucket}/runs/capacity/"

    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))  # a minute ago: before any instance
    launch_failed(account, group, run_prefix, QUOTA_0, at)
    proc = job_status(run_uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first == f"status  waiting — waiting for capacity: the group's last launch in {REGION}a failed at {at}: {QUOTA_0}"
    assert "phase   launch" in proc.stdout

    # The quota is raised, an instance launches and writes its own _STATUS (here it stops at its first check).
    inst = Instance(account, tmp_path / "i1", "capacity", stack_args(account), group, env={"REHEARSAL_NO_GPU": "1"}).start()
    assert inst.wait() == 1, inst.console_text()
    proc = job_status(run_uri)
    assert proc.stdout.splitlines()[0].startswith("status  failed — nvidia-smi failed"), proc.stdout
    assert "waiting for capacity" not in proc.stdout
