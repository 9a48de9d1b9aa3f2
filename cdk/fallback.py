"""Spot fallback: when the group cannot launch a spot instance, switch it to on-demand (``spot_fallback=on-demand``).

An Auto Scaling group keeps retrying spot forever when there is no spot capacity; it has no built-in fallback. Here an
EventBridge rule matches the group's ``EC2 Instance Launch Unsuccessful`` event and starts a one-step Step Functions
state machine that calls ``UpdateAutoScalingGroup`` with 100 % on-demand (same types, same order). The switch is one
way: the rest of the run stays on-demand. No Lambda, no code: the state machine calls the API itself.
"""
from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from .compute import group_arn

LAUNCH_UNSUCCESSFUL = "EC2 Instance Launch Unsuccessful"


class SpotFallback(Construct):
    """Rule + state machine that set ``OnDemandPercentageAboveBaseCapacity`` to 100 on the named group."""

    def __init__(self, scope: Construct, construct_id: str, *, group_name: str, log_retention: logs.RetentionDays) -> None:
        super().__init__(scope, construct_id)
        switch = tasks.CallAwsService(
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
        )
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(switch),
            comment="vit-embed: spot could not launch, switch the run's group to on-demand",
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
        )
        self.rule = events.Rule(
            self,
            "LaunchUnsuccessful",
            description=f"vit-embed: {group_name} could not launch spot capacity",
            event_pattern=events.EventPattern(
                source=["aws.autoscaling"],
                detail_type=[LAUNCH_UNSUCCESSFUL],
                detail={"AutoScalingGroupName": [group_name]},
            ),
            targets=[targets.SfnStateMachine(self.state_machine)],
        )
