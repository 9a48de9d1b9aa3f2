"""Stack (``engine=instance``): the shared parts (``run_stack.py``), then the job's Auto Scaling group, its deadline,
its launch notes and (for spot) its on-demand fallback; the grants, and how to follow the run."""
from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from constructs import Construct

from . import constants as C
from .compute import JobGroup
from .config import RunConfig
from .deadline import Deadline
from .fallback import SpotFallback
from .launch_notes import LaunchNotes
from .outputs import instance_outputs
from .run_stack import RunStackBase


class EmbeddingRunStack(RunStackBase):
    """One run of ``python -m job run`` on one GPU instance; artifacts land in ``s3://<bucket>/runs/<run-id>/``."""

    def __init__(self, scope: Construct, construct_id: str, *, config: RunConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, config=config, **kwargs)
        cfg = config
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
        self.job = JobGroup(self, "Job", config=cfg, network=self.network, run_env=run_env,
                            source_asset=self.image.source_asset, log_retention=self.log_retention)
        if self.network.internet_connectivity is not None:  # its first boot needs the routes (apt, S3, the logs)
            self.job.group.node.add_dependency(self.network.internet_connectivity)
        self.deadline = Deadline(self, "Deadline", group_name=cfg.group_name, run_id=cfg.run_id,
                                 minutes=cfg.deadline_minutes, log_retention=self.log_retention)
        self.launch_notes = LaunchNotes(self, "LaunchNotes", group_name=cfg.group_name, bucket=bucket,
                                        run_prefix=cfg.run_prefix, log_retention=self.log_retention)
        self.fallback: SpotFallback | None = None
        if cfg.market == "spot" and cfg.spot_fallback == "on-demand":
            self.fallback = SpotFallback(
                self, "SpotFallback", group_name=cfg.group_name, launch_template=self.job.launch_template,
                instance_role=self.job.role, log_retention=self.log_retention,
            )
        # Every rule that reacts to the group's launches listens before the group is raised to its first instance
        # (the deadline's clock starts at the launch event; the fallback and the notes act on failed launches).
        for listener in (self.deadline, self.launch_notes, self.fallback):
            if listener is not None:
                self.job.start.node.add_dependency(listener)
        self._grant(cfg)
        instance_outputs(self, group=self.job, deadline=self.deadline)

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
