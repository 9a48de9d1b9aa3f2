"""Config: the cloud run's settings, read once from CDK context (cdk.json, ``-c key=value``) and validated."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import constants as C
from .context_values import (  # the value parsers; ConfigError is re-exported for app.py and the tests
    BUCKET_RE,
    CONTEXT_KEYS,
    ECR_IMAGE_RE,
    REGION_RE,
    REMOVED_KEYS,
    RUN_ID_RE,
    SAFE_TOKEN_RE,
    SSM_PARAM_RE,
    STACK_NAME_RE,
    SUBNET_ID_RE,
    VPC_ID_RE,
    ConfigError,
    default_run_id,
    parse_azs,
    parse_bool,
    parse_camera_channels,
    parse_choice,
    parse_float,
    parse_image,
    parse_instance_types,
    parse_list,
    parse_log_retention,
    parse_pattern,
    parse_source,
    parse_whole,
)

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"


def cdk_json_context() -> dict[str, Any]:
    """The ``context`` block of the repository's cdk.json (what the CLI feeds the app)."""
    return dict(json.loads(CDK_JSON.read_text()).get("context", {}))


@dataclass(frozen=True)
class RunConfig:
    """Everything the stack needs; built once by :func:`from_context`."""

    run_id: str
    region: str = C.DEFAULT_REGION
    instance_types: tuple[str, ...] = C.DEFAULT_INSTANCE_TYPES
    market: str = "on-demand"
    spot_fallback: str = "none"
    max_run_hours: float = C.DEFAULT_MAX_RUN_HOURS
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
    image: str = C.IMAGE_BUILD
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    max_azs: int = C.DEFAULT_MAX_AZS
    availability_zones: tuple[str, ...] = ()  # pinned AZs of the new VPC (none: the region's first max_azs)
    nat_gateway: bool = False
    root_volume_gb: int = C.DEFAULT_ROOT_VOLUME_GB
    ami_ssm_parameter: str = C.DEFAULT_AMI_SSM_PARAMETER
    retain_artifacts: bool = True
    artifact_retention_days: int = C.DEFAULT_ARTIFACT_RETENTION_DAYS
    log_retention_days: int = C.DEFAULT_LOG_RETENTION_DAYS
    stack_name: str = C.STACK_NAME
    engine: str = C.ENGINE_INSTANCE
    shards: int | None = None  # engine=batch only
    artifacts_bucket: str | None = None  # an existing bucket (resume after cdk destroy) instead of a new one
    replace_running: bool = False  # make preflight: a deploy may replace a run the stack still runs
    run_id_pinned: bool = True  # False when run_id defaulted to <dataset>-<hash of the run's options>
    device: str = C.DEFAULT_DEVICE  # what both engines pass to the job as --device
    max_vcpus: int | None = None  # engine=batch: the compute environment's cap (None: every shard at once)
    # The -c key=value pairs given beyond cdk.json's values (what a redeploy must repeat to be the same run).
    context: tuple[tuple[str, str], ...] = ()
    # When the app was synthesized (UTC): every deploy of a Batch run asks its submission handler again (DeployedAt).
    synth_time: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0))

    @property
    def run_prefix(self) -> str:
        """Key prefix of this run in the artifacts bucket, with the trailing slash."""
        return f"{C.RUNS_PREFIX}/{self.run_id}/"

    @property
    def instance_type(self) -> str:
        """The preferred instance type (the first of ``instance_types``)."""
        return self.instance_types[0]

    @property
    def max_run_minutes(self) -> int:
        return max(1, math.ceil(self.max_run_hours * 60))

    @property
    def group_name(self) -> str:
        """The Auto Scaling group's name: fixed, so the instance role and the deadline can name it without a
        reference cycle, and new for every run, so each ``cdk deploy`` starts a fresh group at capacity 1."""
        return f"{self.stack_name}-{self.run_id}"

    @property
    def deadline_minutes(self) -> int:
        """How long after the instance's launch the schedule outside it sets the group to 0 (cdk/deadline.py)."""
        return self.max_run_minutes + C.DEADLINE_MARGIN_MINUTES

    @property
    def image_uri(self) -> str | None:
        """The prebuilt image to pull, when ``image`` is a URI (not ``build`` or ``asset``)."""
        return None if self.image in (C.IMAGE_BUILD, C.IMAGE_ASSET) else self.image

    @property
    def cross_region(self) -> bool:
        """True when the stack is not in the nuScenes bucket's region but the job reads from that bucket."""
        reads_nuscenes = not self.sources or any(
            s.startswith((C.NUSCENES_MOUNT, f"s3://{C.NUSCENES_BUCKET}/")) for s in (*self.sources, self.nuscenes_meta or "")
        )
        return self.region != C.NUSCENES_REGION and reads_nuscenes

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
        """``(account, region, repository)`` when ``image`` is an ECR image URI, else None."""
        m = ECR_IMAGE_RE.match(self.image_uri or "")
        if not m:
            return None
        repo = re.split(r"[:@]", m.group(3), maxsplit=1)[0]
        return m.group(1), m.group(2), repo

    @property
    def batch(self) -> bool:
        """True for ``engine=batch`` (AWS Batch array job + merge) instead of the one instance."""
        return self.engine == C.ENGINE_BATCH

    def job_args(self) -> list[str]:
        """The ``python -m job run`` options the stack fixes, ``--device`` included (the engines add --out and the
        weights cache).

        The dataset's archives are read on the s3fs mount by the instance, and straight from S3 on Batch.
        """
        root = C.NUSCENES_S3_ROOT if self.batch else f"{C.NUSCENES_MOUNT}/{C.NUSCENES_PREFIX}"
        sources, meta = (self.sources, self.nuscenes_meta) if self.sources else C.dataset_sources(self.dataset, root)
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
            "--device", self.device,
        ]
        if self.include_sweeps:
            args.append("--include-sweeps")
        return args


