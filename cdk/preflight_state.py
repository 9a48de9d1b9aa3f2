"""Preflight checks of what the account holds now: a run the stack is still running (a deploy of another run id
would stop it), a run that is already complete, the existing bucket ``artifacts_bucket`` names (a run resumed after
``cdk destroy``), and the G/VT vCPUs that running instances hold against the quota."""
from __future__ import annotations

import re
from typing import Any, Callable

from .config import RunConfig
from .preflight_base import FAIL, OK, WARN, Check, error_text

RUNNING = "running run"
UNFINISHED_JOBS = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
_RUN_IN_PREFIX = re.compile(r"/runs/([^/]+)/$")
# The G and VT instance families (one vCPU quota per market): g4dn, g5, g5g, g6, g6e, gr6, vt1, ...
_GVT_TYPE = re.compile(r"^(g|gr|vt)\d")


def stack_group_prefix(cfg: RunConfig) -> str:
    """What the stack's groups are called (``<stack>-<run id>``, RunConfig.group_name), whatever the run."""
    return f"{cfg.stack_name}-"


def vcpus_in_use(client: Callable[[str], Any], own_groups: str) -> dict[str, float]:
    """vCPUs that pending or running G/VT instances hold, per market (``on-demand``, ``spot``), those launched by this
    stack's own groups (names starting with ``own_groups``) aside: a deploy reuses or replaces them."""
    ec2 = client("ec2")
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    held: list[tuple[str, str, int | None]] = []
    for page in pages:
        for reservation in page["Reservations"]:
            for i in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                if not _GVT_TYPE.match(i["InstanceType"]) or tags.get("aws:autoscaling:groupName", "").startswith(own_groups):
                    continue
                cpu = i.get("CpuOptions") or {}
                count = cpu["CoreCount"] * cpu["ThreadsPerCore"] if cpu.get("CoreCount") and cpu.get("ThreadsPerCore") else None
                held.append((i["InstanceType"], "spot" if i.get("InstanceLifecycle") == "spot" else "on-demand", count))
    missing = sorted({t for t, _, n in held if n is None})
    defaults = {}
    if missing:
        types = ec2.describe_instance_types(InstanceTypes=missing)["InstanceTypes"]
        defaults = {t["InstanceType"]: int(t["VCpuInfo"]["DefaultVCpus"]) for t in types}
    used: dict[str, float] = {}
    for itype, market, count in held:
        used[market] = used.get(market, 0) + (count if count is not None else defaults.get(itype, 0))
    return used


def _complete(outputs: dict[str, str], cfg: RunConfig, client: Callable[[str], Any]) -> bool:
    """Whether the deployed run's prefix holds its manifest (the run is complete)."""
    bucket = outputs.get("ArtifactsBucket")
    if not bucket:
        return False
    try:
        client("s3").head_object(Bucket=bucket, Key=f"{cfg.run_prefix}manifest.json")
    except Exception as exc:
        if "404" in error_text(exc) or "Not Found" in error_text(exc) or "NoSuchKey" in error_text(exc):
            return False
        raise
    return True


def _stack_outputs(cfg: RunConfig, client: Callable[[str], Any]) -> dict[str, str] | None:
    """The deployed stack's outputs, or None when the stack does not exist."""
    try:
        stacks = client("cloudformation").describe_stacks(StackName=cfg.stack_name)["Stacks"]
    except Exception as exc:
        if "does not exist" in error_text(exc):
            return None
        raise
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def _busy(outputs: dict[str, str], client: Callable[[str], Any]) -> str | None:
    """What the deployed run still has running (its group's instances, its Batch jobs), or None."""
    if "AutoScalingGroup" in outputs:
        groups = client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[outputs["AutoScalingGroup"]])["AutoScalingGroups"]
        if groups:
            group = groups[0]
            live = [i for i in group.get("Instances", []) if not str(i.get("LifecycleState", "")).startswith("Terminat")]
            if live:
                states = ", ".join(f"{i['InstanceId']} {i['LifecycleState']}" for i in live)
                return f"group {group['AutoScalingGroupName']}: {states}"
            if int(group.get("DesiredCapacity", 0)) > 0:
                return f"group {group['AutoScalingGroupName']} at desired capacity {group['DesiredCapacity']} (waiting for capacity)"
    if "JobQueue" in outputs:
        batch = client("batch")
        counts = {s: len(batch.list_jobs(jobQueue=outputs["JobQueue"], jobStatus=s).get("jobSummaryList", []))
                  for s in UNFINISHED_JOBS}
        if any(counts.values()):
            return f"queue {outputs['JobQueue']}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return None


