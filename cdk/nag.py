"""Nag: the cdk-nag AwsSolutions findings this design accepts, each with the reason a reviewer would accept."""
from __future__ import annotations

from aws_cdk import Acknowledgment, CfnElement, Validations

from .stack import EmbeddingRunStack

_GROUP_ARN = "Resource::arn:<AWS::Partition>:autoscaling:<AWS::Region>:<AWS::AccountId>:autoScalingGroup:*:autoScalingGroupName/{name}"
_GROUP_REASON = (
    "The wildcard is the UUID AWS assigns inside an Auto Scaling group's ARN, unknown until the group exists; the "
    "group name {name} (unique to this run) pins the one group, and the action is only UpdateAutoScalingGroup."
)


def _ack(scope, rule: str, reason: str) -> None:
    Validations.of(scope).acknowledge(Acknowledgment(id=f"AwsSolutions::{rule}", reason=reason))


def acknowledge_findings(stack: EmbeddingRunStack) -> None:
    """Acknowledge, finding by finding, on the construct that raises it (never stack-wide)."""
    cfg = stack.config
    role = stack.job.role
    policy = role.node.find_child("DefaultPolicy")
    artifacts = stack.storage.artifacts.node.default_child
    assert isinstance(artifacts, CfnElement)
    bucket_id = stack.get_logical_id(artifacts)
    group_rule = "AwsSolutions-IAM5[" + _GROUP_ARN.format(name=cfg.group_name) + "]"
    group_reason = _GROUP_REASON.format(name=cfg.group_name)

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
    _ack(policy, group_rule, group_reason)
    if stack.image.repository_arn:
        _ack(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken does not support resource-level permissions; the pull actions themselves "
            "are scoped to the one repository the job image lives in.",
        )
    _ack(stack.deadline.role.node.find_child("DefaultPolicy"), group_rule, group_reason)
    _ack(
        stack.job.group,
        "AwsSolutions-EC26",
        "cdk-nag 3.0.2's EBS-encryption rule throws on a group that uses a MixedInstancesPolicy (it reads only the "
        "group's top-level LaunchTemplate). The launch template's one volume is an encrypted gp3 root, asserted by "
        "tests/test_cdk_stack.py::test_launch_template_defaults; checkov's EBS checks pass on the same template.",
    )
    _ack(
        stack.job.group,
        "AwsSolutions-AS3",
        "The group exists for one run of at most one instance: its launches and terminations are the run itself, "
        "reported in _STATUS and the job log; a notification topic nobody subscribes to would add a resource, not "
        "oversight. Launch failures are EventBridge events (the spot fallback listens to them).",
    )
    if stack.fallback is not None:
        _ack(
            stack.fallback.state_machine.role.node.find_child("DefaultPolicy"),
            group_rule,
            group_reason,
        )
        _ack(
            stack.fallback.state_machine.role.node.find_child("DefaultPolicy"),
            "AwsSolutions-IAM5[Resource::*]",
            "CDK's standard grants for Step Functions logging to CloudWatch Logs and X-Ray tracing: the log-delivery "
            "and X-Ray APIs (logs:CreateLogDelivery, xray:PutTraceSegments, ...) have no resource-level permissions.",
        )