# Keys whose value stands alone: key -> parser(key, value). The others depend on each other (below).
_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "region": lambda k, v: parse_pattern(k, v, REGION_RE, "ap-northeast-1"),
    "instance_types": lambda k, v: parse_instance_types({k: v}),
    "market": lambda k, v: parse_choice(k, v, C.MARKETS),
    "spot_fallback": lambda k, v: parse_choice(k, v, C.SPOT_FALLBACKS),
    "max_run_hours": lambda k, v: parse_float(k, v, 0.1, C.MAX_MAX_RUN_HOURS),
    "model": lambda k, v: parse_pattern(k, v, SAFE_TOKEN_RE, "ViT-L-14"),
    "pretrained": lambda k, v: parse_pattern(k, v, SAFE_TOKEN_RE, "openclip"),
    "pool": lambda k, v: parse_choice(k, v, C.POOLS),
    "resize_mode": lambda k, v: parse_choice(k, v, C.RESIZE_MODES),
    "index_type": lambda k, v: parse_choice(k, v, C.INDEX_TYPES),
    "channels": parse_camera_channels,
    "include_sweeps": parse_bool,
    "log_level": lambda k, v: parse_choice(k, str(v).upper(), C.LOG_LEVELS),
    "image": parse_image,
    "nat_gateway": parse_bool,
    "root_volume_gb": lambda k, v: parse_whole(k, v, C.MIN_ROOT_VOLUME_GB, C.MAX_ROOT_VOLUME_GB),
    "ami_ssm_parameter": lambda k, v: parse_pattern(k, v, SSM_PARAM_RE, C.DEFAULT_AMI_SSM_PARAMETER),
    "retain_artifacts": parse_bool,
    "artifact_retention_days": lambda k, v: parse_whole(k, v, 0, 3650),
    "log_retention_days": parse_log_retention,
    "stack_name": lambda k, v: parse_pattern(k, v, STACK_NAME_RE, C.STACK_NAME),
    "engine": lambda k, v: parse_choice(k, v, C.ENGINES),
    "shards": lambda k, v: parse_whole(k, v, 1, C.MAX_SHARDS),
    "max_vcpus": lambda k, v: parse_whole(k, v, 1, C.MAX_BATCH_VCPUS),
    "device": lambda k, v: parse_choice(k, v, C.DEVICES),
    "artifacts_bucket": lambda k, v: parse_pattern(k, v, BUCKET_RE, "vitembeddrivedata-storageartifacts1a2b3c4d-0123456789ab"),
    "replace_running": parse_bool,
}
# Keys that name where and how this deploy happens, not what the run is: a redeploy need not repeat them.
_NOT_THE_RUN = ("run_id", "artifacts_bucket", "replace_running", "retain_artifacts", "max_vcpus")


