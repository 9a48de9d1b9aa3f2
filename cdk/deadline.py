"""Deadline: the run's Auto Scaling group is set to 0 at max_run_hours + a margin after its instance launched,
whatever happens inside the instance (cloud-init never ran, the kernel hung, the script was killed).

The clock starts at the launch, not at synth or deploy: an image build, a wait for capacity, or an old cloud assembly
must not eat the run's time. The group's ``EC2 Instance Launch Successful`` event starts a one-step Step Functions
state machine that creates a one-time EventBridge Scheduler schedule at the event's time + ``minutes`` (JSONata
computes the time) in this stack's schedule group. The schedule calls ``UpdateAutoScalingGroup`` (min = max =
desired = 0) itself, then deletes itself. Only the run's first launch arms it: a replacement instance (spot reclaim,
failed health check) finds the schedule there (ConflictException) and leaves it, so the total stays bounded whatever
the loop. Once armed, it deletes the group's other schedules: those of earlier runs of this stack, whose groups a
new-run deploy deleted (left alone, each would call a group that is gone, retried for a day). Deleting the stack
deletes the schedule group and with it a schedule still pending.
"""
from __future__ import annotations

import hashlib
import json

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from .compute import group_arn
from .reaction import Reaction

# EventBridge Scheduler's universal target: it calls the AWS API action itself (no Lambda in between).
UPDATE_GROUP_ACTION = "aws-sdk:autoscaling:updateAutoScalingGroup"
RETRY_ATTEMPTS = 185  # Scheduler's maximum: a throttled or failed call keeps being retried ...
MAX_EVENT_AGE_S = 86_400  # ... for up to a day
LAUNCH_SUCCESSFUL = "EC2 Instance Launch Successful"
# at(yyyy-mm-ddThh:mm:ss) in UTC, the event's time + the deadline (JSONata 2.0.6, as Step Functions runs it).
AT_PICTURE = "[Y0001]-[M01]-[D01]T[H01]:[m01]:[s01]"


def at_jsonata(minutes: int) -> str:
    """The JSONata expression (in Step Functions' ``{% %}``) for the schedule: the launch event's time + ``minutes``."""
    return f"{{% 'at(' & $fromMillis($toMillis($states.input.time) + {minutes * 60_000}, '{AT_PICTURE}') & ')' %}}"


def older_schedules_jsonata(name: str) -> str:
    """From a ListSchedules result, the names of the group's schedules other than ``name`` (always a list)."""
    return f"{{% [$states.result.Schedules[Name != '{name}'].Name] %}}"


def schedule_name(run_id: str) -> str:
    """The run's schedule (Scheduler names: at most 64 of ``[0-9a-zA-Z-_.]``); one per run id in the stack's group."""
    name = f"deadline-{run_id}"
    return name if len(name) <= 64 else f"{name[:55]}-{hashlib.sha1(run_id.encode()).hexdigest()[:8]}"


def launched_pattern(group_name: str) -> dict:
    """The rule's event pattern: the named group launched an instance."""
    return {"source": ["aws.autoscaling"], "detail-type": [LAUNCH_SUCCESSFUL], "detail": {"AutoScalingGroupName": [group_name]}}


