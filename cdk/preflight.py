"""Preflight: ask the account, before any CloudFormation, what a deploy of this configuration needs.

    python -m cdk.preflight [-c key=value ...]      (make preflight ARGS="-c market=spot")

One line per check (OK / WARN / FAIL), exit status 1 when any check fails. Uses your AWS credentials (the same
profile/region the CDK CLI would use) and only read calls: STS GetCallerIdentity, EC2 DescribeAvailabilityZones /
DescribeInstanceTypeOfferings / DescribeInstanceTypes, Service Quotas GetServiceQuota, SSM GetParameter, EC2
DescribeImages, CloudFormation DescribeStacks, Auto Scaling DescribeAutoScalingGroups, Batch ListJobs, S3
GetBucketLocation / ListObjectsV2. The configuration is the app's own (cdk.json + ``-c``), validated the
same way as at synth.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from typing import Any, Callable, Sequence

from . import constants as C
from .config import ConfigError, RunConfig, cdk_json_context, from_context
from .preflight_base import FAIL, OK, WARN, Check, error_code, error_text
from .preflight_state import artifacts_bucket, running_run

__all__ = ["FAIL", "OK", "WARN", "Check", "Preflight", "main"]

class Preflight:
    """The checks, each a method returning one :class:`Check`; ``client`` makes boto3 clients (stubbed in tests)."""

    def __init__(self, cfg: RunConfig, client: Callable[[str], Any]) -> None:
        self.cfg = cfg
        self.client = client
        self.account: str | None = None
        self.stack_azs: list[str] = []

    # -- identity and region ------------------------------------------------------------------------------------------
    def credentials(self) -> Check:
        try:
            ident = self.client("sts").get_caller_identity()
        except Exception as exc:  # no credentials, expired token, no network: nothing else can run
            return Check(FAIL, "credentials", f"no usable AWS credentials ({error_text(exc)}); run aws configure / aws sso login")
        self.account = ident["Account"]
        return Check(OK, "credentials", f"account {ident['Account']} as {ident['Arn']}")

    def region(self) -> Check:
        cfg = self.cfg
        if cfg.cross_region:
            gb = f"~{C.DATASET_READ_GB[cfg.dataset]:g} GB" if not cfg.sources else "the sources"
            return Check(WARN, "region", f"{cfg.region} is not the nuScenes bucket's region {C.NUSCENES_REGION}: {gb} cross-region reads (-c region={C.NUSCENES_REGION})")
        return Check(OK, "region", f"{cfg.region}" + (" (the nuScenes bucket's region)" if cfg.region == C.NUSCENES_REGION else ""))

    # -- capacity: where the types are offered, and the quota for them ------------------------------------------------
    def offerings(self) -> Check:
        cfg = self.cfg
        ec2 = self.client("ec2")
        try:
            zones = ec2.describe_availability_zones(Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}])
            region_azs = sorted(z["ZoneName"] for z in zones["AvailabilityZones"] if z.get("State", "available") == "available")
            pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
                LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": list(cfg.instance_types)}]
            )
            offered: dict[str, set[str]] = {t: set() for t in cfg.instance_types}
            for page in pages:
                for o in page["InstanceTypeOfferings"]:
                    offered.setdefault(o["InstanceType"], set()).add(o["Location"])
        except Exception as exc:
            return Check(FAIL, "instance types", f"could not list offerings in {cfg.region}: {error_text(exc)}")
        # The stack's subnets: the pinned AZ, or the first max_azs of Fn::GetAZs (available AZs in name order).
        self.stack_azs = list(cfg.availability_zones) if cfg.availability_zones else region_azs[: cfg.max_azs]
        where = "; ".join(f"{t}: {', '.join(sorted(azs)) or 'nowhere'}" for t, azs in offered.items() if t in cfg.instance_types)
        usable = {t: azs & set(self.stack_azs) for t, azs in offered.items() if t in cfg.instance_types}
        if cfg.vpc_id:  # existing subnets: their AZs are not known here
            usable = {t: azs for t, azs in offered.items() if t in cfg.instance_types}
        if not any(usable.values()):
            return Check(FAIL, "instance types", f"none of {', '.join(cfg.instance_types)} is offered in the stack's AZs {', '.join(self.stack_azs)} ({where})")
        missing = [t for t, azs in usable.items() if not azs]
        if missing:
            return Check(WARN, "instance types", f"{', '.join(missing)} not offered in the stack's AZs ({where})")
        offering = sorted(set().union(*(azs for t, azs in offered.items() if t in cfg.instance_types)))
        barren = [az for az in self.stack_azs if az not in offering]
        if barren and not cfg.vpc_id:
            # The group would try these AZs too, and each launch there fails ("Unsupported"): keep to the others.
            keep = ",".join(offering[: max(len(self.stack_azs), 2)])
            return Check(WARN, "instance types", f"{', '.join(barren)} offers none of them ({where}); launches there fail: "
                                                 f"deploy with -c availability_zones={keep}")
        return Check(OK, "instance types", where)

    def _vcpus(self) -> dict[str, int]:
        resp = self.client("ec2").describe_instance_types(InstanceTypes=list(self.cfg.instance_types))
        return {t["InstanceType"]: int(t["VCpuInfo"]["DefaultVCpus"]) for t in resp["InstanceTypes"]}

    def _quota(self, market: str) -> float:
        sq = self.client("service-quotas")
        code = C.GPU_QUOTA_CODES[market]
        try:
            return float(sq.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
        except Exception as exc:
            if error_code(exc) != "NoSuchResourceException":  # never adjusted: the applied value is the default
                raise
        return float(sq.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])

    def quota(self) -> Check:
        cfg = self.cfg
        markets = [cfg.market] + (["on-demand"] if cfg.market == "spot" and cfg.spot_fallback == "on-demand" else [])
        try:
            vcpus = self._vcpus()
            quotas = {m: self._quota(m) for m in markets}
        except Exception as exc:
            return Check(FAIL, "GPU quota", f"could not read the G and VT vCPU quota: {error_text(exc)}")
        need_min, need_max = min(vcpus.values()), max(vcpus.values())
        have = ", ".join(f"{m} {q:g} vCPUs ({C.GPU_QUOTA_CODES[m]})" for m, q in quotas.items())
        sizes = ", ".join(f"{t} {vcpus[t]}" for t in cfg.instance_types if t in vcpus)
        if all(q < need_min for q in quotas.values()):
            return Check(FAIL, "GPU quota", f"{have} < {need_min} needed ({sizes}); request an increase in Service Quotas > EC2")
        if quotas[cfg.market] < need_min:
            return Check(WARN, "GPU quota", f"{have}: spot cannot launch, the run will fall back to on-demand ({sizes})")
        shards = cfg.shards if cfg.batch and cfg.shards else 1
        if quotas[cfg.market] < need_min * shards:  # engine=batch: N machines at once
            at_once = int(quotas[cfg.market] // need_min)
            return Check(WARN, "GPU quota", f"{have}: {at_once} of {shards} shards at once ({sizes}); Batch queues the rest")
        if any(q < need_max for q in quotas.values()):
            return Check(WARN, "GPU quota", f"{have}: enough for {need_min} but not for every fallback type ({sizes})")
        return Check(OK, "GPU quota", f"{have} covers {sizes}")

    # -- the AMI and the bootstrap stack ------------------------------------------------------------------------------
    def ami(self) -> Check:
        param = self.cfg.ami_ssm_parameter
        try:
            image_id = self.client("ssm").get_parameter(Name=param)["Parameter"]["Value"]
        except Exception as exc:
            return Check(FAIL, "AMI", f"{param} does not resolve in {self.cfg.region}: {error_text(exc)}")
        try:
            images = self.client("ec2").describe_images(ImageIds=[image_id])["Images"]
        except Exception as exc:
            return Check(FAIL, "AMI", f"{param} -> {image_id}, which cannot be described: {error_text(exc)}")
        if not images:
            return Check(FAIL, "AMI", f"{param} -> {image_id}, which does not exist")
        arch = images[0].get("Architecture", "x86_64")
        if arch != "x86_64":
            return Check(FAIL, "AMI", f"{param} -> {image_id} is {arch}; the g5/g6/g6e types are x86_64")
        return Check(OK, "AMI", f"{param} -> {image_id} ({images[0].get('Name', 'unnamed')})")

    def bootstrap(self) -> Check:
        try:
            stacks = self.client("cloudformation").describe_stacks(StackName=C.BOOTSTRAP_STACK)["Stacks"]
        except Exception as exc:
            where = f"aws://{self.account or '<ACCOUNT>'}/{self.cfg.region}"
            if "does not exist" in error_text(exc):
                return Check(FAIL, "bootstrap", f"no {C.BOOTSTRAP_STACK} stack in {self.cfg.region}: run npx cdk bootstrap {where}")
            return Check(FAIL, "bootstrap", f"could not read the {C.BOOTSTRAP_STACK} stack: {error_text(exc)}")
        stack = stacks[0]
        status = stack["StackStatus"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        version = int(outputs.get("BootstrapVersion", "0") or 0)
        if not status.endswith("_COMPLETE") or "ROLLBACK" in status or "DELETE" in status:
            return Check(FAIL, "bootstrap", f"{C.BOOTSTRAP_STACK} is {status}; fix or re-run npx cdk bootstrap")
        if version < C.MIN_BOOTSTRAP_VERSION:
            return Check(FAIL, "bootstrap", f"{C.BOOTSTRAP_STACK} version {version} < {C.MIN_BOOTSTRAP_VERSION}: re-run npx cdk bootstrap")
        return Check(OK, "bootstrap", f"{C.BOOTSTRAP_STACK} version {version} ({status})")

    def docker(self) -> Check | None:
        """Only for image=asset: the CDK CLI builds the image where `cdk deploy` runs."""
        if self.cfg.image != C.IMAGE_ASSET:
            return None
        exe = shutil.which("docker")
        if not exe:
            return Check(FAIL, "docker", "image=asset builds the image locally but docker is not on PATH (or use the default image=build)")
        proc = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return Check(FAIL, "docker", f"docker is installed but its daemon does not answer: {proc.stderr.strip()[:200]}")
        return Check(OK, "docker", f"Docker Engine {proc.stdout.strip()} builds docker/Dockerfile at deploy")

    def run(self) -> list[Check]:
        first = self.credentials()
        results = [first, self.region()]
        if first.status == FAIL:
            return results
        # engine=batch: Batch picks the ECS GPU AMI itself; the Deep Learning AMI parameter is not used.
        results += [self.offerings(), self.quota(), *([] if self.cfg.batch else [self.ami()]), self.bootstrap(),
                    running_run(self.cfg, self.client)]
        optional = [artifacts_bucket(self.cfg, self.client), self.docker()]
        return results + [c for c in optional if c is not None]


def parse_context(pairs: Sequence[str]) -> dict[str, str]:
    """``-c key=value`` pairs, as the CDK CLI takes them."""
    ctx: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"-c {pair!r} is not key=value")
        ctx[key.strip()] = value
    return ctx


def config_from_cli(prog: str, description: str, argv: Sequence[str] | None) -> RunConfig:
    """The RunConfig a ``python -m cdk.…`` command is given with ``-c key=value`` (as for cdk); ConfigError if bad."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE", help="context, as for cdk")
    args = parser.parse_args(argv)
    return from_context({**cdk_json_context(), **parse_context(args.context)}.get)


def boto3_clients(region: str) -> Callable[[str], Any]:
    import boto3

    session = boto3.session.Session(region_name=region)
    return lambda service: session.client(service, region_name=region)


def main(argv: Sequence[str] | None = None, client: Callable[[str], Any] | None = None) -> int:
    try:
        cfg = config_from_cli("python -m cdk.preflight", __doc__.split("\n\n")[0], argv)
    except ConfigError as exc:
        print(f"cdk context error: {exc}", file=sys.stderr)
        return 2
    print(f"preflight: {cfg.stack_name} in {cfg.region}, {cfg.market} {', '.join(cfg.instance_types)}")
    results = Preflight(cfg, client or boto3_clients(cfg.region)).run()
    for r in results:
        print(r.line())
    failed = [r for r in results if r.status == FAIL]
    print(f"{len(failed)} failed, {sum(r.status == WARN for r in results)} warnings")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
