"""Preflight (python -m cdk.preflight): each check against moto where moto implements the call (STS, EC2 offerings,
subnets, instance types, instances, images, CloudFormation, SSM), botocore's Stubber where it does not (Service
Quotas), and a stand-in answer for the public DLAMI parameter (AWS's reserved /aws/ names cannot be put in moto)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from botocore.exceptions import NoCredentialsError  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

from cdk import constants as C  # noqa: E402
from cdk.config import from_context  # noqa: E402
from cdk.preflight import FAIL, OK, WARN, Preflight, main  # noqa: E402

REGION = "ap-northeast-1"


@pytest.fixture
def aws(monkeypatch):
    """moto for everything it implements; fake credentials so nothing can reach AWS."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        yield


class Clients:
    """boto3 clients on moto, with Service Quotas and the public AMI parameter stubbed (moto has neither)."""

    def __init__(self, *, quotas: dict[str, float | None] | None = None, ami: bool = True, bootstrap: str | None = "21") -> None:
        self.session = boto3.session.Session(region_name=REGION)
        self.cache: dict[str, object] = {}
        self.quotas = {"on-demand": 64.0, "spot": 64.0} if quotas is None else quotas
        self.ami = ami
        if bootstrap is not None:  # what `cdk bootstrap` leaves for the CLI to check (any stack name)
            self.client("ssm").put_parameter(Name=C.BOOTSTRAP_VERSION_PARAMETER, Value=bootstrap, Type="String",
                                             Overwrite=True)

    def client(self, service: str):
        if service not in self.cache:
            self.cache[service] = self._make(service)
        return self.cache[service]

    __call__ = client

    def _make(self, service: str):
        client = self.session.client(service, region_name=REGION)
        if service == "service-quotas":
            stub = Stubber(client)
            for market, value in self.quotas.items():
                code = C.GPU_QUOTA_CODES[market]
                if value is None:  # never adjusted: GetServiceQuota says so, the default applies
                    stub.add_client_error("get_service_quota", "NoSuchResourceException", "no applied value")
                    stub.add_response(
                        "get_aws_default_service_quota",
                        {"Quota": {"QuotaCode": code, "Value": 8.0}},
                        {"ServiceCode": "ec2", "QuotaCode": code},
                    )
                else:
                    stub.add_response(
                        "get_service_quota", {"Quota": {"QuotaCode": code, "Value": value}}, {"ServiceCode": "ec2", "QuotaCode": code}
                    )
            stub.activate()
        elif service == "ssm" and self.ami:
            image_id = self.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
            moto_get = client.get_parameter

            def get_parameter(**kwargs):  # the public DLAMI parameter as AWS answers it; the rest from moto
                if kwargs.get("Name") == C.DEFAULT_AMI_SSM_PARAMETER:
                    return {"Parameter": {"Name": C.DEFAULT_AMI_SSM_PARAMETER, "Type": "String", "Value": image_id}}
                return moto_get(**kwargs)

            client.get_parameter = get_parameter
        return client


def run(ctx: dict | None = None, **clients) -> dict[str, object]:
    cfg = from_context({"run_id": "pf", **(ctx or {})}.get)
    results = Preflight(cfg, Clients(**clients)).run()
    assert len({r.name for r in results}) == len(results)
    return {r.name: r for r in results}


def test_everything_in_place(aws):
    r = run()
    assert {name: c.status for name, c in r.items()} == {
        "credentials": OK, "region": OK, "instance types": WARN, "GPU quota": OK, "AMI": OK, "bootstrap": OK,
        "running run": OK,
    }
    # moto's offerings have g6e in 2 of the region's first 3 AZs: the group would try the third too (tests below).
    assert "ap-northeast-1d offers none of them" in r["instance types"].detail
    assert "account 123456789012" in r["credentials"].detail
    # Where each type is offered (moto's offerings for the region), named per type.
    assert "g6e.xlarge: ap-northeast-1a" in r["instance types"].detail and "g6e.2xlarge:" in r["instance types"].detail
    assert "on-demand 64 vCPUs (L-DB2E81BA) covers g6e.xlarge 4, g6e.2xlarge 8" in r["GPU quota"].detail
    assert C.DEFAULT_AMI_SSM_PARAMETER in r["AMI"].detail and "ami-" in r["AMI"].detail
    assert "version 21" in r["bootstrap"].detail


def test_missing_bootstrap_fails_with_the_command(aws):
    r = run(bootstrap=None)
    assert r["bootstrap"].status == FAIL
    assert f"({C.BOOTSTRAP_VERSION_PARAMETER} not found)" in r["bootstrap"].detail
    assert "npx cdk bootstrap aws://123456789012/ap-northeast-1" in r["bootstrap"].detail


