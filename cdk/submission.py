"""Submission (``engine=batch``): the run's jobs are submitted when the stack deploys, by a custom resource whose
handler (``cdk/functions/submit_run/index.py``, a real file shipped as an asset) submits at most once per run id."""
from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

from aws_cdk import Aws, CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_batch as batch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

HANDLER_DIR = Path(__file__).resolve().parent / "functions" / "submit_run"
RESOURCE_TYPE = "Custom::BatchRun"
HANDLER_TIMEOUT = Duration.minutes(2)
# How long CloudFormation waits for the handler's answer (ServiceTimeout; without it an hour): the handler's own
# timeout and a margin. A handler that died without answering fails the deploy after this, not after an hour.
SERVICE_TIMEOUT = Duration.minutes(5)


class Submission(Construct):
    """Submits the run: the array of N shards (one job when N = 1), then the merge, which depends on it, so Batch starts
    the merge once every child succeeded and fails it if one fails for good.

    Why not CDK's ``AwsCustomResource`` (two ``SubmitJob`` calls): CloudFormation calls a custom resource again when a
    stack update fails and rolls back, with the previous properties, and a plain SubmitJob then submits the previous
    run a second time. Here the handler asks the queue first and reuses the run's live jobs; the resource's logical id
    holds the run id, so deploying another run creates a new resource (and deletes this one: its unfinished jobs are
    terminated) rather than updating it. Every deploy of the same run calls Update (``DeployedAt``): a run whose jobs
    failed is submitted again and resumes from S3; a live one is left alone.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        queue: batch.IJobQueue,
        shard_job: batch.IJobDefinition,
        merge_job: batch.IJobDefinition,
        shards: int,
        job_name: str,
        run_id: str,
        deployed_at: _dt.datetime,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="vit-embed: submit this run's Batch jobs once, terminate them when the run's stack goes",
        )
        self.role.add_to_policy(iam.PolicyStatement(
            sid="WriteOwnLogs", actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[self.log_group.log_group_arn]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="SubmitThisRun", actions=["batch:SubmitJob"],
            resources=[queue.job_queue_arn, shard_job.job_definition_arn, merge_job.job_definition_arn]))
        # ListJobs has no resource-level permissions; TerminateJob names a job by its id, known only once submitted.
        self.role.add_to_policy(iam.PolicyStatement(sid="FindThisRunsJobs", actions=["batch:ListJobs"], resources=["*"]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="TerminateThisRun", actions=["batch:TerminateJob"],
            resources=[f"arn:{Aws.PARTITION}:batch:{Aws.REGION}:{Aws.ACCOUNT_ID}:job/*"]))
        self.function = lambda_.Function(
            self,
            "Handler",
            runtime=lambda_.Runtime.PYTHON_3_14,  # the newest Lambda Python (cdk-nag L1)
            handler="index.lambda_handler",
            code=lambda_.Code.from_asset(str(HANDLER_DIR), exclude=["__pycache__", "*.pyc"]),
            role=self.role,
            timeout=HANDLER_TIMEOUT,
            log_group=self.log_group,
            description="vit-embed: submit a run's Batch jobs at most once per run id (Custom::BatchRun)",
        )
        run_key = hashlib.sha1(run_id.encode()).hexdigest()[:10]
        self.resource = CustomResource(
            self,
            f"Run{run_key}",  # a new run id is a new resource, never an update of this one
            service_token=self.function.function_arn,
            resource_type=RESOURCE_TYPE,
            service_timeout=SERVICE_TIMEOUT,
            properties={
                "JobName": job_name,
                "JobQueue": queue.job_queue_arn,
                "ShardJobDefinition": shard_job.job_definition_arn,
                "MergeJobDefinition": merge_job.job_definition_arn,
                "Shards": str(shards),
                "DeployedAt": f"{deployed_at:%Y-%m-%dT%H:%M:%SZ}",  # every deploy asks the handler again (idempotent)
            },
        )
        self.resource.node.add_dependency(self.role)

    @property
    def shards_job_id(self) -> str:
        return self.resource.get_att_string("ShardsJobId")

    @property
    def merge_job_id(self) -> str:
        return self.resource.get_att_string("MergeJobId")
