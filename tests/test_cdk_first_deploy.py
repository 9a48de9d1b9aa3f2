"""The first real deploy's audit (issue 21), asserted on synthesized templates: what would make a run fail now and
then, pay on-demand when spot was there, or strand a run. The events the rules match and the JSONata the state
machines run are exercised in tests/test_cdk_events.py; the instance script in tests/test_rehearsal*.py."""
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

from test_cdk_stack import Synth, _fake_aws_env, assert_linters_clean  # noqa: E402, F401 (the module's offline AWS environment)

from cdk import constants as C  # noqa: E402
from cdk.config import ConfigError, from_context  # noqa: E402
from cdk.run_stack import NEW_RUN_WARNING  # noqa: E402

pytestmark = pytest.mark.cdk

# Private subnets behind a NAT in two pinned AZs, spot with the on-demand fallback, buckets deleted on destroy.
NAT_SPOT = {"run_id": "nat-spot", "nat_gateway": "true", "market": "spot", "spot_fallback": "on-demand",
            "retain_artifacts": "false", "availability_zones": "ap-northeast-1a,ap-northeast-1c"}
# A run brought back after `cdk destroy`: the kept bucket, the run's own options.
KEPT = {"run_id": "kept-run", "artifacts_bucket": "vitembed-kept-0123456789", "max_run_hours": "2", "pool": "cls"}
# Batch with the image left to its default and no run id (a new run).
BATCH = {"engine": "batch", "shards": "3"}


@pytest.fixture(scope="module")
def nat_spot(tmp_path_factory) -> Synth:
    return Synth(NAT_SPOT, tmp_path_factory.mktemp("cdk-nat-spot"))


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> Synth:
    return Synth(KEPT, tmp_path_factory.mktemp("cdk-kept"))


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Synth:
    return Synth(BATCH, tmp_path_factory.mktemp("cdk-batch-default"))


def _id(s: Synth, type_: str, contains: str = "") -> str:
    (key,) = [k for k, r in s.json["Resources"].items() if r["Type"] == type_ and contains in k]
    return key


def _statements(s: Synth, role_id: str) -> list[dict]:
    return [st for p in s.resources("AWS::IAM::Policy") if {"Ref": role_id} in p["Properties"]["Roles"]
            for st in p["Properties"]["PolicyDocument"]["Statement"]]


def _definition(s: Synth, contains: str) -> dict:
    (sm,) = [r["Properties"] for k, r in s.json["Resources"].items() if r["Type"] == "AWS::StepFunctions::StateMachine" and contains in k]
    parts = sm["DefinitionString"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else json.dumps(p).replace('"', "'") for p in parts))


# --- 1. the group waits for the routes its first boot needs -------------------------------------------------------


def test_group_and_compute_environment_wait_for_the_internet_routes(nat_spot, kept, batch):
    nat_routes = [k for k, r in nat_spot.json["Resources"].items() if r["Type"] == "AWS::EC2::Route" and "private" in k]
    assert len(nat_routes) == 2 and all("NatGatewayId" in nat_spot.json["Resources"][k]["Properties"] for k in nat_routes)
    group = nat_spot.json["Resources"][_id(nat_spot, "AWS::AutoScaling::AutoScalingGroup")]
    assert set(nat_routes) <= set(group["DependsOn"])
    igw_routes = [k for k, r in kept.json["Resources"].items() if r["Type"] == "AWS::EC2::Route"]
    assert set(igw_routes) <= set(kept.json["Resources"][_id(kept, "AWS::AutoScaling::AutoScalingGroup")]["DependsOn"])
    ce = batch.json["Resources"][_id(batch, "AWS::Batch::ComputeEnvironment")]
    assert {k for k, r in batch.json["Resources"].items() if r["Type"] == "AWS::EC2::Route"} <= set(ce["DependsOn"])


# --- 2. a run resumes after cdk destroy: the kept bucket, one command --------------------------------------------


