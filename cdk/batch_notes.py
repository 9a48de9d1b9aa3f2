"""Batch notes (``engine=batch``): why AWS Batch ended one of the run's jobs FAILED, written next to the run.

A job that never started (cancelled after waiting in RUNNABLE, a merge whose shards failed) or that Batch stopped
(a timed-out attempt, a host lost on the last attempt, an image it could not pull) writes no ``_STATUS`` of its own,
so ``job status`` could not say why. An EventBridge rule on the queue's ``Batch Job State Change`` events with status
FAILED starts a one-step state machine that puts ``runs/<run-id>/_batch/shard-<I>.json`` (an array child, or the one
job when N = 1) or ``_batch/merge.json``: the job's id, name, status and ``statusReason``. The array parent's own
FAILED event is left out (its children say why). ``job/status/view.py`` reads them.
"""
from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_batch as batch
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from . import constants as C

JOB_STATE_CHANGE = "Batch Job State Change"


def note_key_jsonata(run_prefix: str) -> str:
    """The note's key, from the event: ``<run_prefix>_batch/merge.json`` or ``…/shard-<array index or 0>.json``."""
    d = "$states.input.detail"
    return (f"{{% '{run_prefix}{C.BATCH_NOTES_DIR}/' & ($substring({d}.jobName, -6) = '-merge' ? 'merge' : "
            f"'shard-' & $string($exists({d}.arrayProperties.index) ? {d}.arrayProperties.index : 0)) & '.json' %}}")


NOTE_BODY_JSONATA = ("{% $string({'jobId': $states.input.detail.jobId, 'jobName': $states.input.detail.jobName, "
                     "'status': $states.input.detail.status, 'statusReason': $states.input.detail.statusReason, "
                     "'at': $states.input.time}) %}")


def failed_pattern(queue_arn: str) -> dict:
    """The rule's pattern: a job of this queue ended FAILED, not an array parent (whose children carry the reason)."""
    return {
        "source": ["aws.batch"],
        "detail-type": [JOB_STATE_CHANGE],
        "detail": {"jobQueue": [queue_arn], "status": ["FAILED"], "arrayProperties": {"size": [{"exists": False}]}},
    }


class BatchNotes(Construct):
    """Rule + state machine that record a FAILED job's reason under the run prefix."""

    def __init__(
        self, scope: Construct, construct_id: str, *, queue: batch.IJobQueue, bucket: s3.IBucket, run_prefix: str,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.notes_arn = bucket.arn_for_objects(f"{run_prefix}{C.BATCH_NOTES_DIR}/*")
        put = tasks.CallAwsService.jsonata(
            self,
            "WriteNote",
            service="s3",
            action="putObject",
            parameters={
                "Bucket": bucket.bucket_name,
                "Key": note_key_jsonata(run_prefix),
                "Body": NOTE_BODY_JSONATA,
                "ContentType": "application/json",
            },
            iam_resources=[self.notes_arn],
            iam_action="s3:PutObject",
        )
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(put),
            query_language=sfn.QueryLanguage.JSONATA,
            comment="vit-embed: a Batch job of the run ended FAILED, record why next to the run",
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
        )
        pattern = failed_pattern(queue.job_queue_arn)
        self.rule = events.Rule(
            self,
            "JobFailed",
            description="vit-embed: a job of the run's queue ended FAILED",
            event_pattern=events.EventPattern(source=pattern["source"], detail_type=pattern["detail-type"],
                                              detail=pattern["detail"]),
            targets=[targets.SfnStateMachine(self.state_machine)],
        )
