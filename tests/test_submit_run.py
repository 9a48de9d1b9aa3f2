"""The Batch run's submission handler (cdk/functions/submit_run/index.py, Custom::BatchRun): at most one live
submission per run, whatever CloudFormation calls it with (a rollback repeats Update with the previous properties).

Against moto's Batch for the API calls as the handler makes them, and a small in-memory queue where a test needs jobs
in states moto does not produce (moto's jobs succeed at once); the CloudFormation response through a local HTTP server.
"""
from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
HANDLER = Path(__file__).resolve().parent.parent / "cdk" / "functions" / "submit_run" / "index.py"
_spec = importlib.util.spec_from_file_location("submit_run", HANDLER)
assert _spec is not None and _spec.loader is not None
submit_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(submit_run)

NAME = "VitEmbedDriveData-trainval-1"


def _event(request: str, props: dict, physical: str | None = None) -> dict:
    event = {"RequestType": request, "ResourceProperties": {"ServiceToken": "arn:fn", **props}, "StackId": "stack",
             "RequestId": "req", "LogicalResourceId": "SubmitRunabc", "ResponseURL": "http://127.0.0.1:1/"}
    if physical:
        event["PhysicalResourceId"] = physical
    return event


@pytest.fixture
def moto_batch(monkeypatch):
    """moto's Batch (jobs succeed without Docker) with a queue and the shard and merge job definitions."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "ap-northeast-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws(config={"batch": {"use_docker": False}}):
        batch = boto3.client("batch")
        role = boto3.client("iam").create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        ce = batch.create_compute_environment(computeEnvironmentName="gpus", type="UNMANAGED", state="ENABLED",
                                              serviceRole=role)["computeEnvironmentArn"]
        queue = batch.create_job_queue(jobQueueName="run-queue", state="ENABLED", priority=1,
                                       computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])["jobQueueArn"]
        defs = {name: batch.register_job_definition(
            jobDefinitionName=name, type="container",
            containerProperties={"image": "vit-embed", "vcpus": 1, "memory": 512, "command": [name]})["jobDefinitionArn"]
            for name in ("shard", "merge")}
        props = {"JobName": NAME, "JobQueue": queue, "ShardJobDefinition": defs["shard"],
                 "MergeJobDefinition": defs["merge"], "Shards": "3", "DeployedAt": "2026-11-25T19:00:00Z"}
        yield batch, props


def test_create_submits_the_array_then_the_merge_and_a_rollback_submits_nothing(moto_batch):
    batch, props = moto_batch
    physical, data = submit_run.handle(_event("Create", props), batch)
    assert physical == NAME  # the same on every call: CloudFormation never deletes a submission for another
    (shards,) = batch.describe_jobs(jobs=[data["ShardsJobId"]])["jobs"]
    assert shards["jobName"] == f"{NAME}-shards" and shards["arrayProperties"]["size"] == 3
    (merge,) = batch.describe_jobs(jobs=[data["MergeJobId"]])["jobs"]
    assert merge["jobName"] == f"{NAME}-merge" and merge["dependsOn"] == [{"jobId": data["ShardsJobId"]}]

    def parents() -> list[str]:
        return sorted(j["jobId"] for j in batch.list_jobs(jobQueue=props["JobQueue"])["jobSummaryList"] if ":" not in j["jobId"])

    before = parents()
    # Another deploy of the same run, and a failed update's rollback (Update with the previous properties).
    for request in ("Update", "Update"):
        again = submit_run.handle(_event(request, {**props, "DeployedAt": "2026-11-25T20:00:00Z"}, NAME), batch)
        assert again == (NAME, data)
    assert parents() == before, "nothing submitted twice"
    # Delete terminates only what has not finished (moto's jobs succeeded at once: nothing).
    assert submit_run.handle(_event("Delete", props, NAME), batch) == (NAME, {})


class FakeQueue:
    """list_jobs / submit_job / terminate_job over jobs whose states the test sets."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []
        self.submitted: list[dict] = []
        self.terminated: list[str] = []

    def add(self, name: str, status: str) -> str:
        job_id = f"job-{len(self.jobs)}"
        self.jobs.append({"jobId": job_id, "jobName": name, "status": status, "createdAt": len(self.jobs)})
        if status == "RUNNING" and name.endswith("-shards"):  # an array's running child, listed like its parent
            self.jobs.append({"jobId": f"{job_id}:0", "jobName": name, "status": status, "createdAt": len(self.jobs) + 1})
        return job_id

    def list_jobs(self, jobQueue: str, filters: list, nextToken: str | None = None) -> dict:  # noqa: N803
        wanted = filters[0]["values"][0]
        found = [j for j in self.jobs if j["jobName"] == wanted]
        return {"jobSummaryList": found[:1], "nextToken": "more"} if nextToken is None and len(found) > 1 else \
            {"jobSummaryList": found[1:] if nextToken else found}

    def submit_job(self, **request) -> dict:
        self.submitted.append(request)
        return {"jobId": self.add(request["jobName"], "SUBMITTED")}

    def terminate_job(self, jobId: str, reason: str) -> None:  # noqa: N803
        self.terminated.append(jobId)


