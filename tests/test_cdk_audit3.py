"""The third audit of the first deploy (issue 29), asserted on synthesized templates: a deploy that does not wait for
a GPU, launch failures reported next to the run, the AMI's own root device, kept buckets that keep their policies, a
custom resource that cannot hang the deploy for an hour, the Batch compute environment capped at the quota, both
engines asking the job for CUDA, and old deadlines removed. What the rules match and the JSONata computes:
tests/test_cdk_events.py; the instance script: tests/test_rehearsal*.py; the preflight: tests/test_preflight*.py."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("aws_cdk")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from test_cdk_stack import Synth, _fake_aws_env, assert_linters_clean, synth_fixture  # noqa: E402, F401 (the module's offline AWS environment)

from cdk import constants as C  # noqa: E402

pytestmark = pytest.mark.cdk

DEFAULT = {"run_id": "round3"}
# Spot with the on-demand fallback, the artifacts deleted with the stack, the job on the CPU (asked for).
SPOT = {"run_id": "round3-spot", "market": "spot", "spot_fallback": "on-demand", "retain_artifacts": "false",
        "device": "cpu"}
BATCH = {"run_id": "round3-batch", "engine": "batch", "shards": "10", "max_vcpus": "24", "image": "asset"}


default = synth_fixture(DEFAULT, "cdk-round3")
spot = synth_fixture(SPOT, "cdk-round3-spot")
batch = synth_fixture(BATCH, "cdk-round3-batch")


def _one(s: Synth, type_: str) -> tuple[str, dict]:
    (found,) = [(k, r) for k, r in s.json["Resources"].items() if r["Type"] == type_]
    return found


def _policy_of(s: Synth, logical_id: str) -> list[dict]:
    """The statements of the policy resource a custom resource depends on (AwsCustomResource's own policy)."""
    deps = s.json["Resources"][logical_id]["DependsOn"]
    (policy,) = [s.json["Resources"][d] for d in deps if s.json["Resources"][d]["Type"] == "AWS::IAM::Policy"
                 and "CustomResourcePolicy" in d]
    return policy["Properties"]["PolicyDocument"]["Statement"]


# --- 1. the deploy returns in minutes: the group is created empty, then raised once --------------------------------


def test_group_is_created_empty_and_later_deploys_leave_its_size_alone(default):
    group_id, group = _one(default, "AWS::AutoScaling::AutoScalingGroup")
    props = group["Properties"]
    # CloudFormation completes the group once its *desired* capacity is in service: 0, so it never waits for a GPU.
    assert (props["MinSize"], props["MaxSize"], props["DesiredCapacity"]) == ("0", "1", "0")
    # An unchanged DesiredCapacity in the template does not reset the live size on a later deploy.
    assert group["UpdatePolicy"] == {"AutoScalingScheduledAction": {"IgnoreUnmodifiedGroupSizeProperties": True}}


def test_a_custom_resource_raises_the_new_group_to_one_instance_once(default):
    cfg = default.config
    start_id, start = _one(default, "Custom::StartRun")
    call = json.loads(start["Properties"]["Create"])
    assert call["service"] == "AutoScaling" and call["action"] == "setDesiredCapacity"
    assert call["parameters"] == {"AutoScalingGroupName": cfg.group_name, "DesiredCapacity": 1, "HonorCooldown": False}
    # Create only: an update (another deploy of the run, a rollback's old properties) and the delete call nothing.
    assert "Update" not in start["Properties"] and "Delete" not in start["Properties"]
    assert hashlib.sha1(cfg.run_id.encode()).hexdigest()[:10] in start_id  # a new run is a new resource: created again
    assert start["Properties"]["ServiceTimeout"] == "300"
    group_id, _ = _one(default, "AWS::AutoScaling::AutoScalingGroup")
    rules = [k for k, r in default.json["Resources"].items() if r["Type"] == "AWS::Events::Rule"]
    assert len(rules) == 2 and set(rules) | {group_id} <= set(start["DependsOn"])  # the deadline's and the notes'
    (stmt,) = _policy_of(default, start_id)
    assert stmt["Action"] == "autoscaling:SetDesiredCapacity"
    assert f":autoScalingGroup:*:autoScalingGroupName/{cfg.group_name}" in json.dumps(stmt["Resource"])


def test_the_raise_waits_for_every_rule_that_reacts_to_launches(spot):
    start_id, start = _one(spot, "Custom::StartRun")
    rules = {k for k, r in spot.json["Resources"].items() if r["Type"] == "AWS::Events::Rule"}
    assert len(rules) == 3 and rules <= set(start["DependsOn"])  # deadline, launch notes, spot fallback


def test_failed_launches_are_noted_next_to_the_run(default, spot):
    for s in (default, spot):
        cfg = s.config
        (rule,) = [r["Properties"] for k, r in s.json["Resources"].items()
                   if r["Type"] == "AWS::Events::Rule" and "LaunchNotes" in k]
        assert rule["EventPattern"] == {"source": ["aws.autoscaling"], "detail-type": ["EC2 Instance Launch Unsuccessful"],
                                        "detail": {"AutoScalingGroupName": [cfg.group_name]}}  # every failure
        (sm,) = [r["Properties"] for k, r in s.json["Resources"].items()
                 if r["Type"] == "AWS::StepFunctions::StateMachine" and "LaunchNotes" in k]
        parts = sm["DefinitionString"]["Fn::Join"][1]
        definition = json.loads("".join(p if isinstance(p, str) else json.dumps(p).replace('"', "'") for p in parts))
        put = definition["States"]["WriteNote"]
        assert definition["QueryLanguage"] == "JSONata" and put["Resource"].endswith(":states:::aws-sdk:s3:putObject")
        assert put["Arguments"]["Key"] == f"{cfg.run_prefix}{C.LAUNCH_NOTE}"
        assert sm["LoggingConfiguration"]["Level"] == "ALL" and sm["TracingConfiguration"] == {"Enabled": True}
    from job.runfolder import LAUNCH_NOTE

    assert LAUNCH_NOTE == C.LAUNCH_NOTE  # the reader (job status) and the writer agree


# --- 4. the minors --------------------------------------------------------------------------------------------------


def test_the_root_device_is_read_from_the_ami_at_deploy(default):
    device_id, device = _one(default, "Custom::AmiRootDevice")
    for when in ("Create", "Update"):  # a new AMI behind the parameter is read again
        text = json.dumps(device["Properties"][when])
        assert '\\"action\\":\\"describeImages\\"' in text and "Images.0.RootDeviceName" in text
        (ami_param,) = [p for p in default.json["Parameters"] if p.startswith("SsmParameterValueawsservicedeeplearning")]
        assert f'{{"Ref": "{ami_param}"}}' in text  # the AMI the launch template boots, not another
    mapping = default.template_data()["BlockDeviceMappings"]
    assert [m["DeviceName"] for m in mapping] == [{"Fn::GetAtt": [device_id, "Images.0.RootDeviceName"]}]
    (stmt,) = _policy_of(default, device_id)
    assert stmt["Action"] == "ec2:DescribeImages" and stmt["Resource"] == "*"  # no resource-level permissions exist
    assert "/dev/sda1" not in json.dumps(default.json)


def test_kept_buckets_keep_their_policies(default, spot):
    def policies(s: Synth) -> dict[str, str]:
        return {r["Properties"]["Bucket"]["Ref"]: r["DeletionPolicy"] for r in s.resources("AWS::S3::BucketPolicy")}

    buckets = {k: r["DeletionPolicy"] for k, r in default.json["Resources"].items() if r["Type"] == "AWS::S3::Bucket"}
    assert policies(default) == buckets == {k: "Retain" for k in buckets} and len(buckets) == 2
    spot_buckets = {k: r["DeletionPolicy"] for k, r in spot.json["Resources"].items() if r["Type"] == "AWS::S3::Bucket"}
    assert policies(spot) == spot_buckets and sorted(spot_buckets.values()) == ["Delete", "Retain"]  # logs always kept


def test_the_batch_submission_cannot_hang_the_deploy(batch):
    _, run = _one(batch, "Custom::BatchRun")
    assert run["Properties"]["ServiceTimeout"] == "300"  # not CloudFormation's hour


def test_the_compute_environment_is_capped_at_max_vcpus(batch):
    _, ce = _one(batch, "AWS::Batch::ComputeEnvironment")
    assert ce["Properties"]["ComputeResources"]["MaxvCpus"] == 24  # not 10 shards x 8 vCPUs
    from cdk.batch import max_vcpus

    assert max_vcpus(batch.config.instance_types, 10) == 80 == C.batch_vcpu_ceiling(batch.config.instance_types, 10)
    assert max_vcpus(batch.config.instance_types, 2, 24) == 16  # the cap never raises the ceiling


def test_both_engines_ask_the_job_for_cuda_unless_cpu_was_asked_for(default, spot, batch):
    assert "\n--device\ncuda\n" in default.user_data() and "\n--device\ncpu\n" in spot.user_data()
    ((_, shard),) = [(k, r) for k, r in batch.json["Resources"].items()
                     if r["Type"] == "AWS::Batch::JobDefinition" and "Shard" in k]
    command = shard["Properties"]["ContainerProperties"]["Command"]
    assert command[command.index("--device") + 1] == "cuda" and command.count("--device") == 1
    script = (REPO / "cdk" / "scripts" / "user_data.sh").read_text()
    assert "--device" not in script.split("run_job()")[1].split("publish()")[0]  # the script adds none of its own


def test_the_deadline_removes_the_stacks_older_schedules(default):
    (sm,) = [r["Properties"] for k, r in default.json["Resources"].items()
             if r["Type"] == "AWS::StepFunctions::StateMachine" and "Deadline" in k]
    parts = sm["DefinitionString"]["Fn::Join"][1]
    definition = json.loads("".join(p if isinstance(p, str) else json.dumps(p).replace('"', "'") for p in parts))
    states = definition["States"]
    assert states["ArmDeadline"]["Next"] == "ListDeadlines" and states["ListDeadlines"]["Next"] == "RemoveOlderDeadlines"
    assert states["ListDeadlines"]["Resource"].endswith(":states:::aws-sdk:scheduler:listSchedules")
    older = states["RemoveOlderDeadlines"]
    assert older["Type"] == "Map" and older["Items"] == "{% $states.input.older %}"
    delete = older["ItemProcessor"]["States"]["DeleteOlder"]
    assert delete["Resource"].endswith(":states:::aws-sdk:scheduler:deleteSchedule")
    assert delete["Catch"] == [{"ErrorEquals": ["Scheduler.ResourceNotFoundException"], "Next": "AlreadyGone"}]
    # A replacement's launch finds its run's schedule armed: it neither re-arms nor deletes anything.
    assert states["ArmDeadline"]["Catch"] == [{"ErrorEquals": ["Scheduler.ConflictException"], "Next": "AlreadyArmed"}]
    role = sm["RoleArn"]["Fn::GetAtt"][0]
    statements = [st for p in default.resources("AWS::IAM::Policy") if {"Ref": role} in p["Properties"]["Roles"]
                  for st in p["Properties"]["PolicyDocument"]["Statement"]]
    (delete_grant,) = [st for st in statements if st["Action"] == "scheduler:DeleteSchedule"]
    assert ":schedule/" in json.dumps(delete_grant["Resource"]) and "DeadlineGroup" in json.dumps(delete_grant["Resource"])


def test_outputs_say_what_the_destroy_keeps(default, spot, batch):
    assert default.json["Outputs"]["KeptByDestroy"]["Value"] == "ArtifactsBucket,AccessLogBucket"
    assert spot.json["Outputs"]["KeptByDestroy"]["Value"] == "AccessLogBucket"
    assert "deleted by cdk destroy" in spot.json["Outputs"]["ArtifactsBucket"]["Description"]
    assert "RedeployCommand" not in spot.json["Outputs"] and "RedeployCommand" in default.json["Outputs"]
    assert batch.json["Outputs"]["KeptByDestroy"]["Value"] == "ArtifactsBucket,AccessLogBucket"


@pytest.mark.parametrize("which", ["default", "spot", "batch"])
def test_linters_clean(which, request):
    assert_linters_clean(request.getfixturevalue(which))
