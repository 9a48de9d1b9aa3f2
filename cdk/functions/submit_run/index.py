"""Custom resource ``Custom::BatchRun``: submit one run's AWS Batch jobs (the shards, then the merge), at most once.

CloudFormation calls it on Create, on Update (every deploy: the ``DeployedAt`` property changes) and on Delete; a
failed stack update's rollback calls Update again with the previous properties. Submission is therefore idempotent
per run (per ``JobName``): the queue is asked for jobs of the run's names, and a job that is queued, running or has
succeeded is reused, never submitted twice. Only a run whose newest job of a name failed (for example cancelled
after waiting in RUNNABLE, or a shard that failed for good) is submitted again: deploying the same run id again is how
a failed Batch run resumes (each shard resumes from what S3 holds). Delete terminates the run's unfinished jobs.

The physical id is the run's job name, the same on every call, so CloudFormation never deletes one submission on
behalf of another. Runs in Lambda's Python runtime: standard library and boto3 only.
"""
from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

LOG = logging.getLogger()
LOG.setLevel(logging.INFO)
# A job in one of these states is this run's submission; FAILED is the only state that asks for a new one.
LIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED")
UNFINISHED = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")


def jobs(batch: Any, queue: str, name: str) -> list[dict[str, Any]]:
    """Every job called ``name`` in ``queue``, whatever its state; an array's children (``<parent id>:<index>``)
    left out: their parent stands for them."""
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"jobQueue": queue, "filters": [{"name": "JOB_NAME", "values": [name]}]}
    while True:
        page = batch.list_jobs(**kwargs)
        found += [j for j in page.get("jobSummaryList", []) if j.get("jobName") == name and ":" not in j["jobId"]
                  and "index" not in j.get("arrayProperties", {})]
        if not page.get("nextToken"):
            return found
        kwargs["nextToken"] = page["nextToken"]


def newest(batch: Any, queue: str, name: str) -> dict[str, Any] | None:
    """The most recently created job called ``name`` in ``queue``, or None."""
    return max(jobs(batch, queue, name), key=lambda j: j.get("createdAt", 0), default=None)


def submit(batch: Any, props: dict[str, Any]) -> dict[str, str]:
    """The run's shards job and merge job: the live ones, or new ones where none is live. Returns their ids."""
    name, queue, shards = props["JobName"], props["JobQueue"], int(props["Shards"])
    shards_job = newest(batch, queue, f"{name}-shards")
    merge_job = newest(batch, queue, f"{name}-merge")
    if shards_job is not None and shards_job["status"] in LIVE:
        shards_id = shards_job["jobId"]
        LOG.info("reusing %s-shards %s (%s)", name, shards_id, shards_job["status"])
    else:
        request: dict[str, Any] = {"jobName": f"{name}-shards", "jobQueue": queue, "jobDefinition": props["ShardJobDefinition"]}
        if shards > 1:  # Batch arrays have 2 to 10,000 children
            request["arrayProperties"] = {"size": shards}
        shards_id = batch.submit_job(**request)["jobId"]
        merge_job = None  # a merge of earlier shards jobs waits on those, not on these
        LOG.info("submitted %s-shards %s", name, shards_id)
    if merge_job is not None and merge_job["status"] in LIVE:
        merge_id = merge_job["jobId"]
        LOG.info("reusing %s-merge %s (%s)", name, merge_id, merge_job["status"])
    else:
        merge_id = batch.submit_job(jobName=f"{name}-merge", jobQueue=queue, jobDefinition=props["MergeJobDefinition"],
                                    dependsOn=[{"jobId": shards_id}])["jobId"]
        LOG.info("submitted %s-merge %s after %s", name, merge_id, shards_id)
    return {"ShardsJobId": shards_id, "MergeJobId": merge_id}


def terminate(batch: Any, props: dict[str, Any], reason: str) -> list[str]:
    """Terminate the run's unfinished jobs (an array's children go with it). Returns the ids it terminated."""
    done: list[str] = []
    for suffix in ("-merge", "-shards"):
        for job in jobs(batch, props["JobQueue"], props["JobName"] + suffix):
            if job.get("status") in UNFINISHED:
                batch.terminate_job(jobId=job["jobId"], reason=reason)
                done.append(job["jobId"])
    return done


def handle(event: dict[str, Any], batch: Any) -> tuple[str, dict[str, str]]:
    """One CloudFormation request: ``(physical id, data)``; raises with a one-line reason on failure."""
    props = event["ResourceProperties"]
    if event["RequestType"] == "Delete":
        stopped = terminate(batch, props, "vit-embed: the run's stack was deleted or the run replaced")
        LOG.info("terminated %s", stopped or "nothing (no unfinished job)")
        return event.get("PhysicalResourceId") or props["JobName"], {}
    return props["JobName"], submit(batch, props)


def respond(event: dict[str, Any], status: str, physical_id: str, data: dict[str, str], reason: str = "") -> None:
    """Tell CloudFormation (the pre-signed ResponseURL) how the request ended."""
    body = json.dumps({
        "Status": status, "Reason": reason or "see the function's CloudWatch log", "PhysicalResourceId": physical_id,
        "StackId": event["StackId"], "RequestId": event["RequestId"], "LogicalResourceId": event["LogicalResourceId"],
        "Data": data,
    }).encode()
    request = urllib.request.Request(event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": ""})
    with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 - CloudFormation's https URL
        reply.read()


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    import boto3

    fallback_id = event.get("PhysicalResourceId") or event["ResourceProperties"].get("JobName", "unknown")
    try:
        physical_id, data = handle(event, boto3.client("batch"))
    except Exception as exc:  # any failure is the resource's failure, with its reason, on one line
        LOG.exception("request failed")
        respond(event, "FAILED", fallback_id, {}, " ".join(f"{type(exc).__name__}: {exc}".split())[:900])
        return
    respond(event, "SUCCESS", physical_id, data)
