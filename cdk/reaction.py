"""Reaction: an EventBridge rule that starts a small Step Functions state machine (JSONata, logged, traced).

The stack reacts to AWS's events without a line of Lambda: the deadline (``deadline.py``: the group launched, arm the
schedule), the spot fallback (``fallback.py``: no spot capacity, switch to on-demand), the launch notes
(``launch_notes.py``: a launch failed, say so next to the run) and the Batch notes (``batch_notes.py``: a job ended
FAILED, say why). Each builds its task states in its own scope and hands the chain to this construct, which adds
the one logging, tracing and query-language setup they all share.
"""
from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct


def put_note(scope: Construct, *, bucket: s3.IBucket, key: str, body: str, resource_arn: str) -> tasks.CallAwsService:
    """The task state that puts a JSON note next to the run (``key`` and ``body``: JSONata or plain), allowed to
    ``s3:PutObject`` on ``resource_arn`` only: no read, no delete, nothing else of the bucket."""
    return tasks.CallAwsService.jsonata(
        scope, "WriteNote", service="s3", action="putObject", iam_resources=[resource_arn], iam_action="s3:PutObject",
        parameters={"Bucket": bucket.bucket_name, "Key": key, "Body": body, "ContentType": "application/json"},
    )


class Reaction(Construct):
    """``rule`` (the events that start it) → ``state_machine`` (``definition``, in JSONata), logging every execution
    with its data to ``log_group`` (the stack's retention, deleted with the stack) and tracing it with X-Ray."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        definition: sfn.IChainable,
        comment: str,
        event_pattern: dict,
        rule_description: str,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
        logging = sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True)
        self.state_machine = sfn.StateMachine(self, "StateMachine", definition_body=sfn.DefinitionBody.from_chainable(definition),
                                              query_language=sfn.QueryLanguage.JSONATA, comment=comment, logs=logging,
                                              tracing_enabled=True)
        pattern = events.EventPattern(source=event_pattern["source"], detail_type=event_pattern["detail-type"],
                                      detail=event_pattern["detail"])
        self.rule = events.Rule(self, "Rule", description=rule_description, event_pattern=pattern,
                                targets=[targets.SfnStateMachine(self.state_machine)])
