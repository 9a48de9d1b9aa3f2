"""Deadline: a one-time EventBridge Scheduler schedule that sets the run's Auto Scaling group to 0 at max_run_hours +
a margin, whatever happens inside the instance (cloud-init never ran, the kernel hung, the script was killed)."""
from __future__ import annotations

import datetime as _dt
import json

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from constructs import Construct

from .compute import group_arn

# EventBridge Scheduler's universal target: it calls the AWS API action itself (no Lambda in between).
UPDATE_GROUP_ACTION = "aws-sdk:autoscaling:updateAutoScalingGroup"
RETRY_ATTEMPTS = 185  # Scheduler's maximum: a throttled or failed call keeps being retried ...
MAX_EVENT_AGE_S = 86_400  # ... for up to a day


def at_expression(when: _dt.datetime) -> str:
    """``at(yyyy-mm-ddThh:mm:ss)`` in UTC, the form EventBridge Scheduler takes for one-time schedules."""
    return f"at({when.astimezone(_dt.timezone.utc):%Y-%m-%dT%H:%M:%S})"


class Deadline(Construct):
    """Sets min = max = desired = 0 on the named group at ``when`` (UTC): AWS then terminates the instance.

    The schedule's role may call exactly one action on exactly that group, and only EventBridge Scheduler in this
    account may assume it. Time comes from synth (``cdk deploy`` synthesizes right before it deploys), plus a margin
    for the deploy. Deploying an old cloud assembly whose deadline has passed is an error to avoid: public reports
    say the Scheduler API rejects an ``at()`` time in the past (the deploy then fails and rolls back), which this
    project has not verified against AWS.
    """

    def __init__(self, scope: Construct, construct_id: str, *, group_name: str, when: _dt.datetime) -> None:
        super().__init__(scope, construct_id)
        self.when = when
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
            ),
            description="vit-embed deadline: set the run's Auto Scaling group to 0",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(sid="ZeroOwnGroup", actions=["autoscaling:UpdateAutoScalingGroup"], resources=[group_arn(group_name)])
        )
        self.schedule = scheduler.CfnSchedule(
            self,
            "Schedule",
            description=f"vit-embed: max_run_hours + margin reached, set {group_name} to 0",
            schedule_expression=at_expression(when),
            schedule_expression_timezone="UTC",
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            state="ENABLED",
            target=scheduler.CfnSchedule.TargetProperty(
                arn=f"arn:{Aws.PARTITION}:scheduler:::{UPDATE_GROUP_ACTION}",
                role_arn=self.role.role_arn,
                input=json.dumps({"AutoScalingGroupName": group_name, "MinSize": 0, "MaxSize": 0, "DesiredCapacity": 0}),
                retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                    maximum_retry_attempts=RETRY_ATTEMPTS, maximum_event_age_in_seconds=MAX_EVENT_AGE_S
                ),
            ),
        )
        # The role (and its policy) must exist before the schedule can be created with it.
        self.schedule.node.add_dependency(self.role)
