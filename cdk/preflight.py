"""Preflight: ask the account, before any CloudFormation, what a deploy of this configuration needs.

    python -m cdk.preflight [-c key=value ...]      (make preflight ARGS="-c market=spot")

One line per check (OK / WARN / FAIL), exit status 1 when any check fails. Uses your AWS credentials (the same
profile/region the CDK CLI would use) and only read calls: STS GetCallerIdentity, EC2 DescribeAvailabilityZones /
DescribeSubnets / DescribeInstanceTypeOfferings / DescribeInstanceTypes / DescribeInstances, Service Quotas
GetServiceQuota, SSM GetParameter, EC2 DescribeImages, CloudFormation DescribeStacks, Auto Scaling
DescribeAutoScalingGroups, Batch ListJobs, S3 GetBucketLocation / ListObjectsV2 / HeadObject. The configuration is the
app's own (cdk.json + ``-c``), validated the same way as at synth.

``--context-out FILE`` writes the ``-c key=value`` options the deploy should add from what the account says (today:
``max_vcpus``, the G/VT vCPUs the quota leaves, for engine=batch); ``make deploy`` passes them to ``cdk deploy``.
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
from .preflight_state import artifacts_bucket, running_run, stack_group_prefix, vcpus_in_use

__all__ = ["FAIL", "OK", "WARN", "Check", "Preflight", "getazs", "main"]


def getazs(zones: list[dict[str, Any]], subnets: list[dict[str, Any]]) -> list[str]:
    """The AZs ``Fn::GetAZs`` gives the stack, by CloudFormation's rule: the region's available AZs (zone type
    availability-zone) in alphabetical order, only those with a default subnet unless none has one. The stack takes
    the first ``max_azs`` (``RunStackBase.availability_zones``); so does this check."""
    azs = sorted(z["ZoneName"] for z in zones
                 if z.get("State", "available") == "available" and z.get("ZoneType", "availability-zone") == "availability-zone")
    with_default = {s["AvailabilityZone"] for s in subnets if s.get("DefaultForAz")}
    return [az for az in azs if az in with_default] if with_default & set(azs) else azs

class Preflight:
    """The checks, each a method returning one :class:`Check`; ``client`` makes boto3 clients (stubbed in tests)."""

    def __init__(self, cfg: RunConfig, client: Callable[[str], Any]) -> None:
        self.cfg = cfg
        self.client = client
        self.account: str | None = None
        self.stack_azs: list[str] = []
        self.context_out: dict[str, str] = {}  # -c options the deploy should add (main's --context-out)

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
            defaults = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
            region_azs = getazs(zones["AvailabilityZones"], defaults)
            pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
                LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": list(cfg.instance_types)}]
            )
            offered: dict[str, set[str]] = {t: set() for t in cfg.instance_types}
            for page in pages:
                for o in page["InstanceTypeOfferings"]:
                    offered.setdefault(o["InstanceType"], set()).add(o["Location"])
        except Exception as exc:
            return Check(FAIL, "instance types", f"could not list offerings in {cfg.region}: {error_text(exc)}")
        # The stack's subnets: the pinned AZ, or the first max_azs of Fn::GetAZs (getazs: CloudFormation's rule).
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
        """The G/VT vCPU quota of the market(s) the run may use, less what running G/VT instances already hold (the
        stack's own group's instance aside: this deploy reuses or replaces it)."""
        cfg = self.cfg
        markets = [cfg.market] + (["on-demand"] if cfg.market == "spot" and cfg.spot_fallback == "on-demand" else [])
        try:
            vcpus = self._vcpus()
            quotas = {m: self._quota(m) for m in markets}
            used = vcpus_in_use(self.client, stack_group_prefix(cfg))
        except Exception as exc:
            return Check(FAIL, "GPU quota", f"could not read the G and VT vCPU quota: {error_text(exc)}")
        free = {m: q - used.get(m, 0) for m, q in quotas.items()}
        need_min, need_max = min(vcpus.values()), max(vcpus.values())
        have = ", ".join(f"{m} {q:g} vCPUs ({C.GPU_QUOTA_CODES[m]})" + (f", {used[m]:g} in use" if used.get(m) else "")
                         for m, q in quotas.items())
        sizes = ", ".join(f"{t} {vcpus[t]}" for t in cfg.instance_types if t in vcpus)
        if all(f < need_min for f in free.values()):
            return Check(FAIL, "GPU quota", f"{have} < {need_min} needed ({sizes}); request an increase in Service "
                                            "Quotas > EC2, or stop the G/VT instances that hold it")
        if free[cfg.market] < need_min:
            return Check(WARN, "GPU quota", f"{have}: spot cannot launch, the run will fall back to on-demand ({sizes})")
        if cfg.batch:
            return self._batch_quota(free[cfg.market], have, sizes)
        if any(f < need_max for f in free.values()):
            return Check(WARN, "GPU quota", f"{have}: enough for {need_min} but not for every fallback type ({sizes})")
        return Check(OK, "GPU quota", f"{have} covers {sizes}")

    def _batch_quota(self, free: float, have: str, sizes: str) -> Check:
        """engine=batch: N machines at once; the compute environment is capped at what the quota leaves."""
        cfg = self.cfg
        assert cfg.shards is not None
        share, cap = C.shard_vcpus(cfg.instance_types), int(free)
        capped = ""
        if cfg.max_vcpus is None and cap < C.batch_vcpu_ceiling(cfg.instance_types, cfg.shards):
            self.context_out["max_vcpus"] = str(cap)  # make deploy passes it: Batch never asks EC2 beyond the quota
            capped = f"; the compute environment capped at -c max_vcpus={cap}"
        if free < share * cfg.shards:
            return Check(WARN, "GPU quota", f"{have}: {int(free // share)} of {cfg.shards} shards at once ({sizes}); "
                                            f"Batch queues the rest{capped}")
        return Check(OK, "GPU quota", f"{have} covers {cfg.shards} shard(s) at once ({sizes}){capped}")

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
        # The deploy reads the root device name itself (cdk/compute.py) and sizes that volume; shown for the record.
        return Check(OK, "AMI", f"{param} -> {image_id} ({images[0].get('Name', 'unnamed')}, root device "
                                f"{images[0].get('RootDeviceName', '?')})")

    def bootstrap(self) -> Check:
        """The bootstrap version, read where the CDK CLI reads it: the SSM parameter ``cdk bootstrap`` writes (the
        stack holding it may have any name)."""
        name, where = C.BOOTSTRAP_VERSION_PARAMETER, f"aws://{self.account or '<ACCOUNT>'}/{self.cfg.region}"
        try:
            version = int(self.client("ssm").get_parameter(Name=name)["Parameter"]["Value"])
        except Exception as exc:
            if error_code(exc) == "ParameterNotFound":
                return Check(FAIL, "bootstrap", f"{self.cfg.region} is not bootstrapped ({name} not found): run npx cdk bootstrap {where}")
            return Check(FAIL, "bootstrap", f"could not read {name}: {error_text(exc)}")
        if version < C.MIN_BOOTSTRAP_VERSION:
            return Check(FAIL, "bootstrap", f"bootstrap version {version} < {C.MIN_BOOTSTRAP_VERSION} ({name}): re-run npx cdk bootstrap {where}")
        return Check(OK, "bootstrap", f"version {version} ({name})")

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


def cli_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options of a ``python -m cdk.…`` command: ``-c key=value`` (as for cdk)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE", help="context, as for cdk")
    return parser


def config_from_cli(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the parsed ``-c key=value`` options give (cdk.json's context under them); ConfigError if bad."""
    return from_context({**cdk_json_context(), **parse_context(args.context)}.get)


def boto3_clients(region: str) -> Callable[[str], Any]:
    import boto3

    session = boto3.session.Session(region_name=region)
    return lambda service: session.client(service, region_name=region)


def main(argv: Sequence[str] | None = None, client: Callable[[str], Any] | None = None) -> int:
    parser = cli_parser("python -m cdk.preflight", __doc__.split("\n\n")[0])
    parser.add_argument("--context-out", metavar="FILE", help="write the -c options the deploy should add (make deploy)")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_cli(args)
    except ConfigError as exc:
        print(f"cdk context error: {exc}", file=sys.stderr)
        return 2
    print(f"preflight: {cfg.stack_name} in {cfg.region}, {cfg.market} {', '.join(cfg.instance_types)}")
    check = Preflight(cfg, client or boto3_clients(cfg.region))
    results = check.run()
    for r in results:
        print(r.line())
    failed = [r for r in results if r.status == FAIL]
    print(f"{len(failed)} failed, {sum(r.status == WARN for r in results)} warnings")
    if args.context_out:
        with open(args.context_out, "w", encoding="utf-8") as f:
            f.write("".join(f"-c {k}={v}\n" for k, v in check.context_out.items()))
        for k, v in check.context_out.items():
            print(f"the deploy adds -c {k}={v}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
