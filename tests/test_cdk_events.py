"""What the stack's EventBridge rules match and what its state machines compute, on sample events.

The patterns are the ones the constructs put in the template (tests/test_cdk_first_deploy.py and test_cdk_stack.py
check that), routed by moto's EventBridge to an SQS queue: a sample reaches the queue only when the pattern matches.
The JSONata expressions run in JSONata 2.0.6, the version Step Functions implements (node_modules/jsonata, npm ci).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cdk.batch_notes import NOTE_BODY_JSONATA, failed_pattern, note_key_jsonata  # noqa: E402
from cdk.deadline import LAUNCH_SUCCESSFUL, at_jsonata  # noqa: E402
from cdk.fallback import LAUNCH_UNSUCCESSFUL, capacity_pattern  # noqa: E402

GROUP = "VitEmbedDriveData-trainval-20261125-190000"
QUEUE = "arn:aws:batch:ap-northeast-1:123456789012:job-queue/BatchQueue-abc"

# "EC2 Instance Launch Unsuccessful" status messages as Auto Scaling writes them (public reports, quoted in
# docs/cloud.md), and whether the on-demand fallback must react.
LAUNCH_FAILURES = {
    "spot capacity": ("Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity "
                      "available that matches your request. Launching EC2 instance failed.", True),
    "spot unfulfillable": ("Could not launch Spot Instances. UnfulfillableCapacity - Unable to fulfill capacity due to "
                           "your request configuration. Please adjust your request and try again. Launching EC2 "
                           "instance failed.", True),
    "spot quota": ("Could not launch Spot Instances. MaxSpotInstanceCountExceeded - Max spot instance count exceeded. "
                   "Launching EC2 instance failed.", True),
    "spot quota, short form": ("Max spot instance count exceeded. Launching EC2 instance failed.", True),
    "AZ without the type": ("Your requested instance type (g6e.xlarge) is not supported in your requested Availability "
                            "Zone (ap-northeast-1d). Please retry your request by not specifying an Availability Zone "
                            "or choosing ap-northeast-1a, ap-northeast-1c. Launching EC2 instance failed.", False),
    "bad AMI": ("The image id '[ami-0123456789abcdef0]' does not exist. Launching EC2 instance failed.", False),
    "IAM": ("You are not authorized to use launch template: lt-0123456789abcdef0. Launching EC2 instance failed.", False),
}


@pytest.fixture
def bus(monkeypatch):
    """moto's EventBridge with one SQS queue as the target of whatever rule :func:`matches` puts."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "ap-northeast-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        yield boto3.client("events"), boto3.client("sqs")


def matches(bus, pattern: dict, events: dict[str, dict]) -> set[str]:
    """The names of the sample ``events`` (name -> full event) that the rule with ``pattern`` delivers."""
    events_client, sqs = bus
    queue_url = sqs.create_queue(QueueName="delivered")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events_client.put_rule(Name="under-test", EventPattern=json.dumps(pattern))
    events_client.put_targets(Rule="under-test", Targets=[{"Id": "q", "Arn": queue_arn}])
    for name, event in events.items():
        detail = {**event["detail"], "sample": name}
        events_client.put_events(Entries=[{"Source": event["source"], "DetailType": event["detail-type"],
                                           "Detail": json.dumps(detail), "Resources": []}])
    got = set()
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return got
        got |= {json.loads(m["Body"])["detail"]["sample"] for m in messages}


def _asg_event(detail_type: str, group: str, message: str) -> dict:
    return {"source": "aws.autoscaling", "detail-type": detail_type,
            "detail": {"StatusCode": "Failed" if "Unsuccessful" in detail_type else "InProgress",
                       "AutoScalingGroupName": group, "StatusMessage": message,
                       "Details": {"Availability Zone": "ap-northeast-1a", "Subnet ID": "subnet-12345678"}}}


