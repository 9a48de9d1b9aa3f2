"""Config: the cloud run's settings, read once from CDK context (cdk.json, ``-c key=value``) and validated."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from . import constants as C


class ConfigError(ValueError):
    """Bad context value: ``app.py`` prints the one-line message and exits non-zero."""


# Every context key the app reads, with a one-line description (docs/cloud.md lists the same keys).
CONTEXT_KEYS: dict[str, str] = {
    "region": "AWS region of the stack (default ap-northeast-1, the nuScenes bucket's region)",
    "instance_type": "GPU instance type: any g5 / g6 / g6e size (default g6e.xlarge)",
    "market": "on-demand or spot",
    "max_run_hours": "hard stop: the instance powers off after this many hours whatever happens",
    "shutdown_behavior": "what an instance-initiated shutdown does: terminate or stop",
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
    "image": "prebuilt job image to pull instead of building docker/Dockerfile on the instance",
    "run_id": "name of the run prefix runs/<run_id>/ (default: <dataset>-<UTC timestamp at synth>)",
    "vpc_id": "use this existing VPC instead of creating one (needs subnet_id)",
    "subnet_id": "subnet of vpc_id for the instance; it must route to the internet (IGW or NAT)",
    "availability_zone": "pin the new VPC (and instance) to this AZ, e.g. where the instance type is offered",
    "nat_gateway": "put the instance in a private subnet behind one NAT gateway (true/false)",
    "root_volume_gb": "encrypted gp3 root volume size in GiB",
    "ami_ssm_parameter": "public SSM parameter holding the Deep Learning AMI id",
    "retain_artifacts": "keep the artifacts and access-log buckets on cdk destroy (true/false)",
    "artifact_retention_days": "lifecycle: delete run artifacts after this many days (0: never)",
    "log_retention_days": "CloudWatch Logs retention of the job log group, in days",
    "stack_name": "CloudFormation stack name",
}

_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9._:/@+=-]+$")
_SOURCE = re.compile(r"^[A-Za-z0-9._:/@+=*?\[\]-]+$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
_AZ = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8}([0-9a-f]{9})?$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$")
_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
_SSM_PARAM = re.compile(r"^/aws/service/[A-Za-z0-9._/-]+$")
_ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([a-z0-9._/-]+)")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class RunConfig:
    """Everything the stack needs; built once by :func:`from_context`."""

    run_id: str
    region: str = C.DEFAULT_REGION
    instance_type: str = C.DEFAULT_INSTANCE_TYPE
    market: str = "on-demand"
    max_run_hours: float = C.DEFAULT_MAX_RUN_HOURS
    shutdown_behavior: str = "terminate"
    dataset: str = C.DEFAULT_DATASET
    sources: tuple[str, ...] = ()
    nuscenes_meta: str | None = None
    model: str = C.DEFAULT_MODEL
    pretrained: str = C.DEFAULT_PRETRAINED
    pool: str = C.DEFAULT_POOL
    resize_mode: str = C.DEFAULT_RESIZE_MODE
    index_type: str = C.DEFAULT_INDEX_TYPE
    channels: tuple[str, ...] = C.CAMERA_CHANNELS
    include_sweeps: bool = False
    log_level: str = "INFO"
    image: str | None = None
    vpc_id: str | None = None
    subnet_id: str | None = None
    availability_zone: str | None = None
    nat_gateway: bool = False
    root_volume_gb: int = C.DEFAULT_ROOT_VOLUME_GB
    ami_ssm_parameter: str = C.DEFAULT_AMI_SSM_PARAMETER
    retain_artifacts: bool = True
    artifact_retention_days: int = C.DEFAULT_ARTIFACT_RETENTION_DAYS
    log_retention_days: int = C.DEFAULT_LOG_RETENTION_DAYS
    stack_name: str = C.STACK_NAME

    @property
    def run_prefix(self) -> str:
        """Key prefix of this run in the artifacts bucket, with the trailing slash."""
        return f"{C.RUNS_PREFIX}/{self.run_id}/"

    @property
    def max_run_minutes(self) -> int:
        return max(1, math.ceil(self.max_run_hours * 60))

    @property
    def source_buckets(self) -> tuple[str, ...]:
        """Buckets the instance role may read: the nuScenes bucket and any ``s3://`` source or meta."""
        buckets = {C.NUSCENES_BUCKET}
        for uri in (*self.sources, self.nuscenes_meta or ""):
            if uri.startswith("s3://"):
                buckets.add(uri[5:].split("/", 1)[0])
        return tuple(sorted(buckets))

    @property
    def ecr_repository(self) -> tuple[str, str, str] | None:
        """``(account, region, repository)`` when ``image`` is an ECR image, else None."""
        m = _ECR_IMAGE.match(self.image or "")
        if not m:
            return None
        repo = re.split(r"[:@]", m.group(3), maxsplit=1)[0]
        return m.group(1), m.group(2), repo

    def job_args(self) -> list[str]:
        """The ``python -m job run`` options the stack fixes (the script adds --out, --publish, --device)."""
        sources, meta = (self.sources, self.nuscenes_meta) if self.sources else C.dataset_sources(self.dataset)
        args: list[str] = []
        for s in sources:
            args += ["--source", s]
        if meta:
            args += ["--nuscenes-meta", meta]
        args += [
            "--model", self.model,
            "--pretrained", self.pretrained,
            "--pool", self.pool,
            "--resize-mode", self.resize_mode,
            "--index-type", self.index_type,
            "--channels", ",".join(self.channels),
            "--log-level", self.log_level,
        ]
        if self.include_sweeps:
            args.append("--include-sweeps")
        return args


