"""CDK app: synthesize with default and non-default context; assert on resource properties, nag and config errors."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aws_cdk")
pytest.importorskip("cdk_nag")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aws_cdk.assertions import Match, Template  # noqa: E402

from cdk import constants as C  # noqa: E402
from cdk.config import CONTEXT_KEYS, ConfigError, from_context  # noqa: E402
from cdk.factory import cdk_json_context, create_app  # noqa: E402

pytestmark = pytest.mark.cdk

# No credentials, no metadata service, a fixed region: synth must not need AWS.
_FAKE_ENV = {
    "AWS_REGION": "ap-northeast-1",
    "AWS_DEFAULT_REGION": "ap-northeast-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "CDK_DISABLE_CLI_TELEMETRY": "true",
    "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
}
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")

CUSTOM = {
    "run_id": "mini-custom",
    "dataset": "mini",
    "instance_types": "g5.2xlarge,g6.2xlarge",
    "market": "spot",
    "spot_fallback": "on-demand",
    "max_run_hours": "1.5",
    "nat_gateway": "true",
    "availability_zone": "ap-northeast-1c",
    "retain_artifacts": "false",
    "artifact_retention_days": "14",
    "log_retention_days": "7",
    "root_volume_gb": "300",
    "channels": "CAM_FRONT,CAM_BACK",
    "include_sweeps": "true",
    "pool": "cls",
    "resize_mode": "crop",
    "index_type": "hnsw",
    "image": "123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/vit-embed:1.0",
    "sources": "s3://my-extracted-nuscenes/mini/,/mnt/nuscenes/public/v1.0/v1.0-mini.tgz",
}
IMPORTED = {
    "run_id": "imported-vpc",
    "vpc_id": "vpc-0123456789abcdef0",
    "subnet_id": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
}
# Another region (cross-region warning), the image built by cdk deploy, spot without fallback.
ASSET = {"run_id": "asset-run", "region": "us-east-1", "image": "asset", "market": "spot", "max_azs": "4"}
@pytest.fixture(scope="module", autouse=True)
def _fake_aws_env():
    mp = pytest.MonkeyPatch()
    for k, v in _FAKE_ENV.items():
        mp.setenv(k, v)
    for k in _CREDENTIAL_VARS:
        mp.delenv(k, raising=False)
    yield
    mp.undo()


class Synth:
    """One synthesized app: its config, template (dict and assertions view) and cloud assembly folder."""

    def __init__(self, overrides: dict, outdir: Path) -> None:
        ctx = {**cdk_json_context(), **overrides}
        app, stack = create_app(ctx, outdir=str(outdir))
        assembly = app.synth()  # runs cdk-nag; raises on any unacknowledged finding
        self.config = stack.config
        self.outdir = outdir
        self.artifact_id = stack.artifact_id
        self.json = assembly.get_stack_artifact(stack.artifact_id).template
        self.template = Template.from_json(self.json)

    def resources(self, type_: str) -> list[dict]:
        return [r for r in self.json["Resources"].values() if r["Type"] == type_]

    def one(self, type_: str) -> dict:
        found = self.resources(type_)
        assert len(found) == 1, f"expected one {type_}, found {len(found)}"
        return found[0]

    def user_data(self) -> str:
        """The instance's user-data with CloudFormation references shown as <Ref:...>."""
        data = self.one("AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
        parts = data["UserData"]["Fn::Base64"]["Fn::Join"][1]
        return "".join(p if isinstance(p, str) else f"<{json.dumps(p, sort_keys=True)}>" for p in parts)

    def group(self) -> dict:
        return self.one("AWS::AutoScaling::AutoScalingGroup")["Properties"]

    def template_data(self) -> dict:
        return self.one("AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]

    def warnings(self) -> list[str]:
        """The synth warnings (annotations) on the stack, from the cloud assembly's manifest."""
        artifact = json.loads((self.outdir / "manifest.json").read_text())["artifacts"][self.artifact_id]
        metadata = dict(artifact.get("metadata", {}))
        if artifact.get("additionalMetadataFile"):  # newer CDK versions move it to <stack>.metadata.json
            metadata.update(json.loads((self.outdir / artifact["additionalMetadataFile"]).read_text()))
        return [str(e["data"]) for entries in metadata.values() for e in entries if e["type"] == "aws:cdk:warning"]

    def policy_statements(self) -> list[dict]:
        return [s for p in self.resources("AWS::IAM::Policy") for s in p["Properties"]["PolicyDocument"]["Statement"]]

    def statement(self, sid: str) -> dict:
        found = [s for s in self.policy_statements() if s.get("Sid") == sid]
        assert len(found) == 1, f"expected one statement {sid}, found {found}"
        return found[0]


def assert_linters_clean(s: Synth) -> None:
    """cdk-nag (at synth: no unacknowledged finding, every reason a sentence), cfn-lint (no error) and checkov (every
    check passed or skipped with its reason) on one synthesized variant."""
    report = json.loads((s.outdir / "validation-report.json").read_text())
    (nag,) = [r for r in report["pluginReports"] if r["pluginName"] == "AwsSolutions"]
    assert nag["conclusion"] == "success" and nag["violations"] == []
    assert all(len(ack["reason"]) >= 60 for ack in nag["suppressedViolations"])
    pytest.importorskip("cfnlint")
    from cfnlint.api import ManualArgs, lint_file

    template = next(s.outdir.glob("*.template.json"))
    assert [f"{m.rule.id} {m.message}" for m in lint_file(template, ManualArgs(regions=[s.config.region]))
            if m.rule.id.startswith("E")] == []
    proc = subprocess.run([_checkov(), "-f", str(template), "--framework", "cloudformation", "--skip-download", "-o", "json"],
                          capture_output=True, text=True, timeout=300)
    checks = json.loads(proc.stdout)
    assert checks["summary"]["parsing_errors"] == 0
    assert [f"{c['check_id']} {c['resource']}" for c in checks["results"]["failed_checks"]] == []


def synth_fixture(overrides: dict, name: str):
    """A module-scoped fixture that synthesizes the app once with ``overrides`` (a test module's variant)."""

    @pytest.fixture(scope="module")
    def synthesized(tmp_path_factory) -> Synth:
        return Synth(overrides, tmp_path_factory.mktemp(name))

    return synthesized


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> Synth:
    return Synth({"run_id": "default-run"}, tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> Synth:
    return Synth(CUSTOM, tmp_path_factory.mktemp("cdk-custom"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Synth:
    return Synth(IMPORTED, tmp_path_factory.mktemp("cdk-imported"))


@pytest.fixture(scope="module")
def asset(tmp_path_factory) -> Synth:
    return Synth(ASSET, tmp_path_factory.mktemp("cdk-asset"))


VARIANTS = ["default", "custom", "imported", "asset"]


def _json_str(value) -> str:
    return json.dumps(value, sort_keys=True)


def _subnet_azs(s: Synth, refs: list) -> list[str]:
    """The AZ expression of each referenced subnet (a literal, or the Fn::Select index into Fn::GetAZs)."""
    azs = []
    for ref in refs:
        az = s.json["Resources"][ref["Ref"]]["Properties"]["AvailabilityZone"]
        azs.append(az if isinstance(az, str) else f"GetAZs[{az['Fn::Select'][0]}]")
    return azs


# --- configuration ------------------------------------------------------------------------------------------------


def test_default_config_matches_issue(default):
    cfg = default.config
    assert cfg.region == "ap-northeast-1"
    assert cfg.instance_types == ("g6e.xlarge", "g6e.2xlarge") and cfg.instance_type == "g6e.xlarge"
    assert cfg.market == "on-demand" and cfg.spot_fallback == "none"
    assert cfg.image == "build" and cfg.image_uri is None
    assert cfg.dataset == "trainval"
    assert cfg.run_prefix == "runs/default-run/"
    assert cfg.availability_zones == () and cfg.max_azs == C.DEFAULT_MAX_AZS >= 2
    assert cfg.group_name == "VitEmbedDriveData-default-run"


def test_cdk_json_keys_are_known():
    ctx = cdk_json_context()
    unknown = [k for k in ctx if not k.startswith("@aws-cdk") and k not in CONTEXT_KEYS]
    assert not unknown, f"cdk.json sets keys the app never reads: {unknown}"


def test_default_run_id_is_stable_for_the_same_options():
    """Without run_id, a plain deploy is named by the dataset and the options that change what the run computes: the
    same options are the same run (a second deploy resumes it, not a new GPU run), other options another."""
    cfg = from_context({"dataset": "mini"}.get)
    assert re.fullmatch(r"mini-[0-9a-f]{8}", cfg.run_id) and not cfg.run_id_pinned
    again = from_context({**cdk_json_context(), "dataset": "mini"}.get)  # what the CLI passes: cdk.json's values too
    assert again.run_id == cfg.run_id
    assert from_context({"dataset": "mini", "channels": "cam_front"}.get).run_id == \
        from_context({"dataset": "mini", "channels": "CAM_FRONT"}.get).run_id  # the parsed value names it
    for other in ({"pool": "cls"}, {"channels": "CAM_FRONT"}, {"include_sweeps": "true"}, {"device": "cpu"},
                  {"model": "ViT-B-32"}, {"dataset": "trainval"}):
        assert from_context({"dataset": "mini", **other}.get).run_id != cfg.run_id, other
    for where in ({"region": "us-east-1"}, {"market": "spot"}, {"max_run_hours": "2"}, {"availability_zone": "ap-northeast-1c"},
                  {"retain_artifacts": "false"}, {"root_volume_gb": "300"}):
        assert from_context({"dataset": "mini", **where}.get).run_id == cfg.run_id, where
    assert from_context({"dataset": "mini", "run_id": "mine"}.get).run_id == "mine"


def test_deadline_is_max_run_plus_margin_after_the_launch():
    cfg = from_context({"run_id": "d", "max_run_hours": "2"}.get)
    assert cfg.deadline_minutes == 120 + C.DEADLINE_MARGIN_MINUTES  # counted from the launch (tests/test_cdk_events.py)


@pytest.mark.parametrize(
    ("context", "needle"),
    [
        ({"instance_types": "p4d.24xlarge"}, "unknown context instance_types 'p4d.24xlarge'; valid choices: g5.xlarge, g5.2xlarge"),
        ({"instance_types": "g6e.xlarge,g6e.medium"}, "g6e.xlarge"),
        ({"instance_types": ","}, "instance_types is empty"),
        ({"instance_types": ",".join(C.VALID_INSTANCE_TYPES[:11])}, "valid values: 1 to 10 types"),
        ({"instance_type": "g6e.xlarge"}, "instance_type is no longer used: use instance_types"),
        ({"shutdown_behavior": "stop"}, "shutdown_behavior is no longer used"),
        ({"max_run_hours": "-1"}, "context max_run_hours -1.0 must be in 0.1..168"),
        ({"max_run_hours": "soon"}, "context max_run_hours 'soon' is not a number; valid values: 0.1 to 168"),
        ({"max_run_hours": "nan"}, "context max_run_hours 'nan' is not a finite number; valid values: 0.1 to 168"),
        ({"dataset": "test"}, "unknown context dataset 'test'; valid choices: trainval, mini"),
        ({"market": "reserved"}, "unknown context market 'reserved'; valid choices: on-demand, spot"),
        ({"spot_fallback": "reserved"}, "valid choices: none, on-demand"),
        ({"spot_fallback": "on-demand"}, "needs market=spot"),
        ({"pool": "max"}, "valid choices: mean, cls"),
        ({"resize_mode": "stretch"}, "valid choices: pad, crop, squash"),
        ({"index_type": "lsh"}, "valid choices: auto, flat, ivfpq, hnsw"),
        ({"channels": "CAM_FRONT,LIDAR_TOP"}, "'LIDAR_TOP' is not a camera; valid choices: CAM_FRONT, CAM_FRONT_LEFT"),
        ({"include_sweeps": "maybe"}, "context include_sweeps='maybe' is not a yes/no value; valid: 1, true, yes, on, 0, false"),
        ({"root_volume_gb": "20"}, "context root_volume_gb 20 must be in 100..2000"),
        ({"root_volume_gb": "150.5"}, "context root_volume_gb='150.5' is not an integer; valid values: 100 to 2000"),
        ({"device": "tpu"}, "unknown context device 'tpu'; valid choices: cuda, cpu"),
        ({"max_vcpus": "64"}, "context max_vcpus=64 needs engine=batch"),
        ({"log_retention_days": "10"}, "unknown context log_retention_days '10'; valid choices: 1, 3, 5, 7, 14"),
        ({"region": "tokyo"}, "expected something like ap-northeast-1"),
        ({"vpc_id": "vpc-0123456789abcdef0"}, "vpc_id and subnet_id go together"),
        ({"vpc_id": "vpc-0123456789abcdef0", "subnet_id": "subnet-0123456789abcdef0,subnet-x"}, "subnet_id"),
        ({"availability_zone": "us-east-1a"}, "not in region ap-northeast-1"),
        ({"max_azs": "7"}, "context max_azs 7 must be in 1..6"),
        ({"max_azs": "2", "availability_zone": "ap-northeast-1a"}, "max_azs shapes a new VPC"),
        ({"image": "Not An Image"}, "expected something like build, asset or"),
        ({"sources": "/home/me/nuscenes"}, "not reachable from the instance"),
        ({"nuscenes_meta": "s3://b/meta.tgz"}, "only used with custom sources"),
        ({"run_id": "bad run id"}, "run_id"),
    ],
)
def test_bad_context_fails_with_one_line_listing_valid_values(context, needle):
    with pytest.raises(ConfigError) as err:
        from_context(context.get)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_bad_context_fails_synth_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARS}
    env.update(_FAKE_ENV)
    env["CDK_CONTEXT_JSON"] = json.dumps({"instance_types": "t3.micro"})
    env["CDK_OUTDIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cdk context error:")]
    assert len(errors) == 1, proc.stderr
    assert "unknown context instance_types 't3.micro'; valid choices:" in errors[0] and "g6e.xlarge" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("context", [{}, {k: v for k, v in CUSTOM.items() if k != "image"}])
def test_job_cli_accepts_the_stack_arguments(context):
    """The arguments user-data hands to ``python -m job run`` parse with the job's own CLI (an ImportError fails: the
    test venv holds the job's whole lock)."""
    from job.cli import build_parser, config_from_args

    cfg = from_context({"run_id": "cli-check", **context}.get)
    args = build_parser().parse_args(["run", *cfg.job_args(), "--out", "/data/out", "--publish", f"s3://b/{cfg.run_prefix}"])
    job_cfg = config_from_args(args)
    assert job_cfg.output.publish == f"s3://b/{cfg.run_prefix}"
    assert job_cfg.source.channels == cfg.channels
    assert job_cfg.source.keyframes_only is not cfg.include_sweeps
    assert job_cfg.model.pool == cfg.pool and job_cfg.decode.resize_mode == cfg.resize_mode
    assert job_cfg.model.device == cfg.device == "cuda"  # the stack's own --device: CUDA, or a clear failure


def test_cdk_package_does_not_import_the_job_cli():
    for path in (REPO / "cdk").glob("*.py"):
        text = path.read_text()
        assert "job.cli" not in text and "from job import cli" not in text, path


# --- network ------------------------------------------------------------------------------------------------------


def test_no_inbound_rules_anywhere(default, custom, imported, asset):
    for s in (default, custom, imported, asset):
        s.template.resource_count_is("AWS::EC2::SecurityGroupIngress", 0)
        for sg in s.resources("AWS::EC2::SecurityGroup"):
            assert not sg["Properties"].get("SecurityGroupIngress"), sg


def test_egress_is_https_and_apt_http_only(default):
    sg = default.one("AWS::EC2::SecurityGroup")["Properties"]
    ports = sorted((r["IpProtocol"], r["FromPort"], r["ToPort"], r["CidrIp"]) for r in sg["SecurityGroupEgress"])
    assert ports == [("tcp", 80, 80, "0.0.0.0/0"), ("tcp", 443, 443, "0.0.0.0/0")]


def test_default_vpc_public_subnets_no_nat_s3_gateway_endpoint(default):
    t = default.template
    t.resource_count_is("AWS::EC2::VPC", 1)
    t.resource_count_is("AWS::EC2::NatGateway", 0)
    t.resource_count_is("AWS::EC2::InternetGateway", 1)
    t.has_resource_properties("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Gateway", "ServiceName": Match.any_value()})
    assert "s3" in _json_str(default.one("AWS::EC2::VPCEndpoint")["Properties"]["ServiceName"])
    t.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "REJECT"})
    for subnet in default.resources("AWS::EC2::Subnet"):
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is True
    # The default security group is stripped of its rules too.
    t.has_resource_properties("Custom::VpcRestrictDefaultSG", Match.any_value())


