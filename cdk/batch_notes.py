"""Batch notes (``engine=batch``): why AWS Batch ended one of the run's jobs FAILED, written next to the run.

A job that never started (cancelled after waiting in RUNNABLE, a merge whose shards failed) or that Batch stopped
(a timed-out attempt, a host lost on the last attempt, an image it could not pull) writes no ``_STATUS`` of its own,
so ``job status`` could not say why. An EventBridge rule on the queue's ``Batch Job State Change`` events with status
FAILED starts a one-step state machine that puts ``runs/<run-id>/_batch/shard-<I>.json`` (an array child, or the one
job when N = 1) or ``_batch/merge.json``: the job's id, name, status and ``statusReason``. The array parent's own
FAILED event is left out (its children say why). ``job/status/view.py`` reads them.
"""
from __future__ import annotations

from aws_cdk import aws_batch as batch
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from . import constants as C
from .reaction import Reaction, put_note

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
        put = put_note(self, bucket=bucket, key=note_key_jsonata(run_prefix), body=NOTE_BODY_JSONATA,
                       resource_arn=self.notes_arn)
        self.reaction = Reaction(self, "JobFailed", definition=put, event_pattern=failed_pattern(queue.job_queue_arn),
                                 comment="vit-embed: a Batch job of the run ended FAILED, record why next to the run",
                                 rule_description="vit-embed: a job of the run's queue ended FAILED", log_retention=log_retention)
        self.state_machine, self.rule = self.reaction.state_machine, self.reaction.rule
