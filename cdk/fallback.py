"""Spot fallback: when the group cannot launch a spot instance for want of capacity or quota, switch it to on-demand
(``spot_fallback=on-demand``).

An Auto Scaling group keeps retrying spot forever when there is no spot capacity; it has no built-in fallback. Here an
EventBridge rule matches the group's ``EC2 Instance Launch Unsuccessful`` events whose status message says "no spot
capacity" or "no spot quota" (``C.SPOT_CAPACITY_MESSAGES``) and starts a one-step Step Functions state machine that
calls ``UpdateAutoScalingGroup`` with 100 % on-demand (same types, same order). Other failures emit the same event
(an AZ that does not offer the type, a bad AMI, an IAM error) and are left alone: on-demand would not fix them, and the
group tries another AZ itself. The switch is one way: the rest of the run stays on-demand. No Lambda, no code.
"""
from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from . import constants as C
from .compute import group_arn
from .launch_notes import LAUNCH_UNSUCCESSFUL
from .reaction import Reaction


def capacity_pattern(group_name: str) -> dict:
    """The rule's event pattern: the group's failed launches for want of spot capacity or quota, nothing else."""
    return {
        "source": ["aws.autoscaling"],
        "detail-type": [LAUNCH_UNSUCCESSFUL],
        "detail": {
            "AutoScalingGroupName": [group_name],
            "StatusMessage": [{"wildcard": message} for message in C.SPOT_CAPACITY_MESSAGES],
        },
    }


class SpotFallback(Construct):
    """Rule + state machine that set ``OnDemandPercentageAboveBaseCapacity`` to 100 on the named group."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        group_name: str,
        launch_template: ec2.LaunchTemplate,
        instance_role: iam.IRole,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        template_arn = (f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID}:launch-template/"
                        f"{launch_template.launch_template_id}")
        switch = tasks.CallAwsService.jsonata(
            self,
            "SwitchToOnDemand",
            service="autoscaling",
            action="updateAutoScalingGroup",
            parameters={
                "AutoScalingGroupName": group_name,
                # Only the distribution: the launch template and the instance types stay as they are.
                "MixedInstancesPolicy": {
                    "InstancesDistribution": {
                        "OnDemandBaseCapacity": 0,
                        "OnDemandPercentageAboveBaseCapacity": 100,
                        "OnDemandAllocationStrategy": "prioritized",
                    }
                },
            },
            iam_resources=[group_arn(group_name)],
            iam_action="autoscaling:UpdateAutoScalingGroup",
            # Auto Scaling checks that whoever updates a group that launches from a launch template may launch from
            # it: ec2:RunInstances with that template, iam:PassRole of its instance profile's role, ec2:CreateTags of
            # its tag specifications ("Control Amazon EC2 launch template usage in Auto Scaling groups", AWS guide).
            additional_iam_statements=[
                iam.PolicyStatement(
                    sid="LaunchFromTheRunsTemplate",
                    actions=["ec2:RunInstances"],
                    resources=["*"],
                    conditions={"ArnLike": {"ec2:LaunchTemplate": template_arn}},
                ),
                iam.PolicyStatement(
                    sid="TagWhatItLaunches",
                    actions=["ec2:CreateTags"],
                    resources=["*"],
                    conditions={"StringEquals": {"ec2:CreateAction": "RunInstances"}},
                ),
                iam.PolicyStatement(
                    sid="PassTheInstanceRole",
                    actions=["iam:PassRole"],
                    resources=[instance_role.role_arn],
                    conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
                ),
            ],
        )
        self.reaction = Reaction(self, "LaunchUnsuccessful", definition=switch, event_pattern=capacity_pattern(group_name),
                                 comment="vit-embed: spot could not launch (no capacity or quota), switch the run's group to on-demand",
                                 rule_description=f"vit-embed: {group_name} could not launch spot capacity", log_retention=log_retention)
        self.state_machine, self.rule = self.reaction.state_machine, self.reaction.rule
