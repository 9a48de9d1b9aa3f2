"""Names, defaults and allowed values for the cloud run, in one place (read by config, constructs and tests)."""
from __future__ import annotations

from typing import Sequence

STACK_NAME = "VitEmbedDriveData"
PROJECT_TAG = "vit-embedding-drivedata"

# --- where and on what -------------------------------------------------------------------------------------------
DEFAULT_REGION = "ap-northeast-1"  # the nuScenes bucket's region: no cross-region transfer
# In order of preference: the Auto Scaling group tries the first type first, the next where it has no capacity.
DEFAULT_INSTANCE_TYPES: tuple[str, ...] = ("g6e.xlarge", "g6e.2xlarge")
INSTANCE_FAMILIES: tuple[str, ...] = ("g5", "g6", "g6e")
INSTANCE_SIZES: tuple[str, ...] = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")
VALID_INSTANCE_TYPES: tuple[str, ...] = tuple(f"{f}.{s}" for f in INSTANCE_FAMILIES for s in INSTANCE_SIZES)
MAX_INSTANCE_TYPES = 10  # a fallback list longer than this is a typo, not a plan (the group accepts up to 40)
MARKETS: tuple[str, ...] = ("on-demand", "spot")
SPOT_FALLBACKS: tuple[str, ...] = ("none", "on-demand")
# All G and VT instances share one vCPU quota per market (Service Quotas, service code ec2).
GPU_QUOTA_CODES: dict[str, str] = {
    "on-demand": "L-DB2E81BA",  # Running On-Demand G and VT instances
    "spot": "L-3819A6DF",  # All G and VT Spot Instance Requests
}

# Deep Learning Base OSS AMI (NVIDIA driver, Docker, NVIDIA Container Toolkit), resolved at deploy time.
DEFAULT_AMI_SSM_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
DEFAULT_ROOT_VOLUME_GB = 200  # DLAMI (~75 GB) + job image (~15 GB) + model cache + headroom
MIN_ROOT_VOLUME_GB = 100
MAX_ROOT_VOLUME_GB = 2000
DEFAULT_MAX_RUN_HOURS = 4.0
MAX_MAX_RUN_HOURS = 168.0  # one week: anything longer is almost certainly a typo
# The deadline outside the instance (cdk/deadline.py: a one-time EventBridge Scheduler schedule that sets the group to
# 0) fires this long after max_run_hours, counted from the instance's launch (its "EC2 Instance Launch Successful"
# event): the margin covers the boot before the user-data's own clock starts and the in-guest stops that come first.
DEADLINE_MARGIN_MINUTES = 15
IMDS_HOP_LIMIT = 2  # the container reaches IMDSv2 through the docker bridge (one extra hop)

# --- network -----------------------------------------------------------------------------------------------------
VPC_CIDR = "10.42.0.0/16"
# One public subnet per AZ, so the group can launch wherever the GPU type has capacity. Without an account in the
# environment CDK cannot list a region's AZs at synth; the stack picks the first N of Fn::GetAZs (every region that
# offers g6e has at least 3).
DEFAULT_MAX_AZS = 3
MAX_MAX_AZS = 6
EGRESS_PORTS: tuple[tuple[int, str], ...] = (
    (443, "HTTPS: S3, CloudWatch Logs, SSM, PyPI, container registries"),
    (80, "HTTP: Ubuntu apt mirrors (packages are GPG-signed) for s3fs"),
)

# The spot -> on-demand fallback (cdk/fallback.py) reacts to these "EC2 Instance Launch Unsuccessful" status messages
# only: no spot capacity, or no spot quota (EventBridge wildcard patterns on detail.StatusMessage). An AZ that does not
# offer the type ("... is not supported in your requested Availability Zone ...") or any other failure (a bad AMI, an
# IAM error) is not a capacity problem, and on-demand would not fix it.
SPOT_CAPACITY_MESSAGES: tuple[str, ...] = (
    "*InsufficientInstanceCapacity*",
    "*There is no Spot capacity available*",
    "*UnfulfillableCapacity*",
    "*MaxSpotInstanceCountExceeded*",
    "*Max spot instance count exceeded*",
)

# --- data --------------------------------------------------------------------------------------------------------
NUSCENES_BUCKET = "motional-nuscenes"
NUSCENES_REGION = "ap-northeast-1"  # the s3fs mount always talks to the bucket's own regional endpoint
NUSCENES_MOUNT = "/mnt/nuscenes"
NUSCENES_PREFIX = "public/v1.0"
DATASETS: tuple[str, ...] = ("trainval", "mini")
DEFAULT_DATASET = "trainval"
TRAINVAL_PARTS = 10
# What a run reads from the bucket (docs/cloud.md): trainval = 10 keyframe archives (~4.3 GB each) + the tables
# (~0.45 GB); mini = v1.0-mini.tgz (~4 GB). Sizes from the bucket listing in FACTS.md, marked unconfirmed there.
DATASET_READ_GB: dict[str, float] = {"trainval": 43.5, "mini": 4.0}
NAT_USD_PER_GB = 0.062  # NAT gateway data processing in ap-northeast-1 (us-east-1: 0.045), published price