def test_old_bootstrap_fails(aws):
    r = run(bootstrap="5")
    assert r["bootstrap"].status == FAIL and "bootstrap version 5 < 6" in r["bootstrap"].detail


def test_bootstrap_is_read_from_its_ssm_parameter_whatever_the_stack_is_called(aws):
    """`cdk bootstrap --toolkit-stack-name Other` still writes the version parameter, which the CLI checks: no stack
    called CDKToolkit is needed, and one that exists without the parameter is not bootstrapped."""
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName="CDKToolkit", TemplateBody="Resources:\n  B:\n    Type: AWS::S3::Bucket\n")
    assert run(bootstrap=None)["bootstrap"].status == FAIL
    r = run(bootstrap="28")
    assert r["bootstrap"].status == OK and r["bootstrap"].detail == f"version 28 ({C.BOOTSTRAP_VERSION_PARAMETER})"


def test_quota_below_every_type_fails(aws):
    r = run(quotas={"on-demand": 0.0})
    assert r["GPU quota"].status == FAIL and "request an increase" in r["GPU quota"].detail


def test_quota_below_some_fallback_types_warns(aws):
    r = run(quotas={"on-demand": 4.0})
    assert r["GPU quota"].status == WARN and "not for every fallback type" in r["GPU quota"].detail


def test_never_adjusted_quota_reads_the_default(aws):
    r = run(quotas={"on-demand": None})
    assert r["GPU quota"].status == OK and "on-demand 8 vCPUs" in r["GPU quota"].detail


def test_spot_quota_with_on_demand_fallback(aws):
    ctx = {"market": "spot", "spot_fallback": "on-demand"}
    r = run(ctx, quotas={"spot": 0.0, "on-demand": 8.0})
    assert r["GPU quota"].status == WARN and "fall back to on-demand" in r["GPU quota"].detail
    r = run(ctx, quotas={"spot": 0.0, "on-demand": 0.0})
    assert r["GPU quota"].status == FAIL
    r = run({"market": "spot"}, quotas={"spot": 16.0})
    assert r["GPU quota"].status == OK and "spot 16 vCPUs (L-3819A6DF)" in r["GPU quota"].detail


def test_types_not_offered_in_the_stack_azs_fail(aws):
    # moto's offerings have no g6e in ap-northeast-1d: pinned there, nothing can launch.
    r = run({"availability_zone": "ap-northeast-1d"})
    assert r["instance types"].status == FAIL and "ap-northeast-1d" in r["instance types"].detail


def test_unresolvable_ami_parameter_fails(aws):
    r = run(ami=False)  # moto's SSM has no Deep Learning AMI parameter
    assert r["AMI"].status == FAIL and "ParameterNotFound" in r["AMI"].detail


def test_other_region_warns(aws):
    r = run({"region": "us-east-1"})
    assert r["region"].status == WARN and "~43.5 GB" in r["region"].detail


def test_no_credentials_stops_after_the_first_line(aws):
    class NoCreds(Clients):
        def _make(self, service):
            client = super()._make(service)
            if service == "sts":
                def fail(**_):
                    raise NoCredentialsError()
                client.get_caller_identity = fail
            return client

    cfg = from_context({"run_id": "pf"}.get)
    results = Preflight(cfg, NoCreds(bootstrap=None)).run()
    assert [r.status for r in results] == [FAIL, OK]
    assert "aws configure" in results[0].detail


def test_main_prints_one_line_per_check_and_exit_status(aws, capsys):
    assert main(["-c", "run_id=pf"], client=Clients()) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("preflight: VitEmbedDriveData in ap-northeast-1, on-demand g6e.xlarge, g6e.2xlarge")
    checks = [line for line in out[1:-1]]
    assert len(checks) == 7 and all(line.split()[0] in (OK, WARN, FAIL) for line in checks)
    assert out[-1] == "0 failed, 1 warnings"  # the AZ without g6e

    assert main(["-c", "run_id=pf", "-c", "region=us-east-1"], client=Clients(quotas={"on-demand": 0.0})) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "1 failed, 2 warnings"
    assert [line.split()[0] for line in out[1:-1]].count(FAIL) == 1


def test_main_bad_context_exits_2(capsys):
    assert main(["-c", "instance_types=t3.micro"]) == 2
    assert "cdk context error: unknown context instance_types 't3.micro'; valid choices: g5.xlarge" in capsys.readouterr().err


