"""Stack: composes network, storage, the job image, the job's Auto Scaling group, its deadline and (for spot) its
on-demand fallback, does the grants, warns about cross-region reads, and prints how to follow the run."""
from __future__ import annotations

from aws_cdk import Annotations, Aws, Fn, RemovalPolicy, Stack, Tags
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from . import constants as C
from .compute import JobGroup
from .config import RunConfig
from .deadline import Deadline
from .fallback import SpotFallback
from .image import JobImage
from .network import Network
from .outputs import instance_outputs
from .storage import Storage

CROSS_REGION_WARNING = "vit-embed:cross-region"
NEW_RUN_WARNING = "vit-embed:new-run"


def new_run_message(cfg: RunConfig) -> str:
    """The synth warning when run_id was not given: this deploy is a new run, which replaces a running one."""
    return (
        f"run_id not set: this deploy starts a new run ({cfg.run_id}). If the stack {cfg.stack_name} is still running "
        "an earlier run, the deploy replaces it (its instance or Batch jobs are stopped; what S3 holds stays). "
        "Check first with make preflight (it refuses unless -c replace_running=true); resume a run with -c run_id=<its id>."
    )



def add_shared(scope: Construct, cfg: RunConfig) -> tuple[Network, Storage, logs.LogGroup, JobImage]:
    """What both engines' stacks hold: the network, the artifacts bucket, the job log group and the job image."""
    network = Network(scope, "Network", vpc_id=cfg.vpc_id, subnet_ids=cfg.subnet_ids,
                      availability_zones=cfg.availability_zones, max_azs=cfg.max_azs, nat_gateway=cfg.nat_gateway)
    storage = Storage(scope, "Storage", retain=cfg.retain_artifacts,
                      artifact_retention_days=cfg.artifact_retention_days, existing=cfg.artifacts_bucket)
    log_group = logs.LogGroup(scope, "JobLogs", log_group_name=f"{C.LOG_GROUP_PREFIX}/{cfg.stack_name}",
                              retention=retention_days(cfg.log_retention_days), removal_policy=RemovalPolicy.DESTROY)
    image = JobImage(scope, "Image", image=cfg.image, ecr_repository=cfg.ecr_repository)
    return network, storage, log_group, image


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


class EmbeddingRunStack(Stack):
    """One run of ``python -m job run`` on one GPU instance; artifacts land in ``s3://<bucket>/runs/<run-id>/``."""

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

        self.network, self.storage, self.log_group, self.image = add_shared(self, cfg)
        bucket = self.storage.artifacts

        run_env = {
            "REGION": cfg.region,
            "ARTIFACTS_BUCKET": bucket.bucket_name,
            "RUN_ID": cfg.run_id,
            "RUN_PREFIX": cfg.run_prefix,
            "LOG_GROUP": self.log_group.log_group_name,
            "MAX_RUN_MINUTES": str(cfg.max_run_minutes),
            "MARKET": cfg.market,
            "INSTANCE_TYPE": ",".join(cfg.instance_types),  # the allowed types; the script logs the one it got
            "IMAGE": self.image.uri,
            "ECR_REGISTRY": self.image.registry,
            "ECR_REGION": self.image.registry_region,
            "SOURCE_ZIP": C.SOURCE_ZIP_PATH,
            "NUSCENES_BUCKET": C.NUSCENES_BUCKET,
            "NUSCENES_REGION": C.NUSCENES_REGION,
            "NUSCENES_MOUNT": C.NUSCENES_MOUNT,
            # Tag weights stored once per account and read by every later run (job --weights-cache).
            "WEIGHTS_CACHE": f"s3://{bucket.bucket_name}/{C.WEIGHTS_CACHE_PREFIX}",
        }
        self.job = JobGroup(
            self,
            "Job",
            vpc=self.network.vpc,
            subnets=self.network.subnets,
            security_group=self.network.security_group,
            group_name=cfg.group_name,
            instance_types=cfg.instance_types,
            market=cfg.market,
            root_volume_gb=cfg.root_volume_gb,
            ami_ssm_parameter=cfg.ami_ssm_parameter,
            run_env=run_env,
            job_args=cfg.job_args(),
            max_run_minutes=cfg.max_run_minutes,
            source_asset=self.image.source_asset,
            region=cfg.region,
        )
        if self.network.internet_connectivity is not None:  # its first boot needs the routes (apt, S3, the logs)
            self.job.group.node.add_dependency(self.network.internet_connectivity)
        self.deadline = Deadline(self, "Deadline", group_name=cfg.group_name, run_id=cfg.run_id,
                                 minutes=cfg.deadline_minutes, log_retention=retention_days(cfg.log_retention_days))
        # The rule must be listening before the group's first launch (whose event starts the clock).
        self.job.group.node.add_dependency(self.deadline)
        self.fallback: SpotFallback | None = None
        if cfg.market == "spot" and cfg.spot_fallback == "on-demand":
            self.fallback = SpotFallback(
                self, "SpotFallback", group_name=cfg.group_name, launch_template=self.job.launch_template,
                instance_role=self.job.role, log_retention=retention_days(cfg.log_retention_days),
            )
            # The rule must be listening before the group's first launch attempt.
            self.job.group.node.add_dependency(self.fallback)
        self._grant(cfg)
        instance_outputs(self, cfg)

    @property
    def availability_zones(self) -> list[str]:
        """The AZs the new VPC spans: the pinned ones, or the first ``max_azs`` of the region (``Fn::GetAZs``).

        CDK gives an account-agnostic stack only two AZs; every region that offers g6e has at least three, and more
        subnets means more places the group can find capacity. Synth stays offline: no lookup, just ``Fn::Select``.
        """
        cfg = self.config
        if cfg.availability_zones:
            return list(cfg.availability_zones)
        return [Fn.select(i, Fn.get_azs()) for i in range(cfg.max_azs)]

    # -- IAM: least privilege for the instance role ------------------------------------------------------------------
    def _grant(self, cfg: RunConfig) -> None:
        role = self.job.role
        bucket = self.storage.artifacts
        run_objects = bucket.arn_for_objects(f"{cfg.run_prefix}*")
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteOwnRunPrefix",
                actions=["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                resources=[run_objects],
            )
        )
        # The job writes its shards straight to the run prefix and probes keys before it writes (resume). S3 answers
        # a HEAD of a missing key with 404 only to a caller that may list the bucket (a prefix-conditioned grant does
        # not count; else 403, which the job cannot tell from a denial), so the listing is not conditioned.
        role.add_to_policy(iam.PolicyStatement(sid="ListArtifacts", actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))
        role.add_to_policy(
            iam.PolicyStatement(
                sid="SharedWeightsCache",
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[bucket.arn_for_objects(f"{C.WEIGHTS_CACHE_PREFIX}/*")],
            )
        )
        source_buckets = [f"arn:{Aws.PARTITION}:s3:::{b}" for b in cfg.source_buckets]
        role.add_to_policy(
            iam.PolicyStatement(sid="ReadSourceBuckets", actions=["s3:GetObject"], resources=[f"{b}/*" for b in source_buckets])
        )
        role.add_to_policy(iam.PolicyStatement(sid="ListSourceBuckets", actions=["s3:ListBucket"], resources=source_buckets))
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ShipContainerLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[self.log_group.log_group_arn],
            )
        )
        self.image.grant_pull(role)
