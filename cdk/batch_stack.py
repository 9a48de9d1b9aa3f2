"""Batch stack (``-c engine=batch -c shards=N``): the same network, buckets, log group and job image as the instance
engine's stack, then AWS Batch (cdk/batch.py) instead of the Auto Scaling group: N shards as an array job, the
merge after them, submitted on deploy; the grants, and how to follow the run."""
from __future__ import annotations

from aws_cdk import Annotations, Aws, CfnResource
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from constructs import Construct

from . import constants as C
from .batch import BatchCompute
from .batch_notes import BatchNotes
from .checkov import skip
from .config import RunConfig
from .outputs import batch_outputs
from .run_stack import RunStackBase
from .submission import Submission

# The Lambda that submits the jobs (cdk/submission.py): checkov's Lambda checks, justified.
SUBMIT_FUNCTION_CHECKS = {
    "CKV_AWS_115": "The run's submission handler (Custom::BatchRun): CloudFormation calls it once per deploy and once on "
    "delete, so a reserved-concurrency limit guards nothing.",
    "CKV_AWS_116": "The run's submission handler: CloudFormation invokes it synchronously and receives its failure as a "
    "failed resource (the deploy rolls back); a dead-letter queue would hold events nobody replays.",
    "CKV_AWS_117": "The run's submission handler: it calls only the Batch API, so it needs no VPC; putting it in one "
    "would need a NAT gateway or interface endpoints for a function that runs seconds per deploy.",
}
_RW = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
MANY_ARCHIVES_WARNING = "vit-embed:shards-above-archives"


def shard_spec(shards: int) -> str:
    """``--shard`` of every child: the index from Batch's environment (an array of one is not an array)."""
    return f"${C.ARRAY_INDEX_VAR}/{shards}" if shards > 1 else "0/1"


def shard_command(cfg: RunConfig, run_uri: str, cache_uri: str) -> list[str]:
    """What each child runs after the image's ``python -m job``: its shard, written straight to S3."""
    assert cfg.shards is not None
    return ["run", "--shard", shard_spec(cfg.shards), *cfg.job_args(), "--out", run_uri, "--weights-cache", cache_uri]


def merge_command(cfg: RunConfig, run_uri: str) -> list[str]:
    """What the merge runs after the image's ``python -m job``: the shards -> one run, its index and UMAP map."""
    return ["merge", "--run", run_uri, "--index-type", cfg.index_type, "--log-level", cfg.log_level]


def archives_message(cfg: RunConfig) -> str | None:
    """The synth warning when N exceeds the dataset's archives (each shard then streams every archive)."""
    if cfg.sources or cfg.shards is None:
        return None
    archives = C.TRAINVAL_PARTS if cfg.dataset == "trainval" else 1
    if cfg.shards <= archives:
        return None
    return (f"shards={cfg.shards} > the {archives} archive(s) of dataset={cfg.dataset}: the images are split by a hash of "
            f"their path, so every shard streams all ~{C.DATASET_READ_GB[cfg.dataset]:g} GB and embeds 1/{cfg.shards} of "
            f"them. With shards <= {archives} each shard streams whole archives of its own.")


class BatchRunStack(RunStackBase):
    """One run as N AWS Batch shards and a merge; artifacts land in ``s3://<bucket>/runs/<run-id>/``."""

    def __init__(self, scope: Construct, construct_id: str, *, config: RunConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, config=config, **kwargs)
        cfg = config
        assert cfg.shards is not None
        many = archives_message(cfg)
        if many:
            Annotations.of(self).add_warning_v2(MANY_ARCHIVES_WARNING, many)
        bucket = self.storage.artifacts
        cache_uri = f"s3://{bucket.bucket_name}/{C.WEIGHTS_CACHE_PREFIX}"
        self.compute = BatchCompute(
            self,
            "Batch",
            config=cfg,
            network=self.network,
            image=self._container_image(),
            shard_command=shard_command(cfg, self.run_uri, cache_uri),
            merge_command=merge_command(cfg, self.run_uri),
            environment={"AWS_REGION": cfg.region, "AWS_DEFAULT_REGION": cfg.region},
            log_group=self.log_group,
        )
        self.submission = Submission(
            self,
            "Submit",
            queue=self.compute.queue,
            shard_job=self.compute.shard_job,
            merge_job=self.compute.merge_job,
            shards=cfg.shards,
            job_name=f"{cfg.stack_name}-{cfg.run_id}".replace(".", "-")[:110],
            run_id=cfg.run_id,
            deployed_at=cfg.synth_time,
            log_retention=self.log_retention,
        )
        # Why Batch ended a job FAILED (e.g. cancelled after waiting in RUNNABLE), where job status reads it.
        self.notes = BatchNotes(self, "Notes", queue=self.compute.queue, bucket=bucket, run_prefix=cfg.run_prefix,
                                log_retention=self.log_retention)
        # The rule must listen before the first job can fail.
        self.submission.node.add_dependency(self.notes)
        if self.network.internet_connectivity is not None:  # hosts pull the image and reach S3 from their first boot
            self.compute.compute_environment.node.add_dependency(self.network.internet_connectivity)
        self._grant(cfg)
        batch_outputs(self, queue=self.compute.queue, submission=self.submission)
        handler = self.submission.function.node.default_child
        assert isinstance(handler, CfnResource)
        for check_id, comment in SUBMIT_FUNCTION_CHECKS.items():
            skip(handler, check_id, comment)

    def _container_image(self) -> ecs.ContainerImage:
        """The job image as Batch pulls it: the image CDK built and pushed (asset), or the given URI."""
        if self.image.docker_asset is not None:
            return ecs.ContainerImage.from_docker_image_asset(self.image.docker_asset)  # grants the pull itself
        return ecs.ContainerImage.from_registry(self.image.uri)

    # -- IAM: each container may touch exactly its part of the run ----------------------------------------------------
    def _grant(self, cfg: RunConfig) -> None:
        bucket = self.storage.artifacts
        shard, merge = self.compute.shard_role, self.compute.merge_role
        shard.add_to_policy(
            iam.PolicyStatement(sid="WriteOwnShards", actions=_RW, resources=[bucket.arn_for_objects(f"{cfg.run_prefix}{C.SHARDS_DIR}/*")])
        )
        shard.add_to_policy(
            iam.PolicyStatement(
                sid="SharedWeightsCache",
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[bucket.arn_for_objects(f"{C.WEIGHTS_CACHE_PREFIX}/*")],
            )
        )
        merge.add_to_policy(
            iam.PolicyStatement(sid="WriteOwnRun", actions=_RW, resources=[bucket.arn_for_objects(f"{cfg.run_prefix}*")])
        )
        for role in (shard, merge):
            # Unconditioned: S3 answers a HEAD of a missing key with 404 only to a caller that may list the bucket
            # (a prefix-conditioned grant does not count), and the job probes keys before it writes them.
            role.add_to_policy(iam.PolicyStatement(sid="ListArtifacts", actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))
        source_buckets = [f"arn:{Aws.PARTITION}:s3:::{b}" for b in cfg.source_buckets]
        shard.add_to_policy(
            iam.PolicyStatement(sid="ReadSourceBuckets", actions=["s3:GetObject"], resources=[f"{b}/*" for b in source_buckets])
        )
        shard.add_to_policy(iam.PolicyStatement(sid="ListSourceBuckets", actions=["s3:ListBucket"], resources=source_buckets))
        if self.image.docker_asset is None:  # an ECR URI: the agent pulls it with the execution roles
            for execution_role in self.compute.execution_roles:
                self.image.grant_pull(execution_role)