def test_image_asset_needs_docker(aws, monkeypatch):
    import cdk.preflight as pf

    monkeypatch.setattr(pf.shutil, "which", lambda name: None)
    r = run({"image": "asset"})
    assert r["docker"].status == FAIL and "docker is not on PATH" in r["docker"].detail


# --- what running G/VT instances hold, the AZ rule, what the deploy adds ------------------------------------------


def _launch(instance_type: str, group: str | None = None, spot: bool = False) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "aws:autoscaling:groupName", "Value": group}]}] if group else []
    market = {"InstanceMarketOptions": {"MarketType": "spot"}} if spot else {}
    ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType=instance_type, TagSpecifications=tags, **market)


def test_quota_counts_what_running_gvt_instances_hold(aws):
    """The quota is per account: G/VT instances already running (another stack, a notebook GPU) hold part of it; the
    stack's own group's instance does not count (this deploy reuses or replaces it), nor a non-G/VT instance."""
    _launch("g5.xlarge")  # 4 vCPUs of someone else's
    _launch("g6e.2xlarge", group=f"{C.STACK_NAME}-older-run")  # the stack's own: replaced by this deploy
    _launch("m5.large")
    r = run(quotas={"on-demand": 8.0})
    assert r["GPU quota"].status == WARN and "on-demand 8 vCPUs (L-DB2E81BA), 4 in use" in r["GPU quota"].detail
    assert "enough for 4 but not for every fallback type" in r["GPU quota"].detail
    _launch("g4dn.xlarge")  # 4 more: nothing left for a g6e.xlarge
    r = run(quotas={"on-demand": 8.0})
    assert r["GPU quota"].status == FAIL and "8 in use" in r["GPU quota"].detail and "stop the G/VT instances" in r["GPU quota"].detail


def test_spot_instances_count_against_the_spot_quota(aws):
    _launch("g6e.xlarge", spot=True)
    r = run({"market": "spot"}, quotas={"spot": 8.0})
    assert r["GPU quota"].status == WARN and "spot 8 vCPUs (L-3819A6DF), 4 in use" in r["GPU quota"].detail


def test_stack_azs_follow_the_getazs_rule():
    """Fn::GetAZs lists the available AZs in name order, only those with a default subnet when any has one: the
    preflight's AZs are the stack's."""
    from cdk.preflight import getazs

    zones = [{"ZoneName": f"ap-northeast-1{c}", "State": "available", "ZoneType": "availability-zone"} for c in "dca"]
    zones.append({"ZoneName": "ap-northeast-1-tpe-1a", "State": "available", "ZoneType": "local-zone"})
    assert getazs(zones, []) == ["ap-northeast-1a", "ap-northeast-1c", "ap-northeast-1d"]
    assert getazs(zones, [{"AvailabilityZone": "ap-northeast-1d", "DefaultForAz": True},
                          {"AvailabilityZone": "ap-northeast-1a", "DefaultForAz": True}]) == ["ap-northeast-1a", "ap-northeast-1d"]


def test_stack_azs_skip_an_az_without_a_default_subnet(aws):
    ec2 = boto3.client("ec2", region_name=REGION)
    (subnet,) = [s for s in ec2.describe_subnets()["Subnets"] if s["AvailabilityZone"] == "ap-northeast-1a" and s["DefaultForAz"]]
    ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    checker = Preflight(from_context({"run_id": "pf", "max_azs": "2"}.get), Clients())
    checker.offerings()
    assert checker.stack_azs == ["ap-northeast-1c", "ap-northeast-1d"]  # what Fn::GetAZs now gives the stack


def test_batch_deploy_is_capped_at_what_the_quota_leaves(aws, tmp_path, capsys):
    ctx = ["-c", "run_id=pf", "-c", "engine=batch", "-c", "shards=10", "-c", "image=public.ecr.aws/example/vit-embed:1.0"]
    out = tmp_path / "preflight.context"
    _launch("g5.xlarge")  # 4 of the 36 held elsewhere
    assert main([*ctx, "--context-out", str(out)], client=Clients(quotas={"on-demand": 36.0})) == 0
    assert out.read_text() == "-c max_vcpus=32\n"  # make deploy adds it: Batch asks EC2 for 32 vCPUs at most
    printed = capsys.readouterr().out
    assert "8 of 10 shards at once" in printed and "the deploy adds -c max_vcpus=32" in printed
    assert main([*ctx, "-c", "max_vcpus=16", "--context-out", str(out)], client=Clients(quotas={"on-demand": 36.0})) == 0
    assert out.read_text() == ""  # the user's own cap stands
    assert main([*ctx, "--context-out", str(out)], client=Clients(quotas={"on-demand": 200.0})) == 0
    assert out.read_text() == ""  # every shard fits: no cap