def _data_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """dataset, sources, nuscenes_meta and the run id when given (else the options name it: ``from_context``)."""
    dataset = parse_choice("dataset", raw.get("dataset", C.DEFAULT_DATASET), C.DATASETS)
    kw: dict[str, Any] = {"dataset": dataset}
    if "sources" in raw:
        kw["sources"] = tuple(parse_source("sources", s) for s in parse_list(raw["sources"]))
    if "nuscenes_meta" in raw:
        if "sources" not in kw:
            raise ConfigError("context nuscenes_meta is only used with custom sources; set sources too, or drop it")
        kw["nuscenes_meta"] = parse_source("nuscenes_meta", str(raw["nuscenes_meta"]).strip())
    if "run_id" in raw:
        kw["run_id"] = parse_pattern("run_id", raw["run_id"], RUN_ID_RE, "trainval-20250101-120000")
    return kw


def _network_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """An existing VPC and its subnets, or the size of the new VPC."""
    kw: dict[str, Any] = {}
    if "vpc_id" in raw or "subnet_id" in raw:
        if not ("vpc_id" in raw and "subnet_id" in raw):
            raise ConfigError("context vpc_id and subnet_id go together; set both (e.g. -c vpc_id=vpc-0abc... -c subnet_id=subnet-0def...,subnet-0123...)")
        kw["vpc_id"] = parse_pattern("vpc_id", raw["vpc_id"], VPC_ID_RE, "vpc-0123456789abcdef0")
        subnets = tuple(dict.fromkeys(parse_pattern("subnet_id", s, SUBNET_ID_RE, "subnet-0123456789abcdef0") for s in parse_list(raw["subnet_id"])))
        if not subnets:
            raise ConfigError("context subnet_id is empty; expected something like subnet-0123456789abcdef0")
        kw["subnet_ids"] = subnets
    pinned = [k for k in ("availability_zones", "availability_zone") if k in raw]
    if len(pinned) == 2:
        raise ConfigError("context availability_zone and availability_zones say the same thing; set one "
                          "(e.g. -c availability_zones=ap-northeast-1a,ap-northeast-1c)")
    if pinned:
        kw["availability_zones"] = parse_azs(pinned[0], raw[pinned[0]])
        if pinned[0] == "availability_zone" and len(kw["availability_zones"]) > 1:
            raise ConfigError("context availability_zone takes one AZ; use availability_zones for a list")
    if "max_azs" in raw:
        if "vpc_id" in raw or pinned:
            raise ConfigError("context max_azs shapes a new VPC; it cannot be combined with vpc_id or availability_zone(s)")
        kw["max_azs"] = parse_whole("max_azs", raw["max_azs"], 1, C.MAX_MAX_AZS)
    return kw


