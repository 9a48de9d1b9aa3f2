"""What both engines' stacks share: the config, the tags, the synth warnings, the network, the artifacts bucket, the job
log group and the job image, and the AZs the new VPC spans. ``stack.py`` (one instance) and ``batch_stack.py`` (AWS
Batch) subclass :class:`RunStackBase` and add their compute; neither imports the other."""
from __future__ import annotations

from aws_cdk import Annotations, Fn, RemovalPolicy, Stack, Tags
from aws_cdk import aws_logs as logs
from constructs import Construct

from . import constants as C
from .config import RunConfig
from .image import JobImage
from .network import Network
from .storage import Storage

CROSS_REGION_WARNING = "vit-embed:cross-region"
NEW_RUN_WARNING = "vit-embed:new-run"


def new_run_message(cfg: RunConfig) -> str:
    """The synth warning when run_id was not given: the run id comes from the options, and a deploy with other
    options is another run, which replaces a running one."""
    return (
        f"run_id not set: this deploy's run id is {cfg.run_id} (the dataset and a hash of the options given beyond "
        "cdk.json: the same options give the same run, which resumes; other options give another run). If the stack "
        f"{cfg.stack_name} is still running another run, the deploy replaces it (its instance or Batch jobs are "
        "stopped; what S3 holds stays). Check first with make preflight (it refuses unless -c replace_running=true); "
        "name a run with -c run_id=<id>."
    )


def retention_days(days: int) -> logs.RetentionDays:
    """``RetentionDays`` member for a day count config already validated against LOG_RETENTION_DAYS."""
    names = [m for m in logs.RetentionDays if m is not logs.RetentionDays.INFINITE]
    return dict(zip(C.LOG_RETENTION_DAYS, names))[days]


def cross_region_message(cfg: RunConfig) -> str:
    """The synth warning for a stack outside the nuScenes bucket's region (one line, with the volume read)."""
    volume = f"~{C.DATASET_READ_GB[cfg.dataset]:g} GB" if not cfg.sources else "the configured sources"
    nat = (
        f"; through the NAT gateway that is ~${C.DATASET_READ_GB[cfg.dataset] * C.NAT_USD_PER_GB:.1f} of NAT processing"
        if cfg.nat_gateway and not cfg.sources
        else ""
    )
    return (
        f"region {cfg.region} is not the nuScenes bucket's region ({C.NUSCENES_REGION}): the run streams {volume} "
        f"across regions (no S3 gateway endpoint applies, slower than in-region){nat}. "
        f"Deploy with -c region={C.NUSCENES_REGION} to read in-region."
    )


class RunStackBase(Stack):
    """One run's stack: the parts both engines hold. Subclasses add the compute, its grants and its outputs."""

    def __init__(self, scope: Construct, construct_id: str, *, config: RunConfig, **kwargs) -> None:
        self.config = config  # read by availability_zones, which the VPC calls during construction
        super().__init__(scope, construct_id, **kwargs)
        cfg = config
        Tags.of(self).add("project", C.PROJECT_TAG)
        Tags.of(self).add("run-id", cfg.run_id)
        if cfg.cross_region:
            Annotations.of(self).add_warning_v2(CROSS_REGION_WARNING, cross_region_message(cfg))
        if not cfg.run_id_pinned:
            Annotations.of(self).add_warning_v2(NEW_RUN_WARNING, new_run_message(cfg))
        self.log_retention = retention_days(cfg.log_retention_days)
        self.network = Network(self, "Network", vpc_id=cfg.vpc_id, subnet_ids=cfg.subnet_ids,
                               availability_zones=cfg.availability_zones, max_azs=cfg.max_azs,
                               nat_gateway=cfg.nat_gateway)
        self.storage = Storage(self, "Storage", retain=cfg.retain_artifacts,
                               artifact_retention_days=cfg.artifact_retention_days, existing=cfg.artifacts_bucket)
        self.log_group = logs.LogGroup(self, "JobLogs", log_group_name=f"{C.LOG_GROUP_PREFIX}/{cfg.stack_name}",
                                       retention=self.log_retention, removal_policy=RemovalPolicy.DESTROY)
        self.image = JobImage(self, "Image", image=cfg.image, ecr_repository=cfg.ecr_repository)
        self.run_uri = f"s3://{self.storage.artifacts.bucket_name}/{cfg.run_prefix}"

    @property
    def availability_zones(self) -> list[str]:
        """The AZs the new VPC spans: the pinned ones, or the first ``max_azs`` of the region (``Fn::GetAZs``).

        CDK gives an account-agnostic stack only two AZs; every region that offers g6e has at least three, and more
        subnets means more places the group can find capacity. Synth stays offline: no lookup, just ``Fn::Select``.
        ``make preflight`` lists the same AZs by the same rule (``cdk.preflight.getazs``).
        """
        cfg = self.config
        if cfg.availability_zones:
            return list(cfg.availability_zones)
        return [Fn.select(i, Fn.get_azs()) for i in range(cfg.max_azs)]