def dataset_sources(dataset: str, root: str = f"{NUSCENES_MOUNT}/{NUSCENES_PREFIX}") -> tuple[tuple[str, ...], str | None]:
    """``(sources, nuscenes_meta)`` for a named dataset, on the s3fs mount (or under ``root``, e.g. ``s3://…``)."""
    if dataset == "mini":
        return (f"{root}/v1.0-mini.tgz",), None
    parts = tuple(f"{root}/v1.0-trainval{i:02d}_keyframes.tgz" for i in range(1, TRAINVAL_PARTS + 1))
    return parts, f"{root}/v1.0-trainval_meta.tgz"


# --- job pass-through: the job's own choices, so the stack validates exactly what the job accepts ---------------

from job.config import (  # noqa: E402, F401  (re-exported)
    CAMERA_CHANNELS,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_RESIZE_MODE,
    INDEX_TYPES,
    LOG_LEVELS,
    POOLS,
    RESIZE_MODES,
)

DEFAULT_POOL = POOLS[0]
DEFAULT_INDEX_TYPE = INDEX_TYPES[0]
# --device for the job on both engines: cuda, so that a GPU torch cannot use fails the run at once with the reason
# (job --device cuda) instead of embedding on the CPU for hours; cpu only when asked for. Not auto, which falls back.
DEVICES: tuple[str, ...] = ("cuda", "cpu")
DEFAULT_DEVICE = "cuda"

# --- storage and logs --------------------------------------------------------------------------------------------
RUNS_PREFIX = "runs"
STATUS_OBJECT = "_STATUS"
BOOTSTRAP_LOG_OBJECT = "_bootstrap.log"
DEFAULT_ARTIFACT_RETENTION_DAYS = 365
IA_TRANSITION_DAYS = 30
NONCURRENT_VERSION_DAYS = 30
ABORT_MULTIPART_DAYS = 7
ACCESS_LOG_RETENTION_DAYS = 90
DEFAULT_LOG_RETENTION_DAYS = 30
# The values CloudWatch Logs accepts (same order as aws_logs.RetentionDays, INFINITE left out).
LOG_RETENTION_DAYS: tuple[int, ...] = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)
LOG_GROUP_PREFIX = "/vit-embed"

# --- the job image ------------------------------------------------------------------------------------------------
IMAGE_BUILD = "build"  # default: the instance builds docker/Dockerfile from the shipped source (no local Docker)
IMAGE_ASSET = "asset"  # cdk deploy builds docker/Dockerfile locally (DockerImageAsset) and pushes it to ECR
DOCKERFILE = "docker/Dockerfile"
LOCK_FILE = "requirements.lock"  # every Python dependency, hash-pinned (make lock)
IMAGE_LOCK_FILE = "docker/requirements.txt"  # the image's (runtime) subset of it, same pins (make lock)
# What `cdk bootstrap` leaves (default qualifier): the SSM parameter holding the bootstrap version, which the CLI
# itself checks before a deploy (whatever the bootstrap stack is called: --toolkit-stack-name may rename it), and the
# oldest version whose assets this app uses.
BOOTSTRAP_QUALIFIER = "hnb659fds"
BOOTSTRAP_VERSION_PARAMETER = f"/cdk-bootstrap/{BOOTSTRAP_QUALIFIER}/version"
MIN_BOOTSTRAP_VERSION = 6

# --- on the instance ---------------------------------------------------------------------------------------------
INSTANCE_ETC = "/etc/vit-embed"
RUN_ENV_FILE = f"{INSTANCE_ETC}/run.env"
JOB_ARGS_FILE = f"{INSTANCE_ETC}/job.args"
SCRIPT_PATH = "/opt/vit-embed/run.sh"
# job/status/rules.py, the _STATUS merge rules the script runs (standard library only): user_data.sh's default
# STATUS_RULES, beside the script in its WORK_DIR
STATUS_RULES_PATH = "/opt/vit-embed/status_rules.py"
SOURCE_ZIP_PATH = "/opt/vit-embed/src.zip"
# The run script creates this as soon as its traps are set (STATE_DIR in user_data.sh): from then on the script,
# not the user-data, decides how the run ends (a spot-interrupted instance must not set its group to 0).
SCRIPT_STARTED_MARKER = "/run/vit-embed/started"
NOTEBOOK = "notebooks/umap_visualize.ipynb"

# Paths the repository asset leaves out (the instance only needs pyproject.toml, job/ and docker/).
SOURCE_ASSET_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".venv",
    ".venv-deploy",
    ".cache",
    "venv",
    "node_modules",
    "cdk.out",
    "cdk",
    "app.py",
    "cdk.json",
    "cdk.context.json",
    "package.json",
    "package-lock.json",
    "Makefile",
    "requirements.lock",
    "requirements-deploy.lock",
    ".gitignore",
    ".github",
    ".env",
    "tests",
    "notebooks",
    "bench",
    "docs",
    ".ci",
    "runs",
    "vectors",
    "indexes",
    "build",
    "dist",
    "test-artifacts",
    ".whl",
    ".gl",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
)