PROPS = {"JobName": NAME, "JobQueue": "q", "ShardJobDefinition": "shard-def", "MergeJobDefinition": "merge-def", "Shards": "1"}


def test_a_run_whose_shards_failed_is_submitted_again_whole():
    q = FakeQueue()
    q.add(f"{NAME}-shards", "FAILED")  # e.g. cancelled after waiting in RUNNABLE
    q.add(f"{NAME}-merge", "FAILED")  # Batch failed the merge with it
    _, data = submit_run.handle(_event("Update", PROPS, NAME), q)
    assert [r["jobName"] for r in q.submitted] == [f"{NAME}-shards", f"{NAME}-merge"]
    assert "arrayProperties" not in q.submitted[0]  # one shard: one job, no array
    assert q.submitted[1]["dependsOn"] == [{"jobId": data["ShardsJobId"]}]


def test_live_shards_are_reused_and_only_a_failed_merge_is_submitted_again():
    q = FakeQueue()
    shards = q.add(f"{NAME}-shards", "SUCCEEDED")
    q.add(f"{NAME}-merge", "FAILED")  # the merge itself failed (a bug since fixed in the image, say)
    _, data = submit_run.handle(_event("Update", PROPS, NAME), q)
    assert data["ShardsJobId"] == shards
    assert [(r["jobName"], r["dependsOn"]) for r in q.submitted] == [(f"{NAME}-merge", [{"jobId": shards}])]


def test_delete_terminates_the_unfinished_jobs_not_the_children_nor_the_finished():
    q = FakeQueue()
    running = q.add(f"{NAME}-shards", "RUNNING")
    waiting = q.add(f"{NAME}-merge", "PENDING")
    q.add(f"{NAME}-merge", "FAILED")
    q.add("another-run-shards", "RUNNING")
    assert submit_run.handle(_event("Delete", PROPS, NAME), q) == (NAME, {})
    assert sorted(q.terminated) == sorted([running, waiting])


class _Recorder(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def do_PUT(self) -> None:  # noqa: N802
        length = int(self.headers["Content-Length"])
        _Recorder.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()


def test_the_response_reaches_cloudformation_and_a_failure_is_one_line(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/presigned"
    try:
        q = FakeQueue()
        monkeypatch.setattr("boto3.client", lambda service: q)
        submit_run.lambda_handler({**_event("Create", PROPS), "ResponseURL": url}, None)

        class Broken(FakeQueue):
            def submit_job(self, **request) -> dict:
                raise RuntimeError("ClientException: Job queue q is not ENABLED\nand more")

        monkeypatch.setattr("boto3.client", lambda service: Broken())
        submit_run.lambda_handler({**_event("Create", PROPS), "ResponseURL": url}, None)
    finally:
        server.shutdown()
    ok, failed = _Recorder.bodies[-2:]
    assert ok["Status"] == "SUCCESS" and ok["PhysicalResourceId"] == NAME and set(ok["Data"]) == {"ShardsJobId", "MergeJobId"}
    assert failed["Status"] == "FAILED" and failed["PhysicalResourceId"] == NAME
    assert failed["Reason"] == "RuntimeError: ClientException: Job queue q is not ENABLED and more"
