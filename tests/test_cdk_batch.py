"""CDK app with ``-c engine=batch -c shards=N``: AWS Batch compute environment, queue, job definitions, the array
job of N shards and the merge that depends on it, their IAM, the context errors, and the linters (cdk-nag,
cfn-lint, checkov) on every batch variant. Synthesis only: no AWS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aws_cdk")
pytest.importorskip("cdk_nag")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from test_cdk_stack import _CREDENTIAL_VARS, _FAKE_ENV, Synth, _checkov, _fake_aws_env  # noqa: E402, F401 (the module's offline AWS environment)
from test_preflight import aws  # noqa: E402, F401 (a fixture: moto for the preflight's clients)
from test_preflight import run as preflight_run  # noqa: E402

from cdk import constants as C  # noqa: E402
from cdk.config import ConfigError, from_context  # noqa: E402

pytestmark = pytest.mark.cdk

BATCH = {"run_id": "batch-run", "engine": "batch", "shards": "4", "image": "asset"}
# One shard (no array), spot, a prebuilt ECR image, other types, a shorter timeout, mini.
BATCH_ONE = {
    "run_id": "batch-one",
    "engine": "batch",
    "shards": "1",
    "dataset": "mini",
    "market": "spot",
    "instance_types": "g6e.2xlarge,g5.12xlarge",
    "max_run_hours": "1.5",
    "image": "123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/vit-embed:1.0",
    "index_type": "hnsw",
}
# More shards than archives (hash split, warned), all cameras from custom S3 sources, private subnets.
BATCH_MANY = {
    "run_id": "batch-many",
    "engine": "batch",
    "shards": "12",
    "image": "public.ecr.aws/example/vit-embed:1.0",
    "nat_gateway": "true",
    "dataset": "mini",
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Synth:
    return Synth(BATCH, tmp_path_factory.mktemp("cdk-batch"))


@pytest.fixture(scope="module")
def batch_one(tmp_path_factory) -> Synth:
    return Synth(BATCH_ONE, tmp_path_factory.mktemp("cdk-batch-one"))


@pytest.fixture(scope="module")
def batch_many(tmp_path_factory) -> Synth:
    return Synth(BATCH_MANY, tmp_path_factory.mktemp("cdk-batch-many"))


VARIANTS = ["batch", "batch_one", "batch_many"]


def _job_definitions(s: Synth) -> tuple[dict, dict]:
    """(shard, merge) job definitions: the shard is the one that asks for a GPU."""
    defs = [r["Properties"] for r in s.resources("AWS::Batch::JobDefinition")]
    assert len(defs) == 2
    gpu = [d for d in defs if any(r["Type"] == "GPU" for r in d["ContainerProperties"]["ResourceRequirements"])]
    assert len(gpu) == 1, "exactly one job definition asks for a GPU"
    return gpu[0], next(d for d in defs if d is not gpu[0])


def _requirements(d: dict) -> dict[str, str]:
    return {r["Type"]: r["Value"] for r in d["ContainerProperties"]["ResourceRequirements"]}


def _submission(s: Synth) -> tuple[str, dict]:
    """(logical id, properties) of the run's Custom::BatchRun (cdk/submission.py)."""
    (found,) = [(k, r["Properties"]) for k, r in s.json["Resources"].items() if r["Type"] == "Custom::BatchRun"]
    return found


def _logical_id(s: Synth, type_: str) -> str:
    (key,) = [k for k, r in s.json["Resources"].items() if r["Type"] == type_]
    return key


def _statements(s: Synth, role_id: str) -> list[dict]:
    return [st for p in s.resources("AWS::IAM::Policy") if {"Ref": role_id} in p["Properties"]["Roles"]
            for st in p["Properties"]["PolicyDocument"]["Statement"]]