# --- engine=batch: the N shards as an AWS Batch array job, then the merge (cdk/batch.py, docs/cloud.md) -----------
ENGINE_INSTANCE = "instance"  # default: one GPU instance in an Auto Scaling group of one runs `job run`
ENGINE_BATCH = "batch"  # AWS Batch: an array job of N `job run --shard I/N` children, then `job merge`
ENGINES: tuple[str, ...] = (ENGINE_INSTANCE, ENGINE_BATCH)
MAX_SHARDS = 100  # Batch allows arrays of 10,000; more than 100 GPUs for ~1.4M images is a typo, not a plan
# Batch reads the bucket with the job's own S3 reader (no mount on a Batch host): anonymous ranged GETs.
NUSCENES_S3_ROOT = f"s3://{NUSCENES_BUCKET}/{NUSCENES_PREFIX}"
# The environment variable Batch sets in each child of an array job; `--shard '$VAR/N'` reads it (job.config).
ARRAY_INDEX_VAR = "AWS_BATCH_JOB_ARRAY_INDEX"
SHARDS_DIR = "shards"  # job.runfolder.SHARDS_DIR: shard I writes runs/<run-id>/shards/I/ and nothing else
WEIGHTS_CACHE_PREFIX = "cache/weights"  # job --weights-cache: tag weights fetched once per account, for every run
# The job's exit code after a graceful stop (SIGTERM: spot reclaim, docker stop): job.errors.Interrupted.exit_code.
# Batch retries it; tests/test_cdk_batch.py checks the two numbers agree.
EXIT_STOPPED = 75
# Attempts per child (Batch allows 1-10): a spot reclaim or exit 75 starts another attempt, which resumes from S3.
BATCH_ATTEMPTS = 5
# What Batch's status reason says when the instance under a job went away (spot reclaim, host failure).
HOST_TERMINATED_REASON = "Host EC2*"
# Of each type's memory, what a job asks for: ECS registers a little less than the instance has (the kernel and
# the agent keep some), and a job that asks for more than the registered memory never leaves RUNNABLE.
BATCH_MEMORY_FRACTION = 0.9
# A queued job that Batch reports blocked in RUNNABLE is cancelled after this long (the queue's
# jobStateTimeLimitActions): no capacity for the types in an hour, or a misconfiguration that waiting cannot fix
# (the job asks more than any instance or the compute environment offers; Batch's minimum is 10 minutes).
BATCH_CAPACITY_WAIT_MINUTES = 60
BATCH_MISCONFIGURATION_WAIT_MINUTES = 10
# Where the run records why Batch ended a job FAILED (cdk/batch_notes.py writes, job/status/view.py reads):
# runs/<run-id>/_batch/shard-<I>.json and _batch/merge.json, each the job's id, status and statusReason.
BATCH_NOTES_DIR = "_batch"
# Where the run records its group's latest failed launch (cdk/launch_notes.py writes, job/status_view.py reads):
# runs/<run-id>/_launch.json, {"at", "group", "message", "cause", "az"}; `job status` shows "waiting for capacity".
LAUNCH_NOTE = "_launch.json"
# /dev/shm for the job container (the instance engine runs it with --ipc=host): decode workers and torch use it.
BATCH_SHM_GIB = 2

# vCPUs, memory and GPUs of the allowed GPU types (published EC2 specifications), to size the Batch jobs so that
# one fits on any type of the list, and to bound the compute environment.
_SIZE_VCPUS = {"xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48, "16xlarge": 64, "24xlarge": 96, "48xlarge": 192}
_GIB_PER_VCPU = {"g5": 4, "g6": 4, "g6e": 8}  # g5/g6.xlarge 16 GiB, g6e.xlarge 32 GiB, and linear in the size
_GPUS = {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8}  # every other size has one GPU


def instance_spec(instance_type: str) -> tuple[int, int, int]:
    """``(vCPUs, memory GiB, GPUs)`` of a g5 / g6 / g6e type."""
    family, size = instance_type.split(".", 1)
    vcpus = _SIZE_VCPUS[size]
    return vcpus, vcpus * _GIB_PER_VCPU[family], _GPUS.get(size, 1)


def shard_vcpus(instance_types: Sequence[str]) -> int:
    """The vCPUs one Batch shard asks for: one GPU's share of the smallest allowed type, so it fits on every type."""
    return min(v // g for v, _, g in (instance_spec(t) for t in instance_types))


def batch_vcpu_ceiling(instance_types: Sequence[str], shards: int) -> int:
    """The most vCPUs N shards can hold at once: each on its own GPU of the largest per-GPU share of the types."""
    return shards * max(v // g for v, _, g in (instance_spec(t) for t in instance_types))


MAX_BATCH_VCPUS = MAX_SHARDS * _SIZE_VCPUS["48xlarge"]  # max_vcpus above every shard on the largest type is a typo
