"""Nag: the cdk-nag AwsSolutions findings this design accepts, each with the reason a reviewer would accept."""
from __future__ import annotations

from aws_cdk import Acknowledgment, CfnElement, Token, Validations

from . import constants as C
from .batch_stack import BatchRunStack
from .checkov import SDK_CALL_FUNCTION
from .stack import EmbeddingRunStack

_GROUP_ARN = "Resource::arn:<AWS::Partition>:autoscaling:<AWS::Region>:<AWS::AccountId>:autoScalingGroup:*:autoScalingGroupName/{name}"
_GROUP_REASON = (
    "The wildcard is the UUID AWS assigns inside an Auto Scaling group's ARN, unknown until the group exists; the "
    "group name {name} (unique to this run) pins the one group, and the action is only UpdateAutoScalingGroup."
)


_SFN_GRANTS = (
    "CDK's standard grants for Step Functions logging to CloudWatch Logs and X-Ray tracing: the log-delivery "
    "and X-Ray APIs (logs:CreateLogDelivery, xray:PutTraceSegments, ...) have no resource-level permissions."
)


def _ack(scope, rule: str, reason: str) -> None:
    Validations.of(scope).acknowledge(Acknowledgment(id=f"AwsSolutions::{rule}", reason=reason))


def _bucket(stack: EmbeddingRunStack | BatchRunStack) -> str:
    """The artifacts bucket's ARN as cdk-nag prints it: the created bucket's GetAtt, or an existing bucket's ARN."""
    if stack.storage.imported:  # the partition is a literal where the region is known (enablePartitionLiterals)
        partition = "<AWS::Partition>" if Token.is_unresolved(stack.partition) else stack.partition
        return f"arn:{partition}:s3:::{stack.config.artifacts_bucket}"
    artifacts = stack.storage.artifacts.node.default_child
    assert isinstance(artifacts, CfnElement)
    return f"<{stack.get_logical_id(artifacts)}.Arn>"