# --- configuration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "needle"),
    [
        ({"engine": "batch", "shards": "0", "image": "asset"}, "context shards 0 must be in 1..100"),
        ({"engine": "batch", "shards": "101", "image": "asset"}, "context shards 101 must be in 1..100"),
        ({"engine": "batch", "shards": "two", "image": "asset"}, "context shards='two' is not an integer; valid values: 1 to 100"),
        ({"shards": "4"}, "context shards=4 needs engine=batch"),
        ({"engine": "foo"}, "unknown context engine 'foo'; valid choices: instance, batch"),
        ({"engine": "batch", "image": "asset"}, "context engine=batch needs shards=N; valid values: 1 to 100"),
        ({"engine": "batch", "shards": "4", "image": "build"}, "valid values: asset (cdk deploy builds and pushes it), or an image URI"),
        ({"engine": "batch", "shards": "4", "image": "asset", "market": "spot", "spot_fallback": "on-demand"},
         "valid values with engine=batch: none"),
        ({"engine": "batch", "shards": "4", "image": "asset", "sources": "/mnt/nuscenes/public/v1.0/v1.0-mini.tgz"},
         "valid values with engine=batch: s3://bucket/key"),
        ({"engine": "batch", "shards": "4", "image": "asset", "ami_ssm_parameter": "/aws/service/other/ami-id"},
         "ami_ssm_parameter is for engine=instance"),
    ],
)
def test_bad_batch_context_is_one_line(context, needle):
    with pytest.raises(ConfigError) as err:
        from_context({"run_id": "x", **context}.get)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("context", [{"engine": "batch", "shards": "0", "image": "asset"}, {"shards": "3"}, {"engine": "foo"}])
