"""Context value parsers: each checks one ``-c key=value`` and raises a one-line ConfigError naming the valid values.

Choices, yes/no values, numbers and lists go through the job's own parsers (``job.values``, one grammar per value
for the job and the stack alike; its UsageError becomes a ConfigError with the same one-line message, which names the
key as ``context <key>``); the patterns, sources and lists of instance types and AZs are the stack's own. Split from
``config.py``, which composes them into the typed RunConfig and checks the keys that depend on each other.
"""
from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from job.errors import UsageError
from job.values import check_choice, in_range, parse_channels, parse_flag, parse_int, parse_number, split_list

from . import constants as C


class ConfigError(ValueError):
    """Bad context value: ``app.py`` prints the one-line message and exits non-zero."""


SAFE_TOKEN_RE = re.compile(r"^[A-Za-z0-9._:/@+=-]+$")
SOURCE_RE = re.compile(r"^[A-Za-z0-9._:/@+=*?\[\]-]+$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
AZ_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")
VPC_ID_RE = re.compile(r"^vpc-[0-9a-f]{8}([0-9a-f]{9})?$")
SUBNET_ID_RE = re.compile(r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$")
STACK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
BUCKET_RE = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
SSM_PARAM_RE = re.compile(r"^/aws/service/[A-Za-z0-9._/-]+$")
ECR_IMAGE_RE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([a-z0-9._/-]+)")


@contextmanager
def as_config_error(valid: str = "") -> Iterator[None]:
    """The job's UsageError (bad input, one line) as the stack's ConfigError, with ``valid`` (``"; valid: …"``) added
    where the job's message does not name the valid values itself."""
    try:
        yield
    except UsageError as exc:
        raise ConfigError(f"{exc}{valid}") from None


def parse_choice(key: str, value: Any, choices: Iterable[str]) -> str:
    """One of ``choices`` (``job.values.check_choice``)."""
    with as_config_error():
        return check_choice(f"context {key}", str(value).strip(), choices)


def parse_bool(key: str, value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (``job.values.parse_flag``); JSON booleans from cdk.json as they are."""
    if isinstance(value, bool):
        return value
    with as_config_error():
        flag = parse_flag(str(value), f"context {key}")
    assert flag is not None  # empty values never reach the parsers (config.from_context drops them)
    return flag


def _in_range(key: str, value: Any, lo: float, hi: float, parse: Callable[[str, str], Any]) -> Any:
    """``parse`` (a ``job.values`` number parser) of the value, then ``job.values.in_range``; one line either way."""
    option = f"context {key}"
    with as_config_error(f"; valid values: {lo:g} to {hi:g}"):
        number = parse(str(value).strip(), option)
    with as_config_error():
        in_range(option, number, lo, hi)
    return number


def parse_float(key: str, value: Any, lo: float, hi: float) -> float:
    """A finite number in ``lo..hi`` (``job.values.parse_number``)."""
    return float(_in_range(key, value, lo, hi, parse_number))


def parse_whole(key: str, value: Any, lo: int, hi: int) -> int:
    """An integer in ``lo..hi`` (``job.values.parse_int``): ``1.5`` and ``true`` are not integers."""
    return int(_in_range(key, value, lo, hi, parse_int))


def parse_list(value: Any) -> tuple[str, ...]:
    """Comma-separated text, or a JSON list from cdk.json (``job.values.split_list``)."""
    return split_list([str(v) for v in value] if isinstance(value, (list, tuple)) else str(value))


def parse_pattern(key: str, value: Any, pattern: re.Pattern[str], example: str) -> str:
    v = str(value).strip()
    if not pattern.match(v):
        raise ConfigError(f"context {key}={value!r} is not valid; expected something like {example}")
    return v


def parse_source(key: str, uri: str) -> str:
    if not SOURCE_RE.match(uri):
        raise ConfigError(f"context {key}: {uri!r} has characters other than letters, digits and ._:/@+=-*?[]")
    if uri.startswith(("s3://", "https://", "http://")) or uri == C.NUSCENES_MOUNT or uri.startswith(C.NUSCENES_MOUNT + "/"):
        return uri
    raise ConfigError(
        f"context {key}: {uri!r} is not reachable from the instance; valid values: s3://bucket/key, https://..., "
        f"or a path under {C.NUSCENES_MOUNT} (the read-only mount of s3://{C.NUSCENES_BUCKET})"
    )


# The keys that change what a run computes (its vectors, index and run folder layout): a deploy that gives no run_id
# is named by them, so the same options are the same run (a redeploy resumes or leaves it) and other options another.
RUN_DEFINING_KEYS: tuple[str, ...] = ("dataset", "sources", "nuscenes_meta", "model", "pretrained", "pool", "resize_mode",
                                      "index_type", "channels", "include_sweeps", "device", "engine", "shards")


def default_run_id(dataset: str, options: dict[str, Any]) -> str:
    """``<dataset>-<8 hex digits>``: a hash of the run-defining ``options`` (parsed values), stable across deploys."""
    text = json.dumps({k: options.get(k) for k in RUN_DEFINING_KEYS}, sort_keys=True, default=list)
    return f"{dataset}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def parse_instance_types(raw: dict[str, Any]) -> tuple[str, ...]:
    key = "instance_types"
    types = tuple(parse_choice(key, t, C.VALID_INSTANCE_TYPES) for t in parse_list(raw[key]))
    if not types:
        raise ConfigError(f"context {key} is empty; valid values: {', '.join(C.VALID_INSTANCE_TYPES[:4])}, ...")
    if len(types) > C.MAX_INSTANCE_TYPES:
        raise ConfigError(f"context {key} lists {len(types)} types; valid values: 1 to {C.MAX_INSTANCE_TYPES} types")
    return tuple(dict.fromkeys(types))


def parse_image(key: str, value: Any) -> str:
    image = str(value).strip()
    if image in (C.IMAGE_BUILD, C.IMAGE_ASSET):
        return image
    return parse_pattern(key, image, IMAGE_RE, f"{C.IMAGE_BUILD}, {C.IMAGE_ASSET} or 123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/vit-embed:1.0")


def parse_camera_channels(key: str, value: Any) -> tuple[str, ...]:
    """The job's own channel parser (``job.values.parse_channels``), its error as a ConfigError."""
    with as_config_error():
        chans = parse_channels(parse_list(value), f"context {key}")
    if not chans:
        raise ConfigError(f"context {key} is empty; valid values: {', '.join(C.CAMERA_CHANNELS)}")
    return tuple(dict.fromkeys(chans))


def parse_azs(key: str, value: Any) -> tuple[str, ...]:
    azs = tuple(dict.fromkeys(parse_pattern(key, a, AZ_RE, "ap-northeast-1a,ap-northeast-1c") for a in parse_list(value)))
    if not azs:
        raise ConfigError(f"context {key} is empty; expected something like ap-northeast-1a,ap-northeast-1c")
    if len(azs) > C.MAX_MAX_AZS:
        raise ConfigError(f"context {key} lists {len(azs)} AZs; valid values: 1 to {C.MAX_MAX_AZS} AZs")
    return azs


def parse_log_retention(key: str, value: Any) -> int:
    days = parse_whole(key, value, 1, 3653)
    return int(parse_choice(key, str(days), map(str, C.LOG_RETENTION_DAYS)))


# Every context key the app reads, with a one-line description (docs/cloud.md lists the same keys).
CONTEXT_KEYS: dict[str, str] = {
    "region": "AWS region of the stack (default ap-northeast-1, the nuScenes bucket's region)",
    "instance_types": "GPU instance types in order of preference, comma-separated: any g5 / g6 / g6e size",
    "market": "on-demand or spot",
    "spot_fallback": "with market=spot: none, or on-demand to launch on-demand when spot has no capacity",
    "max_run_hours": "hard stop: the instance powers off after this many hours, the group is set to 0 soon after",
    "dataset": "trainval (10 keyframe archives + meta) or mini",
    "sources": "comma-separated job sources replacing the dataset's (s3://..., https://..., or under /mnt/nuscenes)",
    "nuscenes_meta": "nuScenes tables archive/folder for custom sources (none: the job finds tables in the source)",
    "model": "open_clip architecture passed to the job",
    "pretrained": "weights tag passed to the job",
    "pool": "mean or cls",
    "resize_mode": "pad, crop or squash",
    "index_type": "auto, flat, ivfpq or hnsw",
    "channels": "comma-separated camera channels",
    "include_sweeps": "also embed non-keyframe images (true/false)",
    "log_level": "job log level",
    "image": "build (the instance builds docker/Dockerfile; the default of engine=instance), asset (cdk deploy builds it with "
    "local Docker; the default of engine=batch), or an image URI",
    "run_id": "name of the run prefix runs/<run_id>/ (default: <dataset>-<hash of the run's options>: the same options "
    "are the same run)",
    "device": "cuda (the default: the job fails at once, with the reason, when torch sees no usable GPU) or cpu",
    "vpc_id": "use this existing VPC instead of creating one (needs subnet_id)",
    "subnet_id": "subnets of vpc_id for the instance, comma-separated (one per AZ); they must route to the internet",
    "max_azs": "number of AZs (one subnet each) the new VPC spans and the instance may launch in",
    "availability_zones": "the new VPC's AZs, comma-separated, instead of the region's first max_azs (e.g. the AZs that "
    "offer the instance types: make preflight lists them)",
    "availability_zone": "pin the new VPC (and instance) to this one AZ instead (availability_zones with one AZ)",
    "nat_gateway": "put the instance in a private subnet behind one NAT gateway (true/false)",
    "root_volume_gb": "encrypted gp3 root volume size in GiB",
    "ami_ssm_parameter": "public SSM parameter holding the Deep Learning AMI id",
    "retain_artifacts": "keep the artifacts and access-log buckets on cdk destroy (true/false)",
    "artifact_retention_days": "lifecycle: delete run artifacts after this many days (0: never)",
    "log_retention_days": "CloudWatch Logs retention of the job log group, in days",
    "stack_name": "CloudFormation stack name",
    "artifacts_bucket": "write runs/<run_id>/ to this existing bucket (e.g. the one a destroyed stack kept) instead of "
    "creating one: how a run resumes after cdk destroy",
    "replace_running": "make preflight: allow a deploy that replaces a run the stack is still running (true/false)",
    "engine": "instance (one GPU instance, the default) or batch (AWS Batch: an array job of N shards, then the merge)",
    "shards": "with engine=batch: N, the number of shards (array children, one GPU each), 1 to 100",
    "max_vcpus": "with engine=batch: cap on the compute environment's vCPUs (default: every shard at once; make deploy "
    "passes what the G/VT quota leaves, from make preflight)",
}


# Keys that earlier versions read; setting one stops synth with the reason instead of being silently ignored.
REMOVED_KEYS: dict[str, str] = {
    "shutdown_behavior": "the instance runs in an Auto Scaling group, which replaces a stopped instance; a finished "
    "run always terminates (and sets the group to 0 first)",
    "instance_type": "use instance_types, a comma-separated list in order of preference (e.g. instance_types=g6e.2xlarge)",
}