def running_run(cfg: RunConfig, client: Callable[[str], Any]) -> Check:
    """A deploy with another run id replaces the stack's group (or Batch jobs): refuse while they still run."""
    try:
        outputs = _stack_outputs(cfg, client)
        if outputs is None:
            return Check(OK, RUNNING, f"no stack {cfg.stack_name} yet: this deploy creates it for run {cfg.run_id}")
        match = _RUN_IN_PREFIX.search(outputs.get("RunPrefix", ""))
        if match is None:
            return Check(WARN, RUNNING, f"stack {cfg.stack_name} has no RunPrefix output: cannot tell which run it holds")
        deployed = match.group(1)
        if deployed == cfg.run_id:
            if _complete(outputs, cfg, client):
                return Check(WARN, RUNNING, f"run {deployed} is complete ({outputs['RunPrefix']}manifest.json): this deploy "
                                            "starts nothing; for a new run pass -c run_id=<new id>")
            return Check(OK, RUNNING, f"stack {cfg.stack_name} holds run {deployed}: this deploy updates the same run")
        busy = _busy(outputs, client)
    except Exception as exc:
        return Check(FAIL, RUNNING, f"could not read the stack {cfg.stack_name} and its run: {error_text(exc)}")
    if busy is None:
        return Check(OK, RUNNING, f"stack {cfg.stack_name}'s run {deployed} is not running: this deploy replaces it with run {cfg.run_id}")
    if cfg.replace_running:
        return Check(WARN, RUNNING, f"stack {cfg.stack_name} is running run {deployed} ({busy}); replace_running=true: "
                                    f"the deploy stops it (what {outputs['RunPrefix']} holds stays)")
    return Check(FAIL, RUNNING, f"stack {cfg.stack_name} is running run {deployed} ({busy}): deploying run {cfg.run_id} "
                                f"would stop it. Resume that run with -c run_id={deployed}, wait for it "
                                f"(python -m job status {outputs['RunPrefix']}), or pass -c replace_running=true")


def artifacts_bucket(cfg: RunConfig, client: Callable[[str], Any]) -> Check | None:
    """``artifacts_bucket``: it exists, is in the stack's region, and (usually) already holds the run to resume."""
    name = cfg.artifacts_bucket
    if not name:
        return None
    s3 = client("s3")
    try:
        region = s3.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
    except Exception as exc:
        return Check(FAIL, "artifacts bucket", f"artifacts_bucket={name}: {error_text(exc)}; name the ArtifactsBucket output "
                                               "of the destroyed stack (a bucket of this account)")
    if region != cfg.region:
        return Check(FAIL, "artifacts bucket", f"{name} is in {region}, the stack in {cfg.region}: deploy with -c region={region}")
    try:
        held = s3.list_objects_v2(Bucket=name, Prefix=cfg.run_prefix, MaxKeys=1).get("KeyCount", 0)
    except Exception as exc:
        return Check(FAIL, "artifacts bucket", f"cannot list {name}/{cfg.run_prefix}: {error_text(exc)}")
    if not held:
        return Check(WARN, "artifacts bucket", f"{name} has nothing under {cfg.run_prefix}: run {cfg.run_id} starts from "
                                               "nothing there (is run_id the one to resume?)")
    return Check(OK, "artifacts bucket", f"{name} ({region}) holds {cfg.run_prefix}: the run resumes from it")