def test_no_az_pinned_by_default(default):
    """The group may launch in one public subnet per AZ: the first max_azs AZs of the region, none pinned."""
    zones = default.group()["VPCZoneIdentifier"]
    azs = _subnet_azs(default, zones)
    assert len(azs) == len(set(azs)) == C.DEFAULT_MAX_AZS >= 2
    assert azs == [f"GetAZs[{i}]" for i in range(C.DEFAULT_MAX_AZS)]
    for ref in zones:
        assert default.json["Resources"][ref["Ref"]]["Properties"]["MapPublicIpOnLaunch"] is True
    assert "AvailabilityZones" not in default.group()  # placement comes from the subnets alone
    assert "AvailabilityZone" not in _json_str(default.template_data())


def test_max_azs_widens_the_group(asset):
    azs = _subnet_azs(asset, asset.group()["VPCZoneIdentifier"])
    assert azs == [f"GetAZs[{i}]" for i in range(4)]


def test_pinned_az_and_nat_put_the_group_in_one_private_subnet(custom):
    t = custom.template
    t.resource_count_is("AWS::EC2::NatGateway", 1)
    zones = custom.group()["VPCZoneIdentifier"]
    assert _subnet_azs(custom, zones) == ["ap-northeast-1c"]
    assert custom.json["Resources"][zones[0]["Ref"]]["Properties"]["MapPublicIpOnLaunch"] is False


