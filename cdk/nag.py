"""Nag: the cdk-nag AwsSolutions findings this design accepts, each with the reason a reviewer would accept."""
from __future__ import annotations

from aws_cdk import Acknowledgment, Validations

from .stack import EmbeddingRunStack


def _ack(scope, rule: str, reason: str) -> None:
    Validations.of(scope).acknowledge(Acknowledgment(id=f"AwsSolutions::{rule}", reason=reason))


def acknowledge_findings(stack: EmbeddingRunStack) -> None:
    """Acknowledge, finding by finding, on the construct that raises it (never stack-wide)."""
    cfg = stack.config
    role = stack.job.role
    policy = role.node.find_child("DefaultPolicy")
    bucket_id = stack.get_logical_id(stack.storage.artifacts.node.default_child)

    _ack(
        role,
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
        "AWS's managed policy for the SSM agent is the supported way to allow Session Manager (the only way in: "
        "the instance has no inbound rules and no SSH key); AWS keeps it current with the agent's needs.",
    )
    _ack(
        policy,
        f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{cfg.run_prefix}*]",
        f"The wildcard is the run's own prefix {cfg.run_prefix}: the job writes many objects under it (parquet "
        "shards, index, manifest) whose names are not known at deploy time; nothing outside the prefix is writable.",
    )
    for bucket in cfg.source_buckets:
        _ack(
            policy,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{bucket}/*]",
            f"Read-only (s3:GetObject) on the job's source bucket {bucket}: the inputs are every archive or image "
            "under the configured sources, whose object names are not known at deploy time.",
        )
    if cfg.ecr_repository:
        _ack(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken does not support resource-level permissions; the pull actions themselves "
            "are scoped to the one configured repository.",
        )
    _ack(
        stack.job.instance,
        "AwsSolutions-EC29",
        "The instance is a one-shot batch worker that powers itself off when the job ends (terminating by default); "
        "termination protection would only make cdk destroy fail, and it does not stop an OS shutdown anyway.",
    )

