"""Stack: composes network, storage and the job instance, does the grants, and prints how to follow the run."""
from __future__ import annotations

from aws_cdk import Aws, CfnOutput, RemovalPolicy, Stack, Tags
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from . import constants as C
from .compute import JobInstance, ecr_repository_arn
from .config import RunConfig
from .network import Network
from .storage import Storage


def _retention(days: int) -> logs.RetentionDays:
    """``RetentionDays`` member for a day count config already validated against LOG_RETENTION_DAYS."""
    names = [m for m in logs.RetentionDays if m is not logs.RetentionDays.INFINITE]
    return dict(zip(C.LOG_RETENTION_DAYS, names))[days]


class EmbeddingRunStack(Stack):
    """One run of ``python -m job run`` on one GPU instance; artifacts land in ``s3://<bucket>/runs/<run-id>/``."""

    def __init__(self, scope: Construct, construct_id: str, *, config: RunConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        cfg = self.config = config
        Tags.of(self).add("project", C.PROJECT_TAG)
        Tags.of(self).add("run-id", cfg.run_id)

        self.network = Network(
            self,
            "Network",
            vpc_id=cfg.vpc_id,
            subnet_id=cfg.subnet_id,
            availability_zone=cfg.availability_zone,
            nat_gateway=cfg.nat_gateway,
        )
        self.storage = Storage(
            self, "Storage", retain=cfg.retain_artifacts, artifact_retention_days=cfg.artifact_retention_days
        )
        bucket = self.storage.artifacts
        self.log_group = logs.LogGroup(
            self,
            "JobLogs",
            log_group_name=f"{C.LOG_GROUP_PREFIX}/{cfg.stack_name}",
            retention=_retention(cfg.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )

        ecr = cfg.ecr_repository
        run_env = {
            "REGION": cfg.region,
            "ARTIFACTS_BUCKET": bucket.bucket_name,
            "RUN_ID": cfg.run_id,
            "RUN_PREFIX": cfg.run_prefix,
            "LOG_GROUP": self.log_group.log_group_name,
            "MAX_RUN_MINUTES": str(cfg.max_run_minutes),
            "MARKET": cfg.market,
            "INSTANCE_TYPE": cfg.instance_type,
            "IMAGE": cfg.image or "",
            "ECR_REGISTRY": f"{ecr[0]}.dkr.ecr.{ecr[1]}.amazonaws.com" if ecr else "",
            "ECR_REGION": ecr[1] if ecr else "",
            "SOURCE_ZIP": C.SOURCE_ZIP_PATH,
            "NUSCENES_BUCKET": C.NUSCENES_BUCKET,
            "NUSCENES_REGION": C.NUSCENES_REGION,
            "NUSCENES_MOUNT": C.NUSCENES_MOUNT,
        }
        self.job = JobInstance(
            self,
            "Job",
            vpc=self.network.vpc,
            subnets=self.network.subnets,
            security_group=self.network.security_group,
            instance_type=cfg.instance_type,
            market=cfg.market,
            shutdown_behavior=cfg.shutdown_behavior,
            root_volume_gb=cfg.root_volume_gb,
            ami_ssm_parameter=cfg.ami_ssm_parameter,
            run_env=run_env,
            job_args=cfg.job_args(),
            max_run_minutes=cfg.max_run_minutes,
            build_image=cfg.image is None,
            region=cfg.region,
        )
        self._grant(cfg, ecr)
        self._outputs(cfg)

    # -- IAM: least privilege for the instance role ------------------------------------------------------------------
    def _grant(self, cfg: RunConfig, ecr: tuple[str, str, str] | None) -> None:
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
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListOwnRunPrefix",
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [cfg.run_prefix, f"{cfg.run_prefix}*"]}},
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
        if ecr:
            role.add_to_policy(iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]))
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="EcrPull",
                    actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                    resources=[ecr_repository_arn(*ecr)],
                )
            )

    # -- outputs: everything a user needs to follow the run ------------------------------------------------------------
    def _outputs(self, cfg: RunConfig) -> None:
        bucket = self.storage.artifacts.bucket_name
        run_uri = f"s3://{bucket}/{cfg.run_prefix}"
        group = self.log_group.log_group_name
        region = cfg.region
        instance_id = self.job.instance_id
        CfnOutput(self, "ArtifactsBucket", value=bucket, description="bucket holding runs/<run-id>/")
        CfnOutput(
            self, "AccessLogBucket", value=self.storage.access_logs.bucket_name,
            description="server access logs of the artifacts bucket (kept by cdk destroy, like the artifacts)",
        )
        CfnOutput(self, "RunPrefix", value=run_uri, description="this run's artifacts (same layout as a local OUTDIR)")
        CfnOutput(self, "LogGroup", value=group, description="CloudWatch Logs group with the job container's log")
        CfnOutput(self, "InstanceId", value=instance_id, description="the job instance (powers itself off when done)")
        CfnOutput(
            self, "StatusCommand", value=f"aws s3 cp {run_uri}{C.STATUS_OBJECT} - --region {region}",
            description="running / succeeded / failed with the reason",
        )
        CfnOutput(
            self, "FollowLogsCommand", value=f"aws logs tail {group} --follow --region {region}",
            description="follow the job log (appears once the image is built and the container starts)",
        )
        CfnOutput(
            self, "SessionCommand", value=f"aws ssm start-session --target {instance_id} --region {region}",
            description="shell on the instance while it runs (bootstrap log: /var/log/vit-embed.log)",
        )
        CfnOutput(
            self, "NotebookCommand", value=f"RUN_URI={run_uri} jupyter lab {C.NOTEBOOK}",
            description="open the UMAP notebook against this run",
        )