def acknowledge_findings(stack: EmbeddingRunStack) -> None:
    """Acknowledge, finding by finding, on the construct that raises it (never stack-wide)."""
    cfg = stack.config
    role = stack.job.role
    policy = role.node.find_child("DefaultPolicy")
    bucket = _bucket(stack)
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
        f"AwsSolutions-IAM5[Resource::{bucket}/{cfg.run_prefix}*]",
        f"The wildcard is the run's own prefix {cfg.run_prefix}: the job writes many objects under it (parquet "
        "shards, index, manifest) whose names are not known at deploy time; nothing outside the prefix is writable.",
    )
    _ack(
        policy,
        f"AwsSolutions-IAM5[Resource::{bucket}/{C.WEIGHTS_CACHE_PREFIX}/*]",
        f"The shared weights cache {C.WEIGHTS_CACHE_PREFIX}/<model>/<tag>/<file>: the first run stores the tag's "
        "checkpoint there, later runs read it (fetched once per account); no delete, and nothing else in the bucket.",
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
    deadline_policy = stack.deadline.state_machine.role.node.find_child("DefaultPolicy")
    _ack(deadline_policy, "AwsSolutions-IAM5[Resource::*]", _SFN_GRANTS + " Likewise scheduler:ListSchedules, "
         "which lists the stack's own schedule group only (its GroupName argument) to find the older runs' deadlines.")
    schedule_group = stack.get_logical_id(stack.deadline.schedule_group)
    _ack(
        deadline_policy,
        f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:scheduler:<AWS::Region>:<AWS::AccountId>:schedule/<{schedule_group}>/*]",
        "scheduler:DeleteSchedule within this stack's own schedule group: once the run's deadline is armed, the "
        "deadlines of the stack's earlier runs (named after run ids not known at deploy time) are removed.",
    )
    _ack(stack.launch_notes.state_machine.role.node.find_child("DefaultPolicy"), "AwsSolutions-IAM5[Resource::*]", _SFN_GRANTS)
    _ack(stack.job.start.node.find_child("CustomResourcePolicy"), group_rule,
         group_reason.replace("the action is only UpdateAutoScalingGroup", "the action is only SetDesiredCapacity"))
    _ack(
        stack.job.root_device.node.find_child("CustomResourcePolicy"),
        "AwsSolutions-IAM5[Resource::*]",
        "ec2:DescribeImages has no resource-level permissions; it is read-only, and the deploy calls it once for the one "
        "AMI the ami_ssm_parameter resolves to, to read that AMI's root device name for the launch template.",
    )
    _ack(
        stack.node.find_child(SDK_CALL_FUNCTION).node.find_child("ServiceRole"),
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
        "CDK's AwsCustomResource provider (one Lambda for the stack's deploy-time SDK calls: raise the new group to "
        "one instance, read the AMI's root device): AWS's basic execution policy lets it write its own logs, nothing "
        "more; the calls themselves have their own scoped policies.",
    )
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
            _SFN_GRANTS + " And what Auto Scaling checks before it lets this role change the group's instances "
            "distribution: ec2:RunInstances only with the run's launch template (condition ec2:LaunchTemplate) and "
            "ec2:CreateTags only as part of RunInstances (condition ec2:CreateAction); RunInstances names instance, "
            "volume, network-interface, subnet and image ARNs unknown until launch, so the condition does the scoping.",
        )


def acknowledge_batch_findings(stack: BatchRunStack) -> None:
    """engine=batch: the findings its constructs raise, each on the construct that raises it."""
    cfg = stack.config
    compute, submission = stack.compute, stack.submission
    bucket = _bucket(stack)
    shard_policy = compute.shard_role.node.find_child("DefaultPolicy")
    _ack(
        compute.compute_environment.node.find_child("InstanceProfileRole"),
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role]",
        "The ECS agent on every Batch host needs AWS's managed policy for container instances (register with the ECS "
        "cluster Batch creates and names, poll for tasks, pull images, ship logs); AWS keeps it current with the agent. "
        "No data access: the containers use their own job roles, and IMDS hop limit 1 keeps them off the host's role.",
    )
    _ack(
        shard_policy,
        f"AwsSolutions-IAM5[Resource::{bucket}/{cfg.run_prefix}{C.SHARDS_DIR}/*]",
        f"A shard writes only under {cfg.run_prefix}{C.SHARDS_DIR}/ (its own run folder shards/I/: parquet parts, "
        "_run.json, _STATUS, manifest) whose object names are not known at deploy time; the rest of the run is the merge's.",
    )
    _ack(
        shard_policy,
        f"AwsSolutions-IAM5[Resource::{bucket}/{C.WEIGHTS_CACHE_PREFIX}/*]",
        f"The shared weights cache {C.WEIGHTS_CACHE_PREFIX}/<model>/<tag>/<file>: the first shard stores the tag's "
        "checkpoint there, the others read it (fetched once per account); no delete, and nothing else in the bucket.",
    )
    for source in cfg.source_buckets:
        _ack(
            shard_policy,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{source}/*]",
            f"Read-only (s3:GetObject) on the job's source bucket {source}: the inputs are every archive or image "
            "under the configured sources, whose object names are not known at deploy time.",
        )
    _ack(
        compute.merge_role.node.find_child("DefaultPolicy"),
        f"AwsSolutions-IAM5[Resource::{bucket}/{cfg.run_prefix}*]",
        f"The merge reads every shard under {cfg.run_prefix}{C.SHARDS_DIR}/ and writes the run's own datasets, index, "
        "UMAP map and manifest under the run prefix, whose object names are not known at deploy time.",
    )
    if stack.image.repository_arn:
        for container in (compute.shard_container, compute.merge_container):
            _ack(
                container.execution_role.node.find_child("DefaultPolicy"),
                "AwsSolutions-IAM5[Resource::*]",
                "ecr:GetAuthorizationToken does not support resource-level permissions; the pull actions themselves "
                "are scoped to the one repository the job image lives in.",
            )
    submit_policy = submission.role.node.find_child("DefaultPolicy")
    _ack(
        submit_policy,
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job/*]",
        "batch:TerminateJob, called when the stack is deleted or the run replaced, on the jobs of this run's names: a "
        "job's ARN ends in its id, which exists only after the submission. Submitting is scoped to this run's queue and "
        "job definitions.",
    )
    _ack(
        submit_policy,
        "AwsSolutions-IAM5[Resource::*]",
        "batch:ListJobs has no resource-level permissions; the handler lists this run's queue by the run's job names "
        "so that it never submits a run twice (read-only).",
    )
    notes_policy = stack.notes.state_machine.role.node.find_child("DefaultPolicy")
    _ack(
        notes_policy,
        f"AwsSolutions-IAM5[Resource::{bucket}/{cfg.run_prefix}{C.BATCH_NOTES_DIR}/*]",
        f"The notes of why Batch ended a job of this run FAILED: {cfg.run_prefix}{C.BATCH_NOTES_DIR}/shard-<I>.json and "
        "merge.json, put only (no read, no delete), and nothing else in the bucket.",
    )
    _ack(notes_policy, "AwsSolutions-IAM5[Resource::*]", _SFN_GRANTS)