class Deadline(Construct):
    """Sets min = max = desired = 0 on the named group ``minutes`` after the run's first instance launched.

    The schedule's role may call exactly one action on exactly that group, and only EventBridge Scheduler in this
    account may assume it; the state machine may create that one schedule and pass that one role.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, group_name: str, run_id: str, minutes: int,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.minutes = minutes
        self.schedule_name = schedule_name(run_id)
        self.schedule_group = scheduler.CfnScheduleGroup(self, "Group")
        group = self.schedule_group.ref  # the group's name
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
        schedule_arn = f"arn:{Aws.PARTITION}:scheduler:{Aws.REGION}:{Aws.ACCOUNT_ID}:schedule/{group}/{self.schedule_name}"
        arm = tasks.CallAwsService.jsonata(
            self,
            "ArmDeadline",
            service="scheduler",
            action="createSchedule",
            parameters={
                "Name": self.schedule_name,
                "GroupName": group,
                "Description": f"vit-embed: max_run_hours + margin after {group_name} launched, set it to 0",
                "ScheduleExpression": at_jsonata(minutes),
                "ScheduleExpressionTimezone": "UTC",
                "FlexibleTimeWindow": {"Mode": "OFF"},
                "ActionAfterCompletion": "DELETE",
                "Target": {
                    "Arn": f"arn:{Aws.PARTITION}:scheduler:::{UPDATE_GROUP_ACTION}",
                    "RoleArn": self.role.role_arn,
                    "Input": json.dumps({"AutoScalingGroupName": group_name, "MinSize": 0, "MaxSize": 0, "DesiredCapacity": 0}),
                    "RetryPolicy": {"MaximumRetryAttempts": RETRY_ATTEMPTS, "MaximumEventAgeInSeconds": MAX_EVENT_AGE_S},
                },
            },
            iam_resources=[schedule_arn],
            iam_action="scheduler:CreateSchedule",
            additional_iam_statements=[
                iam.PolicyStatement(
                    sid="PassTheDeadlineRole",
                    actions=["iam:PassRole"],
                    resources=[self.role.role_arn],
                    conditions={"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
                )
            ],
        )
        # A later launch of the same run (a replacement) finds the first launch's schedule: the clock is not reset.
        arm.add_catch(sfn.Succeed(self, "AlreadyArmed"), errors=["Scheduler.ConflictException"])
        schedules = f"arn:{Aws.PARTITION}:scheduler:{Aws.REGION}:{Aws.ACCOUNT_ID}:schedule/{group}/*"
        listed = tasks.CallAwsService.jsonata(
            self,
            "ListDeadlines",
            service="scheduler",
            action="listSchedules",
            parameters={"GroupName": group, "MaxResults": 100},
            iam_resources=["*"],  # ListSchedules has no resource-level permissions
            iam_action="scheduler:ListSchedules",
            outputs={"older": older_schedules_jsonata(self.schedule_name)},
        )
        delete = tasks.CallAwsService.jsonata(
            self,
            "DeleteOlder",
            service="scheduler",
            action="deleteSchedule",
            parameters={"Name": "{% $states.input %}", "GroupName": group},
            iam_resources=[schedules],
            iam_action="scheduler:DeleteSchedule",
        )
        delete.add_catch(sfn.Succeed(self, "AlreadyGone"), errors=["Scheduler.ResourceNotFoundException"])
        older = sfn.Map.jsonata(self, "RemoveOlderDeadlines", items=sfn.ProvideItems.jsonata("{% $states.input.older %}"))
        older.item_processor(delete)
        self.reaction = Reaction(self, "LaunchSuccessful", definition=arm.next(listed).next(older),
                                 comment="vit-embed: the run's instance launched, arm the deadline that sets its group to 0",
                                 event_pattern=launched_pattern(group_name), log_retention=log_retention,
                                 rule_description=f"vit-embed: {group_name} launched an instance, start its deadline")
        self.state_machine, self.rule = self.reaction.state_machine, self.reaction.rule

    def show_command(self, region: str) -> str:
        """The CLI call that prints when the armed deadline fires (nothing is armed before the first launch)."""
        return (f"aws scheduler get-schedule --group-name {self.schedule_group.ref} --name {self.schedule_name} "
                f"--region {region} --query ScheduleExpression --output text")

    def disarm_command(self, region: str) -> str:
        """The CLI call that removes an armed deadline, so that the next launch starts a fresh one (a resume)."""
        return (f"aws scheduler delete-schedule --group-name {self.schedule_group.ref} --name {self.schedule_name} "
                f"--region {region}")
