"""Launch notes (``engine=instance``): why the run's group could not launch its instance, written next to the run.

The stack no longer waits for a GPU (``compute.py``: the group is created empty and raised to one instance after), so
a launch that fails — no capacity for any allowed type in any AZ, a G/VT vCPU quota of 0 on a new account, an AZ that
does not offer the type — is not a rollback any more: Auto Scaling keeps retrying, and no instance exists to write
``_STATUS``. An EventBridge rule on the group's ``EC2 Instance Launch Unsuccessful`` events (every failed launch emits
one, with AWS's ``StatusMessage``) starts a one-step state machine that puts ``runs/<run-id>/_launch.json``: the
failure's time, message, cause and AZ, the latest one winning. ``job status`` reads it (``job/status_view.py``): a run
without ``_STATUS`` yet, or whose last attempt ended before it, shows as waiting for capacity, with AWS's words.
"""
from __future__ import annotations

from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from . import constants as C
from .reaction import Reaction, put_note

LAUNCH_UNSUCCESSFUL = "EC2 Instance Launch Unsuccessful"

NOTE_BODY_JSONATA = (
    "{% $string({'at': $states.input.time, 'group': $states.input.detail.AutoScalingGroupName, "
    "'message': $states.input.detail.StatusMessage, 'cause': $states.input.detail.Cause, "
    "'az': $states.input.detail.Details.'Availability Zone'}) %}"
)


def unsuccessful_pattern(group_name: str) -> dict:
    """The rule's event pattern: every failed launch of the named group, whatever its reason."""
    return {"source": ["aws.autoscaling"], "detail-type": [LAUNCH_UNSUCCESSFUL],
            "detail": {"AutoScalingGroupName": [group_name]}}


class LaunchNotes(Construct):
    """Rule + state machine that record the group's latest failed launch as ``<run_prefix>_launch.json``."""

    def __init__(
        self, scope: Construct, construct_id: str, *, group_name: str, bucket: s3.IBucket, run_prefix: str,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.note_key = f"{run_prefix}{C.LAUNCH_NOTE}"
        self.note_arn = bucket.arn_for_objects(self.note_key)
        put = put_note(self, bucket=bucket, key=self.note_key, body=NOTE_BODY_JSONATA, resource_arn=self.note_arn)
        self.reaction = Reaction(self, "LaunchUnsuccessful", definition=put, event_pattern=unsuccessful_pattern(group_name),
                                 comment="vit-embed: the run's group could not launch its instance, record why next to the run",
                                 rule_description=f"vit-embed: {group_name} could not launch an instance", log_retention=log_retention)
        self.state_machine, self.rule = self.reaction.state_machine, self.reaction.rule