def test_an_existing_bucket_is_written_not_created(kept):
    kept.template.resource_count_is("AWS::S3::Bucket", 0)
    kept.template.resource_count_is("AWS::S3::BucketPolicy", 0)
    name = KEPT["artifacts_bucket"]
    write = kept.statement("WriteOwnRunPrefix")
    assert json.dumps(write["Resource"]).endswith(f':s3:::{name}/runs/kept-run/*"]]}}') or \
        write["Resource"] == f"arn:aws:s3:::{name}/runs/kept-run/*"
    ud = kept.user_data()
    assert f"ARTIFACTS_BUCKET={name}\n" in ud and f"WEIGHTS_CACHE=s3://{name}/{C.WEIGHTS_CACHE_PREFIX}\n" in ud
    outputs = kept.json["Outputs"]
    assert outputs["ArtifactsBucket"]["Value"] == name and "AccessLogBucket" not in outputs
    assert outputs["RunPrefix"]["Value"] == f"s3://{name}/runs/kept-run/"


def test_the_redeploy_command_repeats_the_run(kept, nat_spot):
    from cdk.outputs import redeploy_command

    # The run id, the kept bucket and every option given beyond cdk.json (not where or how it was deployed).
    assert kept.json["Outputs"]["RedeployCommand"]["Value"] == (
        f"npx cdk deploy -c run_id=kept-run -c artifacts_bucket={KEPT['artifacts_bucket']} -c max_run_hours=2 -c pool=cls")
    value = redeploy_command(nat_spot.config, "kept-bucket")
    assert "-c run_id=nat-spot -c artifacts_bucket=kept-bucket" in value and "retain_artifacts" not in value
    assert "-c market=spot -c spot_fallback=on-demand" in value and "-c nat_gateway=true" in value
    # ... but retain_artifacts=false deletes the bucket with the stack: no command promises to bring the run back.
    assert "RedeployCommand" not in nat_spot.json["Outputs"]


@pytest.mark.parametrize(("context", "needle"), [
    ({"artifacts_bucket": "Not_A_Bucket"}, "context artifacts_bucket='Not_A_Bucket' is not valid"),
    ({"availability_zones": "ap-northeast-1a", "availability_zone": "ap-northeast-1a"}, "say the same thing"),
    ({"availability_zones": "ap-northeast-1a,us-east-1b"}, "'us-east-1b' is not in region ap-northeast-1"),
    ({"availability_zone": "ap-northeast-1a,ap-northeast-1c"}, "availability_zone takes one AZ"),
    ({"availability_zones": ",".join(f"ap-northeast-1{c}" for c in "abcdefg")}, "valid values: 1 to 6 AZs"),
    ({"replace_running": "maybe"}, "context replace_running='maybe' is not a yes/no value; valid: 1, true"),
])
def test_new_context_keys_fail_with_one_line(context, needle):
    with pytest.raises(ConfigError) as err:
        from_context({"run_id": "x", **context}.get)
    assert needle in str(err.value) and "\n" not in str(err.value)


# --- 3. the fallback: capacity only, and the rights Auto Scaling checks; AZs that offer the types ----------------


