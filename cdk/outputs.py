"""Outputs: what `cdk deploy` prints for a run: where it writes, how to watch it, resume it, and bring it back after
`cdk destroy` (both engines' stacks)."""
from __future__ import annotations

import shlex

from aws_cdk import CfnOutput
from aws_cdk import aws_batch as batch

from . import constants as C
from .compute import JobGroup
from .config import RunConfig
from .deadline import Deadline
from .run_stack import RunStackBase
from .submission import Submission


def redeploy_command(cfg: RunConfig, bucket: str) -> str:
    """The one command that resumes this run after `cdk destroy`: the same run id and options, the kept bucket."""
    options = " ".join(f"-c {k}={shlex.quote(v)}" for k, v in cfg.context)
    return f"npx cdk deploy -c run_id={cfg.run_id} -c artifacts_bucket={bucket}" + (f" {options}" if options else "")


def _shared(stack: RunStackBase) -> None:
    """What both engines print: the bucket(s), whether cdk destroy keeps them, the run, how to bring it back."""
    cfg = stack.config
    bucket = stack.storage.artifacts.bucket_name
    access_logs = stack.storage.access_logs.bucket_name if stack.storage.access_logs is not None else None
    artifacts_kept = cfg.retain_artifacts or stack.storage.imported  # an existing bucket is never this stack's to delete
    on_destroy = "kept by cdk destroy" if artifacts_kept else "deleted by cdk destroy (retain_artifacts=false)"
    CfnOutput(stack, "ArtifactsBucket", value=bucket, description=f"bucket holding runs/<run-id>/ ({on_destroy})")
    kept = ["ArtifactsBucket"] if artifacts_kept else []
    if access_logs is not None:
        CfnOutput(stack, "AccessLogBucket", value=access_logs,
                  description="server access logs of the artifacts bucket (kept by cdk destroy)")
        kept.append("AccessLogBucket")
    # What `make destroy` (cdk/teardown.py) says it keeps: the outputs naming the buckets a destroy leaves behind.
    CfnOutput(stack, "KeptByDestroy", value=",".join(kept) or "-",
              description="the outputs naming the buckets cdk destroy keeps (with their policies)")
    CfnOutput(stack, "RunPrefix", value=stack.run_uri, description="this run's artifacts (same layout as a local OUTDIR)")
    if artifacts_kept:
        CfnOutput(
            stack, "RedeployCommand", value=redeploy_command(cfg, bucket),
            description="after cdk destroy, this one command brings the run back: a new stack on the kept bucket resumes it",
        )
    CfnOutput(stack, "NotebookCommand", value=f"RUN_URI={stack.run_uri} jupyter lab {C.NOTEBOOK}",
              description="open the UMAP notebook against this run")


def instance_outputs(stack: RunStackBase, *, group: JobGroup, deadline: Deadline) -> None:
    """engine=instance: the group, its instance, the deadline, the logs, and how to resume."""
    cfg = stack.config
    run_uri = stack.run_uri
    logs = stack.log_group.log_group_name
    region = cfg.region
    find_instance = (
        f"aws autoscaling describe-auto-scaling-groups --auto-scaling-group-names {cfg.group_name} --region {region} "
        "--query 'AutoScalingGroups[0].Instances[].[InstanceId,InstanceType,AvailabilityZone,LifecycleState]' --output text"
    )
    _shared(stack)
    CfnOutput(stack, "LogGroup", value=logs,
              description="CloudWatch Logs group: streams <run-id>/<instance-id>/bootstrap (the instance script) and /job")
    CfnOutput(stack, "AutoScalingGroup", value=group.group.auto_scaling_group_name,
              description="the run's group of at most one instance (AWS picks the AZ and type; 0 when the run is over)")
    CfnOutput(
        stack, "DeadlineCommand", value=deadline.show_command(region),
        description=f"when the schedule outside the instance sets the group to 0: armed at the first launch, "
                    f"max_run_hours + {C.DEADLINE_MARGIN_MINUTES} min later (UTC)",
    )
    CfnOutput(stack, "InstanceCommand", value=find_instance, description="the instance the group launched: id, type, AZ, state")
    CfnOutput(stack, "StatusCommand", value=f"AWS_REGION={region} python -m job status {run_uri} --watch",
              description="phase, images done/total, images/s, ETA; waiting for capacity (AWS's reason); at the end "
                          "succeeded / failed / interrupted and why")
    CfnOutput(stack, "FollowLogsCommand",
              value=f"aws logs tail {logs} --log-stream-name-prefix {cfg.run_id}/ --follow --region {region}",
              description="follow the instance script's log (within minutes of boot) and the job's")
    CfnOutput(
        stack, "ResumeCommand",
        value=f"{deadline.disarm_command(region)} 2>/dev/null; aws autoscaling update-auto-scaling-group "
              f"--auto-scaling-group-name {cfg.group_name} --min-size 0 --max-size 1 --desired-capacity 1 --region {region}",
        description="start a new instance for this run (its launch arms a fresh deadline): it resumes from the run prefix",
    )
    CfnOutput(
        stack, "SessionCommand",
        value=f"aws ssm start-session --region {region} --target $({find_instance.replace('[InstanceId,InstanceType,AvailabilityZone,LifecycleState]', 'InstanceId')})",
        description="shell on the instance while it runs (bootstrap log: /var/log/vit-embed.log)",
    )


def batch_outputs(stack: RunStackBase, *, queue: batch.IJobQueue, submission: Submission) -> None:
    """engine=batch: the queue, the jobs, the logs."""
    cfg = stack.config
    region = cfg.region
    logs = stack.log_group.log_group_name
    shards_id, merge_id = submission.shards_job_id, submission.merge_job_id
    _shared(stack)
    CfnOutput(stack, "LogGroup", value=logs, description="CloudWatch Logs group with the containers' logs")
    CfnOutput(stack, "JobQueue", value=queue.job_queue_name, description="the run's AWS Batch job queue")
    CfnOutput(stack, "ShardsJobId", value=shards_id, description=f"the array job of {cfg.shards} shard(s)")
    CfnOutput(stack, "MergeJobId", value=merge_id, description="the merge job (starts once every shard succeeded)")
    CfnOutput(stack, "StatusCommand", value=f"python -m job status {stack.run_uri} --watch",
              description="every shard's progress and the merge's, from S3, and why Batch ended a job (the repository's venv)")
    CfnOutput(
        stack, "JobsCommand",
        value=f"aws batch describe-jobs --region {region} --jobs {shards_id} {merge_id} "
              "--query 'jobs[].[jobName,status,statusReason,arrayProperties.statusSummary]'",
        description="what Batch says: job states, array children per state, why a job failed",
    )
    CfnOutput(stack, "FollowLogsCommand",
              value=f"aws logs tail {logs} --follow --log-stream-name-prefix {cfg.run_id}/ --region {region}",
              description="follow the containers' logs (one stream per attempt of each child and of the merge)")