def test_fallback_fires_on_capacity_and_quota_failures_only(bus):
    samples = {name: _asg_event(LAUNCH_UNSUCCESSFUL, GROUP, message) for name, (message, _) in LAUNCH_FAILURES.items()}
    samples["capacity, another group"] = _asg_event(LAUNCH_UNSUCCESSFUL, "other-group", LAUNCH_FAILURES["spot capacity"][0])
    samples["a successful launch"] = _asg_event(LAUNCH_SUCCESSFUL, GROUP, "")
    wanted = {name for name, (_, fire) in LAUNCH_FAILURES.items() if fire}
    assert matches(bus, capacity_pattern(GROUP), samples) == wanted


def test_deadline_rule_fires_on_the_groups_launches_only(bus):
    from cdk.deadline import Deadline  # noqa: F401  (the construct builds the same pattern: test_cdk_first_deploy.py)

    pattern = {"source": ["aws.autoscaling"], "detail-type": [LAUNCH_SUCCESSFUL], "detail": {"AutoScalingGroupName": [GROUP]}}
    samples = {"launched": _asg_event(LAUNCH_SUCCESSFUL, GROUP, ""),
               "another group launched": _asg_event(LAUNCH_SUCCESSFUL, "other-group", ""),
               "failed launch": _asg_event(LAUNCH_UNSUCCESSFUL, GROUP, LAUNCH_FAILURES["spot capacity"][0])}
    assert matches(bus, pattern, samples) == {"launched"}


def _job_event(status: str, name: str, array: dict | None, queue: str = QUEUE) -> dict:
    detail = {"jobName": name, "jobId": f"{name}-id", "jobQueue": queue, "status": status,
              "statusReason": "Canceled by JobStateTimeLimit action due to reason: CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"}
    if array is not None:
        detail["arrayProperties"] = array
    return {"source": "aws.batch", "detail-type": "Batch Job State Change", "detail": detail}


def test_notes_rule_fires_on_failed_jobs_of_the_queue_not_on_the_array_parent(bus):
    samples = {
        "child failed": _job_event("FAILED", "run-shards", {"index": 2}),
        "single job failed": _job_event("FAILED", "run-shards", None),
        "merge failed": _job_event("FAILED", "run-merge", None),
        "array parent failed": _job_event("FAILED", "run-shards", {"size": 3, "statusSummary": {"FAILED": 1}}),
        "child succeeded": _job_event("SUCCEEDED", "run-shards", {"index": 1}),
        "child runnable": _job_event("RUNNABLE", "run-shards", {"index": 0}),
        "another queue": _job_event("FAILED", "run-shards", {"index": 0}, queue=QUEUE + "-other"),
    }
    assert matches(bus, failed_pattern(QUEUE), samples) == {"child failed", "single job failed", "merge failed"}


# --- the JSONata the state machines run -------------------------------------------------------------------------

RUNNER = """
const jsonata = require(process.argv[1]);
const [expr, input] = [process.argv[2], JSON.parse(process.argv[3])];
jsonata(expr).evaluate({}, {states: {input}}).then(v => process.stdout.write(JSON.stringify(v)));
"""