def _given_context(raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The keys whose value differs from cdk.json's, as strings: what ``-c`` said about the run."""
    defaults = cdk_json_context()
    text = {k: (str(v).lower() if isinstance(v, bool) else ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
            for k, v in raw.items()}
    default_text = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in defaults.items()}
    return tuple((k, v) for k, v in text.items() if k not in _NOT_THE_RUN and v != default_text.get(k))


def from_context(get: Callable[[str], Any]) -> RunConfig:
    """Build and validate the config from a context getter (``app.node.try_get_context``)."""
    for key, why in REMOVED_KEYS.items():
        if get(key) is not None:
            raise ConfigError(f"context {key} is no longer used: {why}; remove it")
    raw = {k: get(k) for k in CONTEXT_KEYS}
    raw = {k: v for k, v in raw.items() if v is not None and not (isinstance(v, str) and v.strip() == "")}
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    kw: dict[str, Any] = {"synth_time": now}
    kw.update({key: parse(key, raw[key]) for key, parse in _FIELDS.items() if key in raw})
    kw.update(_data_fields(raw))
    kw.update(_network_fields(raw))
    kw["run_id_pinned"] = "run_id" in raw
    kw["context"] = _given_context(raw)
    if "image" not in raw and kw.get("engine") == C.ENGINE_BATCH:
        kw["image"] = C.IMAGE_ASSET  # Batch pulls a registry image: cdk deploy builds and pushes it
    cfg = RunConfig(**{"run_id": "-", **kw})
    if not cfg.run_id_pinned:
        cfg = dataclasses.replace(cfg, run_id=default_run_id(cfg.dataset, dataclasses.asdict(cfg)))
    _check_combinations(cfg)
    return cfg


def _check_combinations(cfg: RunConfig) -> None:
    if cfg.spot_fallback != "none" and cfg.market != "spot":
        raise ConfigError(f"context spot_fallback={cfg.spot_fallback} needs market=spot; valid values with market={cfg.market}: none")
    if cfg.vpc_id and (cfg.nat_gateway or cfg.availability_zones):
        raise ConfigError("context vpc_id (an existing VPC) cannot be combined with nat_gateway or availability_zone(s), which shape a new VPC")
    for az in cfg.availability_zones:
        if not az.startswith(cfg.region):
            raise ConfigError(f"context availability_zones: {az!r} is not in region {cfg.region}; valid values: {cfg.region}a, {cfg.region}b, ...")
    _check_engine(cfg)


def _check_engine(cfg: RunConfig) -> None:
    """What engine=batch needs (shards, a registry image, S3 sources) and what only the instance engine takes."""
    if not cfg.batch:
        for key in ("shards", "max_vcpus"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"context {key}={getattr(cfg, key)} needs engine=batch; valid values with "
                                  f"engine={cfg.engine}: none (one instance embeds everything)")
        return
    if cfg.shards is None:
        raise ConfigError(f"context engine=batch needs shards=N; valid values: 1 to {C.MAX_SHARDS} (e.g. -c shards=10: one trainval archive per shard)")
    if cfg.image == C.IMAGE_BUILD:
        raise ConfigError(f"context image={C.IMAGE_BUILD} cannot be used with engine=batch (Batch pulls a registry image, nothing builds it); "
                          f"valid values: {C.IMAGE_ASSET} (cdk deploy builds and pushes it), or an image URI")
    if cfg.max_vcpus is not None and cfg.max_vcpus < C.shard_vcpus(cfg.instance_types):
        raise ConfigError(f"context max_vcpus={cfg.max_vcpus} is less than one shard needs ({C.shard_vcpus(cfg.instance_types)} "
                          f"vCPUs on {', '.join(cfg.instance_types)}); valid values: {C.shard_vcpus(cfg.instance_types)} or more")
    if cfg.spot_fallback != "none":
        raise ConfigError(f"context spot_fallback={cfg.spot_fallback} is for engine=instance; valid values with engine=batch: none "
                          "(Batch retries a reclaimed spot shard; use market=on-demand to avoid spot)")
    if cfg.ami_ssm_parameter != C.DEFAULT_AMI_SSM_PARAMETER:
        raise ConfigError("context ami_ssm_parameter is for engine=instance; engine=batch runs on the ECS-optimized AL2023 GPU AMI that Batch picks")
    mounted = [s for s in (*cfg.sources, cfg.nuscenes_meta or "") if s == C.NUSCENES_MOUNT or s.startswith(C.NUSCENES_MOUNT + "/")]
    if mounted:
        raise ConfigError(f"context sources: {mounted[0]!r} is on the instance engine's s3fs mount, which Batch hosts do not have; "
                          f"valid values with engine=batch: s3://bucket/key (e.g. {C.NUSCENES_S3_ROOT}/...) or https://...")