def test_fallback_may_launch_only_from_the_runs_template(nat_spot):
    (sm_role,) = [r["Properties"]["RoleArn"]["Fn::GetAtt"][0] for k, r in nat_spot.json["Resources"].items()
                  if r["Type"] == "AWS::StepFunctions::StateMachine" and "SpotFallback" in k]
    by_sid = {s.get("Sid"): s for s in _statements(nat_spot, sm_role)}
    launch = by_sid["LaunchFromTheRunsTemplate"]
    assert launch["Action"] == "ec2:RunInstances" and launch["Resource"] == "*"
    template_id = _id(nat_spot, "AWS::EC2::LaunchTemplate")
    assert f'{{"Ref": "{template_id}"}}' in json.dumps(launch["Condition"]["ArnLike"]["ec2:LaunchTemplate"])
    assert by_sid["TagWhatItLaunches"]["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}
    pass_role = by_sid["PassTheInstanceRole"]
    profile = nat_spot.template_data()["IamInstanceProfile"]["Arn"]["Fn::GetAtt"][0]
    instance_role = nat_spot.json["Resources"][profile]["Properties"]["Roles"][0]["Ref"]
    assert pass_role["Resource"] == {"Fn::GetAtt": [instance_role, "Arn"]}
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_pinned_azs_one_subnet_each(nat_spot):
    zones = nat_spot.group()["VPCZoneIdentifier"]
    azs = sorted(nat_spot.json["Resources"][z["Ref"]]["Properties"]["AvailabilityZone"] for z in zones)
    assert azs == ["ap-northeast-1a", "ap-northeast-1c"]


# --- 5. the outside deadline starts at the launch ----------------------------------------------------------------


def test_deadline_is_armed_by_the_launch_not_fixed_at_synth(nat_spot):
    cfg = nat_spot.config
    nat_spot.template.resource_count_is("AWS::Scheduler::Schedule", 0)  # no at() in the template
    nat_spot.template.resource_count_is("AWS::Scheduler::ScheduleGroup", 1)
    rule_id = _id(nat_spot, "AWS::Events::Rule", "Deadline")
    rule = nat_spot.json["Resources"][rule_id]["Properties"]
    assert rule["EventPattern"] == {"source": ["aws.autoscaling"], "detail-type": ["EC2 Instance Launch Successful"],
                                    "detail": {"AutoScalingGroupName": [cfg.group_name]}}
    assert rule_id in nat_spot.json["Resources"][_id(nat_spot, "Custom::StartRun")]["DependsOn"]  # before the first launch
    definition = _definition(nat_spot, "Deadline")
    assert definition["QueryLanguage"] == "JSONata"
    arm = definition["States"]["ArmDeadline"]
    assert arm["Resource"].endswith(":states:::aws-sdk:scheduler:createSchedule")
    assert arm["Catch"] == [{"ErrorEquals": ["Scheduler.ConflictException"], "Next": "AlreadyArmed"}]
    args = arm["Arguments"]
    assert args["Name"] == "deadline-nat-spot" and args["ActionAfterCompletion"] == "DELETE"
    assert f"+ {cfg.deadline_minutes * 60_000}," in args["ScheduleExpression"]  # what it computes: test_cdk_events.py
    assert args["Target"]["Arn"].endswith(":scheduler:::aws-sdk:autoscaling:updateAutoScalingGroup")
    assert json.loads(args["Target"]["Input"]) == {"AutoScalingGroupName": cfg.group_name, "MinSize": 0, "MaxSize": 0,
                                                   "DesiredCapacity": 0}


def test_deadline_roles_are_least_privilege(nat_spot):
    cfg = nat_spot.config
    target_role = _definition(nat_spot, "Deadline")["States"]["ArmDeadline"]["Arguments"]["Target"]["RoleArn"]
    role_id = json.loads(target_role.replace("'", '"'))["Fn::GetAtt"][0]
    role = nat_spot.json["Resources"][role_id]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    (stmt,) = _statements(nat_spot, role_id)
    assert stmt["Action"] == "autoscaling:UpdateAutoScalingGroup"
    assert f":autoScalingGroup:*:autoScalingGroupName/{cfg.group_name}" in json.dumps(stmt["Resource"])
    (sm,) = [r["Properties"] for k, r in nat_spot.json["Resources"].items()
             if r["Type"] == "AWS::StepFunctions::StateMachine" and "Deadline" in k]
    by_action = {s["Action"] if isinstance(s["Action"], str) else s["Action"][0]: s
                 for s in _statements(nat_spot, sm["RoleArn"]["Fn::GetAtt"][0])}
    create = json.dumps(by_action["scheduler:CreateSchedule"]["Resource"])
    assert ":schedule/" in create and "/deadline-nat-spot" in create
    assert by_action["iam:PassRole"]["Resource"] == {"Fn::GetAtt": [role_id, "Arn"]}
    assert by_action["iam:PassRole"]["Condition"] == {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}


# --- 6. the image build pulls nothing from Docker Hub --------------------------------------------------------------


def test_dockerfile_has_no_syntax_directive():
    first = (REPO / "docker" / "Dockerfile").read_text().splitlines()
    assert not [line for line in first if line.replace(" ", "").lower().startswith("#syntax=")]


# --- 8. and 9. Batch: no job waits forever in RUNNABLE; one submission per run -----------------------------------


def test_queue_cancels_jobs_blocked_in_runnable(batch):
    (queue,) = batch.resources("AWS::Batch::JobQueue")
    actions = {a["Reason"]: a for a in queue["Properties"]["JobStateTimeLimitActions"]}
    assert set(actions) == {"CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY", "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
                            "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"}
    assert all(a["Action"] == "CANCEL" and a["State"] == "RUNNABLE" for a in actions.values())
    assert actions["CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"]["MaxTimeSeconds"] == C.BATCH_CAPACITY_WAIT_MINUTES * 60
    assert actions["MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"]["MaxTimeSeconds"] == 600  # Batch's minimum


def test_failed_jobs_are_noted_next_to_the_run(batch):
    rule = batch.json["Resources"][_id(batch, "AWS::Events::Rule", "Notes")]["Properties"]
    queue_id = _id(batch, "AWS::Batch::JobQueue")
    assert rule["EventPattern"]["detail"]["jobQueue"] == [{"Fn::GetAtt": [queue_id, "JobQueueArn"]}]
    definition = _definition(batch, "Notes")
    put = definition["States"]["WriteNote"]
    assert put["Resource"].endswith(":states:::aws-sdk:s3:putObject") and definition["QueryLanguage"] == "JSONata"
    assert f"{batch.config.run_prefix}{C.BATCH_NOTES_DIR}/" in put["Arguments"]["Key"]
    (sm,) = [r["Properties"] for k, r in batch.json["Resources"].items()
             if r["Type"] == "AWS::StepFunctions::StateMachine" and "Notes" in k]
    (write,) = [s for s in _statements(batch, sm["RoleArn"]["Fn::GetAtt"][0]) if "s3:" in json.dumps(s["Action"])]
    assert write["Action"] == "s3:PutObject"
    assert json.dumps(write["Resource"]).endswith(f'/{batch.config.run_prefix}{C.BATCH_NOTES_DIR}/*"]]}}')
    from job.runfolder import BATCH_NOTES as BATCH_NOTES_DIR

    assert BATCH_NOTES_DIR == C.BATCH_NOTES_DIR  # the reader and the writer agree


def test_one_submission_per_run_id(batch):
    (key,) = [k for k, r in batch.json["Resources"].items() if r["Type"] == "Custom::BatchRun"]
    assert hashlib.sha1(batch.config.run_id.encode()).hexdigest()[:10] in key


# --- 10. a new run never replaces a running one unnoticed; 11. batch builds its image ------------------------------


def test_a_deploy_without_run_id_is_warned_as_a_new_run(batch, kept):
    (warning,) = [w for w in batch.warnings() if "run_id not set" in w]
    assert batch.config.run_id in warning and "make preflight" in warning and "replace_running=true" in warning
    assert not [w for w in kept.warnings() if "run_id not set" in w]
    assert NEW_RUN_WARNING.startswith("vit-embed:")


def test_batch_defaults_to_an_image_cdk_deploy_builds(batch):
    assert batch.config.image == C.IMAGE_ASSET
    assert from_context({"run_id": "x"}.get).image == C.IMAGE_BUILD  # the instance engine still builds on the instance
    with pytest.raises(ConfigError, match="image=build cannot be used with engine=batch"):
        from_context({"run_id": "x", "engine": "batch", "shards": "2", "image": "build"}.get)


# --- every variant: cdk-nag (at synth), cfn-lint, checkov --------------------------------------------------------


@pytest.mark.parametrize("which", ["nat_spot", "kept", "batch"])
def test_linters_clean(which, request):
    assert_linters_clean(request.getfixturevalue(which))
