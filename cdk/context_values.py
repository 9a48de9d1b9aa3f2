"""Context value parsers: each checks one ``-c key=value`` and raises a one-line ConfigError naming the valid values.

Split from ``config.py``, which composes them into the typed RunConfig and checks the keys that depend on each other.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any, Callable, Iterable

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
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def parse_choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    v = str(value).strip()
    if v not in choices:
        raise ConfigError(f"context {key}={value!r} is not valid; valid values: {', '.join(choices)}")
    return v


def parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"context {key}={value!r} is not a boolean; valid values: true, false")


def parse_number(key: str, value: Any, cast: Callable[[Any], float], lo: float, hi: float) -> Any:
    try:
        n = cast(value)
    except (TypeError, ValueError):
        raise ConfigError(f"context {key}={value!r} is not a number; valid values: {lo:g} to {hi:g}") from None
    if isinstance(n, float) and not math.isfinite(n) or not lo <= n <= hi:
        raise ConfigError(f"context {key}={value!r} is out of range; valid values: {lo:g} to {hi:g}")
    return n


def to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def parse_pattern(key: str, value: Any, pattern: re.Pattern[str], example: str) -> str:
    v = str(value).strip()
    if not pattern.match(v):
        raise ConfigError(f"context {key}={value!r} is not valid; expected something like {example}")
    return v


def parse_list(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(s.strip() for s in items if str(s).strip())


def parse_source(key: str, uri: str) -> str:
    if not SOURCE_RE.match(uri):
        raise ConfigError(f"context {key}: {uri!r} has characters other than letters, digits and ._:/@+=-*?[]")
    if uri.startswith(("s3://", "https://", "http://")) or uri == C.NUSCENES_MOUNT or uri.startswith(C.NUSCENES_MOUNT + "/"):
        return uri
    raise ConfigError(
        f"context {key}: {uri!r} is not reachable from the instance; valid values: s3://bucket/key, https://..., "
        f"or a path under {C.NUSCENES_MOUNT} (the read-only mount of s3://{C.NUSCENES_BUCKET})"
    )


def default_run_id(dataset: str, now: Any = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{dataset}-{now:%Y%m%d-%H%M%S}"


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
    from job.errors import UsageError
    from job.values import parse_channels

    try:
        chans = parse_channels(parse_list(value), f"context {key}")
    except UsageError as exc:
        raise ConfigError(str(exc)) from None
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
    days = parse_number(key, value, to_int, 1, 3653)
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
    "run_id": "name of the run prefix runs/<run_id>/ (default: <dataset>-<UTC timestamp at synth>)",
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
}


# Keys that earlier versions read; setting one stops synth with the reason instead of being silently ignored.
REMOVED_KEYS: dict[str, str] = {
    "shutdown_behavior": "the instance runs in an Auto Scaling group, which replaces a stopped instance; a finished "
    "run always terminates (and sets the group to 0 first)",
    "instance_type": "use instance_types, a comma-separated list in order of preference (e.g. instance_types=g6e.2xlarge)",
}