def test_bad_batch_context_stops_synth_with_one_line_and_writes_nothing(context, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARS}
    env.update(_FAKE_ENV, CDK_CONTEXT_JSON=json.dumps(context), CDK_OUTDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cdk context error:")]
    assert len(errors) == 1, proc.stderr
    assert not list(tmp_path.glob("*.template.json")), "nothing synthesized"


def test_batch_reads_the_dataset_from_s3_and_the_instance_from_the_mount():
    batch_args = from_context({"run_id": "x", **BATCH}.get).job_args()
    instance_args = from_context({"run_id": "x"}.get).job_args()
    assert f"{C.NUSCENES_S3_ROOT}/v1.0-trainval01_keyframes.tgz" in batch_args
    assert f"{C.NUSCENES_S3_ROOT}/v1.0-trainval_meta.tgz" in batch_args
    assert f"{C.NUSCENES_MOUNT}/public/v1.0/v1.0-trainval01_keyframes.tgz" in instance_args


def test_constants_agree_with_the_job():
    from job.errors import Interrupted
    from job.runfolder import SHARDS_DIR

    assert C.EXIT_STOPPED == Interrupted.exit_code
    assert C.SHARDS_DIR == SHARDS_DIR


# --- the compute environment and the queue ------------------------------------------------------------------------


def test_compute_environment_gpu_types_min_zero_subnets_in_every_az(batch):
    ce = batch.one("AWS::Batch::ComputeEnvironment")["Properties"]
    res = ce["ComputeResources"]
    assert ce["Type"] == "managed" and ce["State"] == "ENABLED"
    assert res["Type"] == "EC2" and res["AllocationStrategy"] == "BEST_FIT_PROGRESSIVE"
    assert res["InstanceTypes"] == ["g6e.xlarge", "g6e.2xlarge"]  # the context's types, no "optimal"
    assert res["MinvCpus"] == 0
    assert res["MaxvCpus"] == 4 * 8  # four shards on the largest per-GPU share (g6e.2xlarge)
    assert res["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}]  # driver 580: CUDA 13
    azs = []
    for ref in res["Subnets"]:
        az = batch.json["Resources"][ref["Ref"]]["Properties"]["AvailabilityZone"]
        azs.append(az if isinstance(az, str) else f"GetAZs[{az['Fn::Select'][0]}]")
    assert len(set(azs)) == len(azs) == C.DEFAULT_MAX_AZS >= 2
    (sg,) = res["SecurityGroupIds"]
    assert batch.json["Resources"][sg["Fn::GetAtt"][0]]["Type"] == "AWS::EC2::SecurityGroup"
    lt = batch.json["Resources"][res["LaunchTemplate"]["LaunchTemplateId"]["Ref"]]["Properties"]["LaunchTemplateData"]
    assert lt["MetadataOptions"] == {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1}
    assert lt["BlockDeviceMappings"] == [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeType": "gp3", "Encrypted": True, "VolumeSize": 200, "DeleteOnTermination": True}}
    ]
    assert "UserData" not in lt  # Batch would need MIME multipart; nothing to add


def test_spot_compute_environment(batch_one):
    res = batch_one.one("AWS::Batch::ComputeEnvironment")["Properties"]["ComputeResources"]
    assert res["Type"] == "SPOT" and res["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert res["InstanceTypes"] == ["g6e.2xlarge", "g5.12xlarge"] and res["MinvCpus"] == 0
    assert res["MaxvCpus"] == 12  # one shard; g5.12xlarge: 48 vCPUs over 4 GPUs


def test_private_subnets_with_nat(batch_many):
    res = batch_many.one("AWS::Batch::ComputeEnvironment")["Properties"]["ComputeResources"]
    batch_many.template.resource_count_is("AWS::EC2::NatGateway", 1)
    for ref in res["Subnets"]:
        assert batch_many.json["Resources"][ref["Ref"]]["Properties"]["MapPublicIpOnLaunch"] is False
    assert res["MaxvCpus"] == 12 * 8


def test_one_queue_over_the_compute_environment(batch):
    q = batch.one("AWS::Batch::JobQueue")["Properties"]
    ce_id = _logical_id(batch, "AWS::Batch::ComputeEnvironment")
    assert q["ComputeEnvironmentOrder"] == [{"ComputeEnvironment": {"Fn::GetAtt": [ce_id, "ComputeEnvironmentArn"]}, "Order": 1}]
    assert q["State"] == "ENABLED"


def test_no_instance_engine_machinery(batch, batch_one):
    for s in (batch, batch_one):
        for type_ in ("AWS::AutoScaling::AutoScalingGroup", "AWS::Scheduler::Schedule", "AWS::Scheduler::ScheduleGroup",
                      "AWS::EC2::Instance", "AWS::EC2::SecurityGroupIngress"):
            s.template.resource_count_is(type_, 0)
        # One state machine: the notes of why Batch ended a job FAILED (cdk/batch_notes.py), no deadline, no fallback.
        (sm,) = [k for k, r in s.json["Resources"].items() if r["Type"] == "AWS::StepFunctions::StateMachine"]
        assert sm.startswith("Notes")
        for sg in s.resources("AWS::EC2::SecurityGroup"):
            assert not sg["Properties"].get("SecurityGroupIngress"), sg


# --- the job definitions --------------------------------------------------------------------------------------------


def test_shard_job_one_gpu_retries_host_loss_and_exit_75_timeout(batch):
    shard, _ = _job_definitions(batch)
    req = _requirements(shard)
    assert req["GPU"] == "1" and req["VCPU"] == "4"  # fits one GPU of g6e.xlarge
    assert int(req["MEMORY"]) == int(32 * 1024 * C.BATCH_MEMORY_FRACTION)
    assert shard["PlatformCapabilities"] == ["EC2"]
    assert shard["RetryStrategy"] == {
        "Attempts": C.BATCH_ATTEMPTS,
        "EvaluateOnExit": [
            {"Action": "RETRY", "OnStatusReason": "Host EC2*"},
            {"Action": "RETRY", "OnExitCode": "75"},
            {"Action": "EXIT", "OnReason": "*"},
        ],
    }
    assert shard["Timeout"] == {"AttemptDurationSeconds": batch.config.max_run_minutes * 60} == {"AttemptDurationSeconds": 4 * 3600}
    container = shard["ContainerProperties"]
    assert container["LinuxParameters"] == {"SharedMemorySize": C.BATCH_SHM_GIB * 1024}
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert container["LogConfiguration"]["Options"]["awslogs-stream-prefix"] == "batch-run"
    assert {e["Name"]: e["Value"] for e in container["Environment"]} == {"AWS_REGION": "ap-northeast-1", "AWS_DEFAULT_REGION": "ap-northeast-1"}
    assert "Privileged" not in container or container["Privileged"] is False


def test_shard_command_reads_the_array_index(batch):
    shard, _ = _job_definitions(batch)
    cmd = shard["ContainerProperties"]["Command"]
    assert cmd[:3] == ["run", "--shard", "$AWS_BATCH_JOB_ARRAY_INDEX/4"]
    text = json.dumps(cmd)
    assert f"{C.NUSCENES_S3_ROOT}/v1.0-trainval10_keyframes.tgz" in cmd and "/mnt/nuscenes" not in text
    i = cmd.index("--out")
    assert json.dumps(cmd[i + 1]).endswith('"/runs/batch-run/"]]}')
    assert json.dumps(cmd[cmd.index("--weights-cache") + 1]).endswith('"/cache/weights"]]}')
    assert cmd[cmd.index("--device") + 1] == "cuda" and cmd.count("--device") == 1  # a GPU torch cannot use fails


def test_merge_job_cpu_and_memory_only(batch, batch_one):
    _, merge = _job_definitions(batch)
    req = _requirements(merge)
    assert set(req) == {"VCPU", "MEMORY"}
    assert merge["RetryStrategy"]["Attempts"] == C.BATCH_ATTEMPTS and merge["Timeout"]["AttemptDurationSeconds"] == 4 * 3600
    cmd = merge["ContainerProperties"]["Command"]
    assert cmd[:2] == ["merge", "--run"] and json.dumps(cmd[2]).endswith('"/runs/batch-run/"]]}')
    assert cmd[3:] == ["--index-type", "auto", "--log-level", "INFO"]
    _, merge_one = _job_definitions(batch_one)
    assert merge_one["ContainerProperties"]["Command"][3:5] == ["--index-type", "hnsw"]
    assert merge_one["Timeout"]["AttemptDurationSeconds"] == 90 * 60


def test_one_shard_is_a_single_job(batch_one):
    shard, _ = _job_definitions(batch_one)
    assert shard["ContainerProperties"]["Command"][:3] == ["run", "--shard", "0/1"]
    assert _submission(batch_one)[1]["Shards"] == "1"  # the handler submits no array: Batch arrays have 2 to 10,000
    req = _requirements(shard)
    # One GPU's share on every type: g6e.2xlarge 8 vCPU / 64 GiB, g5.12xlarge 48 / 4 = 12 vCPU and 192 / 4 = 48 GiB.
    assert req["VCPU"] == "8" and int(req["MEMORY"]) == int(48 * 1024 * C.BATCH_MEMORY_FRACTION)
    assert shard["ContainerProperties"]["Image"] == BATCH_ONE["image"]


def test_job_cli_accepts_the_commands(batch, monkeypatch):
    """The commands the job definitions run parse with the job's own CLI. An ImportError here is the regression this
    test exists to catch (a module the CLI needs moved or gone): it fails, it never skips."""
    from job.cli import build_parser, config_from_args

    shard, merge = _job_definitions(batch)

    def plain(cmd: list) -> list[str]:
        return [c if isinstance(c, str) else "s3://bucket/runs/batch-run/" for c in cmd]

    monkeypatch.setenv(C.ARRAY_INDEX_VAR, "3")
    cfg = config_from_args(build_parser().parse_args(plain(shard["ContainerProperties"]["Command"])))
    assert cfg.source.shard == (3, 4) and cfg.model.model == "ViT-L-14" and cfg.model.device == "cuda"
    assert cfg.model.weights_cache == "s3://bucket/runs/batch-run/"
    merged = config_from_args(build_parser().parse_args(plain(merge["ContainerProperties"]["Command"])))
    assert merged.output.out.startswith("s3://bucket/runs/batch-run")


def test_shard_index_from_an_unset_variable_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from job.cli import main

    monkeypatch.delenv(C.ARRAY_INDEX_VAR, raising=False)
    out = tmp_path / "run"
    assert main(["run", "--source", str(tmp_path), "--shard", f"${C.ARRAY_INDEX_VAR}/4", "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"the environment variable {C.ARRAY_INDEX_VAR} is not set" in line and not out.exists()
    monkeypatch.setenv(C.ARRAY_INDEX_VAR, "4")  # out of range for N = 4
    assert main(["run", "--source", str(tmp_path), "--shard", f"${C.ARRAY_INDEX_VAR}/4", "--out", str(out)]) == 2
    assert "is out of range" in capsys.readouterr().err and not out.exists()


# --- the submission on deploy -------------------------------------------------------------------------------------


def test_the_run_is_submitted_by_one_resource_keyed_by_its_run_id(batch):
    import hashlib

    key, props = _submission(batch)
    # A new run id is a new resource (Create, and Delete of the old one), never an Update of this one.
    assert hashlib.sha1(b"batch-run").hexdigest()[:10] in key
    queue_id = _logical_id(batch, "AWS::Batch::JobQueue")
    assert props["JobQueue"] == {"Fn::GetAtt": [queue_id, "JobQueueArn"]} and props["Shards"] == "4"
    assert props["JobName"] == "VitEmbedDriveData-batch-run"  # -shards and -merge (cdk/functions/submit_run)
    commands = {json.dumps(props[k]): batch.json["Resources"][props[k]["Ref"]]["Properties"]["ContainerProperties"]["Command"][0]
                for k in ("ShardJobDefinition", "MergeJobDefinition")}
    assert sorted(commands.values()) == ["merge", "run"]
    assert props["DeployedAt"] == f"{batch.config.synth_time:%Y-%m-%dT%H:%M:%SZ}"  # every deploy asks the handler again
    fn = batch.json["Resources"][props["ServiceToken"]["Fn::GetAtt"][0]]["Properties"]
    assert fn["Handler"] == "index.lambda_handler" and fn["Runtime"].startswith("python3.")


def test_submission_role_submits_this_run_only(batch):
    _, props = _submission(batch)
    fn = batch.json["Resources"][props["ServiceToken"]["Fn::GetAtt"][0]]
    role_id = fn["Properties"]["Role"]["Fn::GetAtt"][0]
    role = batch.json["Resources"][role_id]["Properties"]
    assert "ManagedPolicyArns" not in role  # its own log group only, no AWSLambdaBasicExecutionRole
    by_sid = {s["Sid"]: s for s in _statements(batch, role_id)}
    assert set(by_sid) == {"WriteOwnLogs", "SubmitThisRun", "FindThisRunsJobs", "TerminateThisRun"}
    queue_id = _logical_id(batch, "AWS::Batch::JobQueue")
    submit = by_sid["SubmitThisRun"]
    assert submit["Action"] == "batch:SubmitJob" and len(submit["Resource"]) == 3
    assert {"Fn::GetAtt": [queue_id, "JobQueueArn"]} in submit["Resource"]
    assert by_sid["FindThisRunsJobs"] == {"Sid": "FindThisRunsJobs", "Action": "batch:ListJobs", "Effect": "Allow", "Resource": "*"}
    assert by_sid["TerminateThisRun"]["Action"] == "batch:TerminateJob" and ":job/*" in json.dumps(by_sid["TerminateThisRun"])
    assert "Fn::GetAtt" in by_sid["WriteOwnLogs"]["Resource"]
    assert fn["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] in batch.json["Resources"]


# --- IAM: each container its part of the run -----------------------------------------------------------------------


def _job_role(s: Synth, which: int) -> str:
    return _job_definitions(s)[which]["ContainerProperties"]["JobRoleArn"]["Fn::GetAtt"][0]


def test_shard_role_writes_only_its_shards_and_the_weights_cache(batch):
    role_id = _job_role(batch, 0)
    trust = batch.json["Resources"][role_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [t["Principal"] for t in trust] == [{"Service": "ecs-tasks.amazonaws.com"}]
    by_sid = {s["Sid"]: s for s in _statements(batch, role_id)}
    assert set(by_sid) == {"WriteOwnShards", "SharedWeightsCache", "ListArtifacts", "ReadSourceBuckets", "ListSourceBuckets"}
    assert json.dumps(by_sid["WriteOwnShards"]["Resource"]).endswith('"/runs/batch-run/shards/*"]]}')
    assert json.dumps(by_sid["SharedWeightsCache"]["Resource"]).endswith('"/cache/weights/*"]]}')
    assert "s3:DeleteObject" not in by_sid["SharedWeightsCache"]["Action"]
    assert by_sid["ListArtifacts"]["Action"] == "s3:ListBucket" and "Fn::GetAtt" in by_sid["ListArtifacts"]["Resource"]
    assert by_sid["ReadSourceBuckets"]["Action"] == "s3:GetObject" and "motional-nuscenes/*" in json.dumps(by_sid["ReadSourceBuckets"])


def test_merge_role_writes_only_the_run(batch):
    by_sid = {s["Sid"]: s for s in _statements(batch, _job_role(batch, 1))}
    assert set(by_sid) == {"WriteOwnRun", "ListArtifacts"}
    assert json.dumps(by_sid["WriteOwnRun"]["Resource"]).endswith('"/runs/batch-run/*"]]}')


def test_no_wildcard_resources_but_the_unavoidable(batch, batch_one, batch_many):
    # No resource-level permissions: ECR's login, Batch's ListJobs (the submission finds the run's jobs by name), and
    # the notes state machine's log delivery and X-Ray grants (CDK's, for every logged and traced state machine).
    allowed = {"ecr:GetAuthorizationToken", "batch:ListJobs", "logs:CreateLogDelivery", "logs:CreateLogStream",
               "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery", "logs:ListLogDeliveries",
               "logs:PutLogEvents", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
               "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"}
    for s in (batch, batch_one, batch_many):
        for p in s.resources("AWS::IAM::Policy"):
            for st in p["Properties"]["PolicyDocument"]["Statement"]:
                if st.get("Resource") == "*":
                    actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                    assert set(actions) <= allowed, st
    pulls = [st for p in batch_one.resources("AWS::IAM::Policy") for st in p["Properties"]["PolicyDocument"]["Statement"]
             if st.get("Sid") == "EcrPull"]
    assert len(pulls) == 2 and all("repository/vit-embed" in json.dumps(st["Resource"]) for st in pulls)


def test_host_role_is_the_ecs_agent_policy_only(batch):
    (profile,) = batch.resources("AWS::IAM::InstanceProfile")
    role_id = profile["Properties"]["Roles"][0]["Ref"]
    role = batch.json["Resources"][role_id]["Properties"]
    assert "AmazonEC2ContainerServiceforEC2Role" in json.dumps(role["ManagedPolicyArns"])
    assert _statements(batch, role_id) == []  # no data access on the host


# --- preflight ------------------------------------------------------------------------------------------------------


def test_preflight_counts_quota_for_n_shards_and_skips_the_dlami(aws):  # noqa: F811 (the fixture from test_preflight)
    from cdk.preflight import OK, WARN

    ctx = {"engine": "batch", "shards": "10", "image": "public.ecr.aws/example/vit-embed:1.0"}
    r = preflight_run(ctx, quotas={"on-demand": 16.0})
    assert r["GPU quota"].status == WARN and "4 of 10 shards at once" in r["GPU quota"].detail
    assert "AMI" not in r  # Batch picks the ECS GPU AMI itself
    assert preflight_run(ctx, quotas={"on-demand": 64.0})["GPU quota"].status == OK


# --- warnings, outputs --------------------------------------------------------------------------------------------


def test_more_shards_than_archives_is_warned(batch, batch_many):
    assert not [w for w in batch.warnings() if "archive(s)" in w]
    (warning,) = [w for w in batch_many.warnings() if "archive(s)" in w]
    assert "shards=12 > the 1 archive(s) of dataset=mini" in warning


def test_outputs(batch):
    outputs = batch.json["Outputs"]
    for key in ("ArtifactsBucket", "RunPrefix", "LogGroup", "JobQueue", "ShardsJobId", "MergeJobId", "StatusCommand",
                "JobsCommand", "FollowLogsCommand", "NotebookCommand"):
        assert key in outputs, key
    assert "python -m job status s3://" in json.dumps(outputs["StatusCommand"]["Value"])
    assert "aws batch describe-jobs" in json.dumps(outputs["JobsCommand"]["Value"])
    assert "--log-stream-name-prefix batch-run/" in json.dumps(outputs["FollowLogsCommand"]["Value"])


# --- linters ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", VARIANTS)
def test_cdk_nag_zero_unacknowledged_findings(which, request):
    s: Synth = request.getfixturevalue(which)
    report = json.loads((s.outdir / "validation-report.json").read_text())
    (nag,) = [r for r in report["pluginReports"] if r["pluginName"] == "AwsSolutions"]
    assert nag["conclusion"] == "success" and nag["violations"] == []
    for ack in nag["suppressedViolations"]:
        assert len(ack["reason"]) >= 60, ack["ruleName"]


@pytest.mark.parametrize("which", VARIANTS)
def test_cfn_lint_zero_errors(which, request):
    pytest.importorskip("cfnlint")
    from cfnlint.api import ManualArgs, lint_file

    s: Synth = request.getfixturevalue(which)
    matches = lint_file(next(s.outdir.glob("*.template.json")), ManualArgs(regions=[s.config.region]))
    assert [f"{m.rule.id} {m.message}" for m in matches if m.rule.id.startswith("E")] == []


@pytest.mark.parametrize("which", VARIANTS)
def test_checkov_every_check_passes_or_is_justified(which, request):
    s: Synth = request.getfixturevalue(which)
    template = next(s.outdir.glob("*.template.json"))
    proc = subprocess.run(
        [_checkov(), "-f", str(template), "--framework", "cloudformation", "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )
    report = json.loads(proc.stdout)
    assert report["summary"]["passed"] > 50 and report["summary"]["parsing_errors"] == 0, report["summary"]
    assert [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]] == []
    docs = (REPO / "docs" / "cloud.md").read_text()
    for c in report["results"]["skipped_checks"]:
        assert len(c["check_result"].get("suppress_comment", "")) >= 60, c["check_id"]
        assert c["check_id"] in docs


def test_cli_synth_of_the_readme_command_offline(tmp_path):
    """`npx cdk synth -c engine=batch -c shards=10 -c image=asset` through the pinned CLI, no credentials."""
    cli = REPO / "node_modules" / ".bin" / "cdk"
    if not cli.exists():
        pytest.skip("node_modules/.bin/cdk missing: run `npm ci` (the Makefile's setup does)")
    env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARS}
    env.update(_FAKE_ENV)
    proc = subprocess.run(
        [str(cli), "synth", "--quiet", "--no-notices", "--output", str(tmp_path), "-c", "engine=batch", "-c", "shards=10",
         "-c", "image=asset", "-c", "run_id=cli-batch"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    template = json.loads((tmp_path / "EmbeddingRun.template.json").read_text())
    (ce,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Batch::ComputeEnvironment"]
    assert ce["Properties"]["ComputeResources"]["MaxvCpus"] == 80
    (run,) = [r for r in template["Resources"].values() if r["Type"] == "Custom::BatchRun"]
    assert run["Properties"]["Shards"] == "10"