def _choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    v = str(value).strip()
    if v not in choices:
        raise ConfigError(f"context {key}={value!r} is not valid; valid values: {', '.join(choices)}")
    return v


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"context {key}={value!r} is not a boolean; valid values: true, false")


def _number(key: str, value: Any, cast: Callable[[Any], float], lo: float, hi: float) -> Any:
    try:
        n = cast(value)
    except (TypeError, ValueError):
        raise ConfigError(f"context {key}={value!r} is not a number; valid values: {lo:g} to {hi:g}") from None
    if isinstance(n, float) and not math.isfinite(n) or not lo <= n <= hi:
        raise ConfigError(f"context {key}={value!r} is out of range; valid values: {lo:g} to {hi:g}")
    return n


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _pattern(key: str, value: Any, pattern: re.Pattern[str], example: str) -> str:
    v = str(value).strip()
    if not pattern.match(v):
        raise ConfigError(f"context {key}={value!r} is not valid; expected something like {example}")
    return v


def _list(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(s.strip() for s in items if str(s).strip())


def _source(key: str, uri: str) -> str:
    if not _SOURCE.match(uri):
        raise ConfigError(f"context {key}: {uri!r} has characters other than letters, digits and ._:/@+=-*?[]")
    if uri.startswith(("s3://", "https://", "http://")) or uri == C.NUSCENES_MOUNT or uri.startswith(C.NUSCENES_MOUNT + "/"):
        return uri
    raise ConfigError(
        f"context {key}: {uri!r} is not reachable from the instance; valid values: s3://bucket/key, https://..., "
        f"or a path under {C.NUSCENES_MOUNT} (the read-only mount of s3://{C.NUSCENES_BUCKET})"
    )


def default_run_id(dataset: str, now: Any = None) -> str:
    import datetime as _dt

    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{dataset}-{now:%Y%m%d-%H%M%S}"


def from_context(get: Callable[[str], Any]) -> RunConfig:
    """Build and validate the config from a context getter (``app.node.try_get_context``)."""
    raw = {k: get(k) for k in CONTEXT_KEYS}
    raw = {k: v for k, v in raw.items() if v is not None and not (isinstance(v, str) and v.strip() == "")}
    kw: dict[str, Any] = {}

    if "region" in raw:
        kw["region"] = _pattern("region", raw["region"], _REGION, "ap-northeast-1")
    if "instance_type" in raw:
        kw["instance_type"] = _choice("instance_type", raw["instance_type"], C.VALID_INSTANCE_TYPES)
    if "market" in raw:
        kw["market"] = _choice("market", raw["market"], C.MARKETS)
    if "max_run_hours" in raw:
        kw["max_run_hours"] = _number("max_run_hours", raw["max_run_hours"], float, 0.1, C.MAX_MAX_RUN_HOURS)
    if "shutdown_behavior" in raw:
        kw["shutdown_behavior"] = _choice("shutdown_behavior", raw["shutdown_behavior"], C.SHUTDOWN_BEHAVIORS)
    dataset = _choice("dataset", raw.get("dataset", C.DEFAULT_DATASET), C.DATASETS)
    kw["dataset"] = dataset
    if "sources" in raw:
        kw["sources"] = tuple(_source("sources", s) for s in _list(raw["sources"]))
    if "nuscenes_meta" in raw:
        if "sources" not in kw:
            raise ConfigError("context nuscenes_meta is only used with custom sources; set sources too, or drop it")
        kw["nuscenes_meta"] = _source("nuscenes_meta", str(raw["nuscenes_meta"]).strip())
    for key in ("model", "pretrained"):
        if key in raw:
            kw[key] = _pattern(key, raw[key], _SAFE_TOKEN, "ViT-L-14" if key == "model" else "openclip")
    if "pool" in raw:
        kw["pool"] = _choice("pool", raw["pool"], C.POOLS)
    if "resize_mode" in raw:
        kw["resize_mode"] = _choice("resize_mode", raw["resize_mode"], C.RESIZE_MODES)
    if "index_type" in raw:
        kw["index_type"] = _choice("index_type", raw["index_type"], C.INDEX_TYPES)
    if "channels" in raw:
        chans = tuple(_choice("channels", c, C.CAMERA_CHANNELS) for c in _list(raw["channels"]))
        if not chans:
            raise ConfigError(f"context channels is empty; valid values: {', '.join(C.CAMERA_CHANNELS)}")
        kw["channels"] = tuple(dict.fromkeys(chans))
    if "include_sweeps" in raw:
        kw["include_sweeps"] = _bool("include_sweeps", raw["include_sweeps"])
    if "log_level" in raw:
        kw["log_level"] = _choice("log_level", str(raw["log_level"]).upper(), C.LOG_LEVELS)
    if "image" in raw:
        kw["image"] = _pattern("image", raw["image"], _IMAGE, "123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/vit-embed:latest")
    kw["run_id"] = _pattern("run_id", raw["run_id"], _RUN_ID, "trainval-20250101-120000") if "run_id" in raw else default_run_id(dataset)
    if "vpc_id" in raw or "subnet_id" in raw:
        if not ("vpc_id" in raw and "subnet_id" in raw):
            raise ConfigError("context vpc_id and subnet_id go together; set both (e.g. -c vpc_id=vpc-0abc... -c subnet_id=subnet-0def...)")
        kw["vpc_id"] = _pattern("vpc_id", raw["vpc_id"], _VPC_ID, "vpc-0123456789abcdef0")
        kw["subnet_id"] = _pattern("subnet_id", raw["subnet_id"], _SUBNET_ID, "subnet-0123456789abcdef0")
    if "availability_zone" in raw:
        kw["availability_zone"] = _pattern("availability_zone", raw["availability_zone"], _AZ, "ap-northeast-1a")
    if "nat_gateway" in raw:
        kw["nat_gateway"] = _bool("nat_gateway", raw["nat_gateway"])
    if "root_volume_gb" in raw:
        kw["root_volume_gb"] = _number("root_volume_gb", raw["root_volume_gb"], _int, C.MIN_ROOT_VOLUME_GB, C.MAX_ROOT_VOLUME_GB)
    if "ami_ssm_parameter" in raw:
        kw["ami_ssm_parameter"] = _pattern("ami_ssm_parameter", raw["ami_ssm_parameter"], _SSM_PARAM, C.DEFAULT_AMI_SSM_PARAMETER)
    if "retain_artifacts" in raw:
        kw["retain_artifacts"] = _bool("retain_artifacts", raw["retain_artifacts"])
    if "artifact_retention_days" in raw:
        kw["artifact_retention_days"] = _number("artifact_retention_days", raw["artifact_retention_days"], _int, 0, 3650)
    if "log_retention_days" in raw:
        days = _number("log_retention_days", raw["log_retention_days"], _int, 1, 3653)
        kw["log_retention_days"] = int(_choice("log_retention_days", str(days), map(str, C.LOG_RETENTION_DAYS)))
    if "stack_name" in raw:
        kw["stack_name"] = _pattern("stack_name", raw["stack_name"], _STACK_NAME, C.STACK_NAME)

    cfg = RunConfig(**kw)
    _check_combinations(cfg)
    return cfg


def _check_combinations(cfg: RunConfig) -> None:
    if cfg.market == "spot" and cfg.shutdown_behavior != "terminate":
        raise ConfigError("context market=spot needs shutdown_behavior=terminate (a one-time spot instance cannot stop); valid values: terminate")
    if cfg.vpc_id and (cfg.nat_gateway or cfg.availability_zone):
        raise ConfigError("context vpc_id (an existing VPC) cannot be combined with nat_gateway or availability_zone, which shape a new VPC")
    if cfg.availability_zone and not cfg.availability_zone.startswith(cfg.region):
        raise ConfigError(f"context availability_zone={cfg.availability_zone!r} is not in region {cfg.region}; valid values: {cfg.region}a, {cfg.region}b, ...")