def test_imported_vpc_creates_no_network(imported):
    t = imported.template
    for type_ in ("AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::EC2::NatGateway", "AWS::EC2::InternetGateway"):
        t.resource_count_is(type_, 0)
    assert imported.group()["VPCZoneIdentifier"] == IMPORTED["subnet_id"].split(",")
    t.has_resource_properties("AWS::EC2::SecurityGroup", {"VpcId": IMPORTED["vpc_id"]})


# --- storage ------------------------------------------------------------------------------------------------------


def _artifacts_bucket(s: Synth) -> tuple[str, dict]:
    found = [(k, r) for k, r in s.json["Resources"].items() if r["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" in r["Properties"]]
    assert len(found) == 1
    return found[0]


def test_buckets_encrypted_private_versioned_logged(default):
    t = default.template
    t.resource_count_is("AWS::S3::Bucket", 2)
    for b in default.resources("AWS::S3::Bucket"):
        p = b["Properties"]
        assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert p["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert p["VersioningConfiguration"] == {"Status": "Enabled"}
        assert b["DeletionPolicy"] == "Retain"  # retain_artifacts defaults to true
    _, art = _artifacts_bucket(default)
    logs_ref = art["Properties"]["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
    assert default.json["Resources"][logs_ref]["Type"] == "AWS::S3::Bucket"


def test_buckets_enforce_tls(default):
    policies = default.resources("AWS::S3::BucketPolicy")
    assert len(policies) == 2
    for p in policies:
        deny = [s for s in p["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and s["Action"] == "s3:*" for s in deny)


def test_lifecycle_ages_out_old_runs(default, custom):
    rules = {r["Id"]: r for r in _artifacts_bucket(default)[1]["Properties"]["LifecycleConfiguration"]["Rules"]}
    runs = rules["age-out-runs"]
    assert runs["Prefix"] == "runs/" and runs["ExpirationInDays"] == C.DEFAULT_ARTIFACT_RETENTION_DAYS
    assert runs["Transitions"][0]["StorageClass"] == "STANDARD_IA"
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == C.NONCURRENT_VERSION_DAYS
    assert rules["abort-multipart"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == C.ABORT_MULTIPART_DAYS
    custom_runs = {r["Id"]: r for r in _artifacts_bucket(custom)[1]["Properties"]["LifecycleConfiguration"]["Rules"]}["age-out-runs"]
    assert custom_runs["ExpirationInDays"] == 14 and "Transitions" not in custom_runs


def test_retain_false_deletes_the_artifacts_bucket_and_keeps_the_access_logs(custom):
    art_id, art = _artifacts_bucket(custom)
    assert art["DeletionPolicy"] == "Delete"
    (logs,) = [r for k, r in custom.json["Resources"].items() if r["Type"] == "AWS::S3::Bucket" and k != art_id]
    # Late access logs (the artifacts bucket's own emptying) would land in an emptied log bucket and fail the destroy.
    assert logs["DeletionPolicy"] == "Retain" and logs["UpdateReplacePolicy"] == "Retain"
    (auto,) = custom.resources("Custom::S3AutoDeleteObjects")
    assert auto["Properties"]["BucketName"] == {"Ref": art_id}


def test_log_groups_have_retention_and_go_with_the_stack(default, custom):
    default.template.has_resource_properties("AWS::Logs::LogGroup", {"LogGroupName": "/vit-embed/VitEmbedDriveData", "RetentionInDays": 30})
    custom.template.has_resource_properties("AWS::Logs::LogGroup", {"LogGroupName": "/vit-embed/VitEmbedDriveData", "RetentionInDays": 7})
    for s in (default, custom):
        for group in s.resources("AWS::Logs::LogGroup"):
            assert group["Properties"]["RetentionInDays"] > 0 and group["DeletionPolicy"] == "Delete", group


# --- compute: the group and its launch template -------------------------------------------------------------------


def test_launch_template_defaults(default):
    data = default.template_data()
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2}
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["Monitoring"] == {"Enabled": True} and data["EbsOptimized"] is True
    (root_device,) = [k for k, r in default.json["Resources"].items() if r["Type"] == "Custom::AmiRootDevice"]
    assert data["BlockDeviceMappings"] == [  # the AMI's own root device, read at deploy (tests/test_cdk_audit3.py)
        {"DeviceName": {"Fn::GetAtt": [root_device, "Images.0.RootDeviceName"]},
         "Ebs": {"VolumeType": "gp3", "Encrypted": True, "VolumeSize": 200, "DeleteOnTermination": True}}
    ]
    assert "KeyName" not in data  # no SSH key: Session Manager only
    assert "InstanceType" not in data and "InstanceMarketOptions" not in data  # the group's policy decides both
    default.template.resource_count_is("AWS::EC2::Instance", 0)


def test_imdsv2_required_everywhere(default, custom, imported, asset):
    for s in (default, custom, imported, asset):
        assert s.template_data()["MetadataOptions"]["HttpTokens"] == "required"


def test_ami_from_public_ssm_parameter(default):
    params = default.json["Parameters"]
    ami = [p for p in params.values() if p["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"]
    assert [p["Default"] for p in ami] == [C.DEFAULT_AMI_SSM_PARAMETER]


def test_group_is_at_most_one_instance_with_fallback_types(default):
    g = default.group()
    # Created empty, raised to one instance by a custom resource (tests/test_cdk_audit3.py): the deploy never waits.
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"]) == ("0", "1", "0")
    assert g["AutoScalingGroupName"] == "VitEmbedDriveData-default-run"
    policy = g["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == ["g6e.xlarge", "g6e.2xlarge"]
    dist = policy["InstancesDistribution"]
    assert dist["OnDemandPercentageAboveBaseCapacity"] == 100 and dist["OnDemandBaseCapacity"] == 0
    assert dist["OnDemandAllocationStrategy"] == "prioritized"  # the list order is the preference
    assert g["HealthCheckType"] == "EC2" and g["CapacityRebalance"] is False


def test_spot_group_and_custom_sizes(custom, asset):
    g = custom.group()
    assert [o["InstanceType"] for o in g["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]] == ["g5.2xlarge", "g6.2xlarge"]
    for s in (custom, asset):
        dist = s.group()["MixedInstancesPolicy"]["InstancesDistribution"]
        assert dist["OnDemandPercentageAboveBaseCapacity"] == 0 and dist["OnDemandBaseCapacity"] == 0
        assert dist["SpotAllocationStrategy"] == "capacity-optimized-prioritized"
    assert custom.template_data()["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 300


# --- the deadline outside the instance ----------------------------------------------------------------------------


def _group_arn_ok(resource, group_name: str) -> bool:
    text = _json_str(resource)
    return ":autoscaling:" in text and f":autoScalingGroup:*:autoScalingGroupName/{group_name}" in text


# The deadline's schedule, role, rule and JSONata: tests/test_cdk_first_deploy.py and tests/test_cdk_events.py.


def test_instance_releases_only_its_own_group(default):
    stmt = default.statement("ReleaseOwnGroup")
    assert stmt["Action"] == "autoscaling:UpdateAutoScalingGroup"
    assert _group_arn_ok(stmt["Resource"], default.config.group_name)


# --- spot fallback -------------------------------------------------------------------------------------------------


def test_no_fallback_machinery_unless_asked(default, asset):
    for s in (default, asset):  # the deadline's and the launch notes' rules and state machines only
        launched, failed = sorted((r["Properties"]["EventPattern"] for r in s.resources("AWS::Events::Rule")),
                                  key=lambda p: p["detail-type"][0])
        assert launched["detail-type"] == ["EC2 Instance Launch Successful"]
        assert failed["detail-type"] == ["EC2 Instance Launch Unsuccessful"] and "StatusMessage" not in failed["detail"]
        s.template.resource_count_is("AWS::StepFunctions::StateMachine", 2)
        assert "SwitchToOnDemand" not in _json_str(s.resources("AWS::StepFunctions::StateMachine"))


def test_spot_fallback_switches_the_group_to_on_demand(custom):
    cfg = custom.config
    (rule,) = [r["Properties"] for r in custom.resources("AWS::Events::Rule")
               if r["Properties"]["EventPattern"]["detail-type"] == ["EC2 Instance Launch Unsuccessful"]
               and "StatusMessage" in r["Properties"]["EventPattern"]["detail"]]  # the launch notes' rule takes all
    assert rule["EventPattern"] == {  # what it matches, event by event: tests/test_cdk_events.py
        "source": ["aws.autoscaling"],
        "detail-type": ["EC2 Instance Launch Unsuccessful"],
        "detail": {"AutoScalingGroupName": [cfg.group_name],
                   "StatusMessage": [{"wildcard": m} for m in C.SPOT_CAPACITY_MESSAGES]},
    }
    (sm,) = [r["Properties"] for r in custom.resources("AWS::StepFunctions::StateMachine")
             if "SwitchToOnDemand" in _json_str(r["Properties"]["DefinitionString"])]
    parts = sm["DefinitionString"]["Fn::Join"][1]
    definition = json.loads("".join(p if isinstance(p, str) else "aws" for p in parts))
    (state,) = definition["States"].values()
    assert state["Type"] == "Task" and state["End"] is True and definition["QueryLanguage"] == "JSONata"
    assert state["Resource"].endswith(":states:::aws-sdk:autoscaling:updateAutoScalingGroup")
    assert state["Arguments"] == {
        "AutoScalingGroupName": cfg.group_name,
        "MixedInstancesPolicy": {
            "InstancesDistribution": {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 100, "OnDemandAllocationStrategy": "prioritized"}
        },
    }
    assert sm["LoggingConfiguration"]["Level"] == "ALL" and sm["TracingConfiguration"] == {"Enabled": True}
    sm_role = sm["RoleArn"]["Fn::GetAtt"][0]
    stmts = [s for p in custom.resources("AWS::IAM::Policy") if {"Ref": sm_role} in p["Properties"]["Roles"] for s in p["Properties"]["PolicyDocument"]["Statement"]]
    scaling = [s for s in stmts if "autoscaling" in _json_str(s["Action"])]
    assert len(scaling) == 1 and scaling[0]["Action"] == "autoscaling:UpdateAutoScalingGroup"
    assert _group_arn_ok(scaling[0]["Resource"], cfg.group_name)
    # The rule listens before the group's first launch: before the custom resource that raises it to one instance.
    start_id = next(k for k, r in custom.json["Resources"].items() if r["Type"] == "Custom::StartRun")
    rule_id = next(k for k, r in custom.json["Resources"].items() if r["Type"] == "AWS::Events::Rule" and "SpotFallback" in k)
    assert rule_id in custom.json["Resources"][start_id].get("DependsOn", [])


# --- IAM ----------------------------------------------------------------------------------------------------------


def test_role_writes_only_its_run_prefix(default):
    bucket_id, _ = _artifacts_bucket(default)
    write = default.statement("WriteOwnRunPrefix")
    assert write["Effect"] == "Allow"
    assert "s3:PutObject" in write["Action"] and "s3:*" not in write["Action"]
    assert write["Resource"] == {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, "/runs/default-run/*"]]}
    # Listing is not conditioned on the prefix: the job probes keys in S3 (resume), and S3 answers a HEAD of a
    # missing key with 404 only to a caller that may list the bucket (a prefix-conditioned grant gets 403).
    listing = default.statement("ListArtifacts")
    assert listing["Action"] == "s3:ListBucket" and "Condition" not in listing
    assert listing["Resource"] == {"Fn::GetAtt": [bucket_id, "Arn"]}
    # The account's weights cache: read and add, never delete, and nothing else of the bucket.
    cache = default.statement("SharedWeightsCache")
    assert sorted(cache["Action"]) == ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]
    assert cache["Resource"] == {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, f"/{C.WEIGHTS_CACHE_PREFIX}/*"]]}
    # No other statement touches the artifacts bucket, but the launch notes' put of the run's _launch.json.
    mine = ("WriteOwnRunPrefix", "ListArtifacts", "SharedWeightsCache")
    others = [s for s in default.policy_statements() if s.get("Sid") not in mine]
    (note,) = [s for s in others if bucket_id in _json_str(s)]
    assert note["Action"] == "s3:PutObject"
    assert note["Resource"] == {"Fn::Join": ["", [{"Fn::GetAtt": [bucket_id, "Arn"]}, f"/runs/default-run/{C.LAUNCH_NOTE}"]]}


def test_role_reads_source_buckets_only(default, custom):
    read = default.statement("ReadSourceBuckets")
    assert read["Action"] == "s3:GetObject"
    assert "motional-nuscenes/*" in _json_str(read["Resource"])
    custom_read = _json_str(custom.statement("ReadSourceBuckets")["Resource"])
    assert "my-extracted-nuscenes/*" in custom_read and "motional-nuscenes/*" in custom_read


def test_role_logs_scoped_to_its_group(default):
    logs_stmt = default.statement("ShipContainerLogs")
    assert sorted(logs_stmt["Action"]) == ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    assert "JobLogs" in _json_str(logs_stmt["Resource"])


# APIs without resource-level permissions: Step Functions' log delivery and X-Ray (CDK's grants for the deadline's
# state machine, which logs and traces like every state machine here), the deadline's listing of its own schedule
# group, and the deploy-time read of the AMI's root device.
NO_RESOURCE_LEVEL = ("logs:", "xray:", "scheduler:ListSchedules", "ec2:DescribeImages")


def test_no_wildcard_resources_without_ecr(default, custom, asset):
    for s in default.policy_statements():
        actions = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
        assert s.get("Resource") != "*" or all(a.startswith(NO_RESOURCE_LEVEL) for a in actions), s
    ecr_login = custom.statement("EcrLogin")
    assert ecr_login["Action"] == "ecr:GetAuthorizationToken" and ecr_login["Resource"] == "*"
    assert "repository/vit-embed" in _json_str(custom.statement("EcrPull")["Resource"])
    assert "cdk-hnb659fds-container-assets" in _json_str(asset.statement("EcrPull")["Resource"])


def test_role_has_ssm_core_and_reads_only_its_assets(default):
    (role,) = [r for r in default.resources("AWS::IAM::Role") if "ec2.amazonaws.com" in _json_str(r["Properties"]["AssumeRolePolicyDocument"])]
    assert "AmazonSSMManagedInstanceCore" in _json_str(role["Properties"]["ManagedPolicyArns"])
    asset_reads = [s for s in default.policy_statements() if "cdk-hnb659fds-assets" in _json_str(s.get("Resource"))]
    resources = [r for s in asset_reads for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
    assert len(resources) == 3  # exactly the run script, its _STATUS rules and the job source objects
    assert all(s["Action"] == "s3:GetObject" for s in asset_reads)
    for r in resources:
        key = r["Fn::Join"][1][-1]
        assert key.endswith((".sh", ".py", ".zip")) and "*" not in key


# --- user-data ----------------------------------------------------------------------------------------------------


def test_user_data_default(default):
    ud = default.user_data()
    group = default.config.group_name
    release = f"aws autoscaling update-auto-scaling-group --region ap-northeast-1 --auto-scaling-group-name {group} --min-size 0 --max-size 0 --desired-capacity 0"
    assert ud.startswith("#!/bin/bash\nset -euo pipefail\n")
    assert "shutdown -h +242 " in ud  # OS-level backstop scheduled before anything else can fail
    assert "systemd-run --unit=vit-embed-hard-stop --on-active=240m" in ud  # releases the group, then powers off
    assert ud.index("shutdown -h +242") < ud.index("systemd-run") < ud.index("aws s3 cp")
    assert ud.count(release) == 2  # in the hard stop and in the bootstrap-failure trap
    # ... which leaves the ending to the run script once it has started (after a spot notice it keeps the group).
    assert f"|| [ -e {C.SCRIPT_STARTED_MARKER} ] || {{ {release} || true; shutdown -h now; }}' EXIT" in ud
    assert "WEIGHTS_CACHE=s3://<" in ud and f">/{C.WEIGHTS_CACHE_PREFIX}\n" in ud  # the account's weights cache
    assert "RUN_ID=default-run\nRUN_PREFIX=runs/default-run/\n" in ud
    assert f"ASG_NAME={group}\n" in ud and "INSTANCE_TYPE=g6e.xlarge,g6e.2xlarge\n" in ud
    assert "MAX_RUN_MINUTES=240\n" in ud and "MARKET=on-demand\n" in ud and "IMAGE=\n" in ud
    assert "NUSCENES_BUCKET=motional-nuscenes\nNUSCENES_REGION=ap-northeast-1\nNUSCENES_MOUNT=/mnt/nuscenes\n" in ud
    for i in range(1, 11):
        assert f"--source\n/mnt/nuscenes/public/v1.0/v1.0-trainval{i:02d}_keyframes.tgz\n" in ud
    assert "--nuscenes-meta\n/mnt/nuscenes/public/v1.0/v1.0-trainval_meta.tgz\n" in ud
    for flag, value in (("--model", "ViT-L-14"), ("--pretrained", "openclip"), ("--pool", "mean"), ("--resize-mode", "pad"), ("--index-type", "auto")):
        assert f"{flag}\n{value}\n" in ud
    assert "--include-sweeps" not in ud
    assert f"'{C.SCRIPT_PATH}'" in ud and f"'{C.SOURCE_ZIP_PATH}'" in ud  # the assets downloaded: script, source,
    assert f"'{C.STATUS_RULES_PATH}'" in ud  # and the job's _STATUS rules the script runs
    assert f"{C.SCRIPT_PATH}' {C.RUN_ENV_FILE} {C.JOB_ARGS_FILE}" in ud
    assert ud.count("--region ap-northeast-1") >= 2  # asset downloads name the region (no CLI config on the AMI)


def test_user_data_custom(custom):
    ud = custom.user_data()
    assert "shutdown -h +92 " in ud and "--on-active=90m" in ud and "MARKET=spot\n" in ud
    assert "IMAGE=123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/vit-embed:1.0\n" in ud
    assert "ECR_REGISTRY=123456789012.dkr.ecr.ap-northeast-1.amazonaws.com\n" in ud
    assert "--source\ns3://my-extracted-nuscenes/mini/\n--source\n/mnt/nuscenes/public/v1.0/v1.0-mini.tgz\n" in ud
    assert "trainval" not in ud and "--nuscenes-meta" not in ud
    assert "--channels\nCAM_FRONT,CAM_BACK\n" in ud and "--include-sweeps\n" in ud
    assert "--pool\ncls\n" in ud and "--resize-mode\ncrop\n" in ud and "--index-type\nhnsw\n" in ud
    assert f"'{C.SOURCE_ZIP_PATH}'" not in ud  # prebuilt image: no source asset downloaded


def test_mini_switch(tmp_path):
    cfg = from_context({"dataset": "mini", "run_id": "m"}.get)
    args = cfg.job_args()
    assert args[:2] == ["--source", "/mnt/nuscenes/public/v1.0/v1.0-mini.tgz"]
    assert "--nuscenes-meta" not in args


def test_source_asset_leaves_out_local_state(default):
    assets = json.loads(next(default.outdir.glob("*.assets.json")).read_text())["files"]
    dirs = [default.outdir / a["source"]["path"] for a in assets.values() if a["source"].get("packaging") == "zip"]
    src = [d for d in dirs if (d / "docker" / "Dockerfile").exists()]
    assert len(src) == 1, dirs
    names = {p.name for p in src[0].iterdir()}
    assert {"pyproject.toml", "docker", ".dockerignore", "job"} <= names
    assert (src[0] / "docker" / "requirements.txt").exists()  # the image's locked requirements travel along
    assert not names & {".venv", "node_modules", "cdk.out", "tests", ".git", "cdk", "notebooks"}


def test_image_asset_is_built_by_cdk_deploy(asset):
    images = json.loads(next(asset.outdir.glob("*.assets.json")).read_text())["dockerImages"]
    (image,) = images.values()
    assert image["source"]["dockerFile"] == C.DOCKERFILE and image["source"]["platform"] == "linux/amd64"
    context = asset.outdir / image["source"]["directory"]
    staged = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert {"docker/Dockerfile", "docker/requirements.txt", "job/__main__.py"} <= set(staged)
    assert all(p.startswith(("job/", "docker/")) or p == ".dockerignore" for p in staged), staged
    ud = asset.user_data()
    assert "cdk-hnb659fds-container-assets" in ud and "IMAGE=<" in ud
    assert f"'{C.SOURCE_ZIP_PATH}'" not in ud


# --- synth warnings, outputs, linters -----------------------------------------------------------------------------


def test_cross_region_warning(default, asset):
    assert not [w for w in default.warnings() if "nuScenes bucket's region" in w]
    (warning,) = [w for w in asset.warnings() if "nuScenes bucket's region" in w]
    assert "us-east-1" in warning and "ap-northeast-1" in warning and "~43.5 GB" in warning


def test_outputs(default):
    outputs = default.json["Outputs"]
    for key in ("ArtifactsBucket", "AccessLogBucket", "RunPrefix", "LogGroup", "AutoScalingGroup", "DeadlineCommand", "InstanceCommand",
                "FollowLogsCommand", "NotebookCommand", "StatusCommand", "SessionCommand", "ResumeCommand", "RedeployCommand"):
        assert key in outputs, key
    follow = _json_str(outputs["FollowLogsCommand"]["Value"])
    assert "aws logs tail " in follow and "--log-stream-name-prefix default-run/ --follow --region ap-northeast-1" in follow
    status = _json_str(outputs["StatusCommand"]["Value"])
    assert "python -m job status s3://" in status and "/runs/default-run/ --watch" in status
    resume = _json_str(outputs["ResumeCommand"]["Value"])
    assert resume.endswith(f"aws autoscaling update-auto-scaling-group --auto-scaling-group-name {default.config.group_name} "
                           "--min-size 0 --max-size 1 --desired-capacity 1 --region ap-northeast-1\"]]}")
    assert "aws scheduler delete-schedule --group-name " in resume  # a resume starts a fresh deadline
    notebook = _json_str(outputs["NotebookCommand"]["Value"])
    assert "RUN_URI=s3://" in notebook and "/runs/default-run/ jupyter lab notebooks/umap_visualize.ipynb" in notebook
    assert "/runs/default-run/" in _json_str(outputs["RunPrefix"]["Value"])
    assert "aws scheduler get-schedule --group-name " in _json_str(outputs["DeadlineCommand"]["Value"])
    assert default.config.group_name in outputs["SessionCommand"]["Value"]


@pytest.mark.parametrize("which", VARIANTS)
def test_cfn_lint_zero_errors(which, request):
    pytest.importorskip("cfnlint")
    from cfnlint.api import ManualArgs, lint_file

    s: Synth = request.getfixturevalue(which)
    matches = lint_file(next(s.outdir.glob("*.template.json")), ManualArgs(regions=[s.config.region]))
    errors = [f"{m.rule.id} {m.message}" for m in matches if m.rule.id.startswith("E")]
    assert errors == []


@pytest.mark.parametrize("which", VARIANTS)
def test_cdk_nag_zero_unacknowledged_findings(which, request):
    s: Synth = request.getfixturevalue(which)
    report = json.loads((s.outdir / "validation-report.json").read_text())
    (nag,) = [r for r in report["pluginReports"] if r["pluginName"] == "AwsSolutions"]
    assert nag["conclusion"] == "success"
    assert nag["violations"] == []
    for ack in nag["suppressedViolations"]:
        assert len(ack["reason"]) >= 60, ack["ruleName"]


def _checkov() -> str:
    local = REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov"
    found = str(local) if local.exists() else shutil.which("checkov")
    if not found:
        pytest.skip("checkov not installed: make checkov (its own venv; it pins dependencies below the lock's)")
    return found


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
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}" for c in results["failed_checks"]]
    assert failed == [], failed
    docs = (REPO / "docs" / "cloud.md").read_text()
    for c in results["skipped_checks"]:
        comment = c["check_result"].get("suppress_comment", "")
        assert len(comment) >= 60, c["check_id"]
        assert c["check_id"] in docs, f"{c['check_id']} is skipped but docs/cloud.md does not justify it"