def jsonata(expression: str, state_input: dict):
    """Evaluate a Step Functions ``{% … %}`` expression with ``$states.input`` bound, as JSONata 2.0.6 does."""
    library = REPO / "node_modules" / "jsonata"
    node = shutil.which("node")
    if not library.exists() or node is None:
        pytest.skip("node_modules/jsonata (npm ci) or node is missing")
    assert expression.startswith("{%") and expression.endswith("%}")
    proc = subprocess.run([node, "-e", RUNNER, str(library), expression[2:-2].strip(), json.dumps(state_input)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(("launched", "minutes", "deadline"), [
    ("2026-11-25T19:02:09Z", 255, "at(2026-11-25T23:17:09)"),   # max_run_hours 4 + 15 min margin
    ("2026-11-25T23:55:09Z", 255, "at(2026-11-26T04:10:09)"),   # across midnight
    ("2026-12-31T23:30:00Z", 45, "at(2027-01-01T00:15:00)"),    # across the year
])
def test_deadline_is_the_launch_events_time_plus_the_run(launched, minutes, deadline):
    event = {**_asg_event(LAUNCH_SUCCESSFUL, GROUP, ""), "time": launched}
    assert jsonata(at_jsonata(minutes), event) == deadline


def test_note_key_and_body_from_a_failed_job():
    prefix = "runs/trainval-1/"
    child = {**_job_event("FAILED", "Stack-trainval-1-shards", {"index": 7}), "time": "2026-11-25T20:00:00Z"}
    assert jsonata(note_key_jsonata(prefix), child) == "runs/trainval-1/_batch/shard-7.json"
    single = _job_event("FAILED", "Stack-trainval-1-shards", None)
    assert jsonata(note_key_jsonata(prefix), single) == "runs/trainval-1/_batch/shard-0.json"
    merge = _job_event("FAILED", "Stack-trainval-1-merge", None)
    assert jsonata(note_key_jsonata(prefix), merge) == "runs/trainval-1/_batch/merge.json"
    body = json.loads(jsonata(NOTE_BODY_JSONATA, child))
    assert body == {"jobId": "Stack-trainval-1-shards-id", "jobName": "Stack-trainval-1-shards", "status": "FAILED",
                    "statusReason": child["detail"]["statusReason"], "at": "2026-11-25T20:00:00Z"}


# --- issue 29: every failed launch is noted next to the run; old deadlines go -------------------------------------


def test_launch_notes_fire_on_every_failed_launch_of_the_group_only(bus):
    from cdk.launch_notes import unsuccessful_pattern

    samples = {name: _asg_event(LAUNCH_UNSUCCESSFUL, GROUP, message) for name, (message, _) in LAUNCH_FAILURES.items()}
    samples["quota 0 on a new account"] = _asg_event(
        LAUNCH_UNSUCCESSFUL, GROUP, "You have requested more vCPU capacity than your current vCPU limit of 0 allows for "
        "the instance bucket that the specified instance type belongs to. Launching EC2 instance failed.")
    samples["another group"] = _asg_event(LAUNCH_UNSUCCESSFUL, "other-group", LAUNCH_FAILURES["spot capacity"][0])
    samples["a successful launch"] = _asg_event(LAUNCH_SUCCESSFUL, GROUP, "")
    assert matches(bus, unsuccessful_pattern(GROUP), samples) == set(LAUNCH_FAILURES) | {"quota 0 on a new account"}


def test_launch_note_body_from_a_failed_launch():
    from cdk.launch_notes import NOTE_BODY_JSONATA

    message = LAUNCH_FAILURES["AZ without the type"][0]
    event = {**_asg_event(LAUNCH_UNSUCCESSFUL, GROUP, message), "time": "2026-11-25T19:02:09Z"}
    event["detail"]["Cause"] = "At 2026-11-25T19:02:05Z an instance was started in response to a difference ..."
    assert json.loads(jsonata(NOTE_BODY_JSONATA, event)) == {
        "at": "2026-11-25T19:02:09Z", "group": GROUP, "message": message, "cause": event["detail"]["Cause"],
        "az": "ap-northeast-1a"}
    del event["detail"]["Cause"], event["detail"]["Details"]  # what the event may leave out is left out
    assert json.loads(jsonata(NOTE_BODY_JSONATA, event)) == {"at": "2026-11-25T19:02:09Z", "group": GROUP,
                                                             "message": message}


@pytest.mark.parametrize(("listed", "older"), [
    (["deadline-run-b"], []),                                         # only the run's own: nothing to delete
    (["deadline-run-a", "deadline-run-b"], ["deadline-run-a"]),       # one earlier run: a list of one, not a string
    (["deadline-run-a", "deadline-run-b", "deadline-x"], ["deadline-run-a", "deadline-x"]),
    ([], []),                                                         # none at all
])
def test_the_deadline_lists_the_older_schedules_to_delete(listed, older):
    from cdk.deadline import older_schedules_jsonata

    expression = older_schedules_jsonata("deadline-run-b").replace("$states.result", "$states.input")
    assert jsonata(expression, {"Schedules": [{"Name": n, "State": "ENABLED"} for n in listed]}) == older
