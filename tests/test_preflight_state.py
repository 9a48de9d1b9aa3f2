"""Preflight on what the account holds now (cdk/preflight_state.py), against moto: a run the stack still runs (a deploy
of another run id would stop it), the kept bucket a destroyed run resumes from, and the AZs that offer the types; and
what `make destroy` says before it destroys (cdk/teardown.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from test_preflight import REGION, Clients, aws  # noqa: E402,F401  (aws: moto with fake credentials)

pytestmark = pytest.mark.usefixtures("aws")

from cdk import constants as C  # noqa: E402
from cdk.config import from_context  # noqa: E402
from cdk.preflight import FAIL, OK, WARN, Preflight  # noqa: E402
from cdk.preflight_state import artifacts_bucket, running_run  # noqa: E402

STACK_TEMPLATE = """
Resources:
  Handle:
    Type: AWS::SNS::Topic
Outputs:
{outputs}
"""


def deployed(outputs: dict[str, str]) -> None:
    """The stack as an earlier deploy left it: its outputs (moto's CloudFormation)."""
    body = "\n".join(f"  {k}:\n    Value: \"{v}\"" for k, v in outputs.items())
    boto3.client("cloudformation", region_name=REGION).create_stack(StackName=C.STACK_NAME, TemplateBody=STACK_TEMPLATE.format(outputs=body))


def group(name: str, desired: int) -> str:
    asg = boto3.client("autoscaling", region_name=REGION)
    image = boto3.client("ec2", region_name=REGION).describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    asg.create_launch_configuration(LaunchConfigurationName=f"{name}-lc", ImageId=image, InstanceType="t3.micro")
    asg.create_auto_scaling_group(AutoScalingGroupName=name, LaunchConfigurationName=f"{name}-lc", MinSize=0, MaxSize=1,
                                  DesiredCapacity=desired, AvailabilityZones=[f"{REGION}a"])
    return name


def check(ctx: dict, clients: Clients | None = None):
    return running_run(from_context({"run_id": "new-run", **ctx}.get), clients or Clients())


def test_no_stack_yet():
    r = check({})
    assert r.status == OK and "this deploy creates it" in r.detail


def test_a_new_run_id_while_the_group_runs_the_old_one_fails_unless_told():
    clients = Clients()
    deployed({"RunPrefix": "s3://bucket/runs/old-run/", "AutoScalingGroup": group("VitEmbedDriveData-old-run", 1)})
    r = check({}, clients)
    assert r.status == FAIL and "running run old-run" in r.detail and "InService" in r.detail
    assert "-c run_id=old-run" in r.detail and "replace_running=true" in r.detail
    assert "python -m job status s3://bucket/runs/old-run/" in r.detail
    told = check({"replace_running": "true"}, clients)
    assert told.status == WARN and "the deploy stops it" in told.detail
    same = running_run(from_context({"run_id": "old-run"}.get), clients)
    assert same.status == OK and "updates the same run" in same.detail


def test_a_finished_run_is_replaced_without_a_word():
    clients = Clients()
    deployed({"RunPrefix": "s3://bucket/runs/old-run/", "AutoScalingGroup": group("VitEmbedDriveData-old-run", 0)})
    r = check({}, clients)
    assert r.status == OK and "is not running" in r.detail


class BatchClients(Clients):
    """moto for the stack; a queue with one RUNNABLE job (moto's Batch jobs succeed at once)."""

    def client(self, service: str):
        if service != "batch":
            return super().client(service)

        class Queue:
            def list_jobs(self, jobQueue: str, jobStatus: str) -> dict:  # noqa: N803
                return {"jobSummaryList": [{"jobId": "j1"}] if jobStatus == "RUNNABLE" else []}

        return Queue()

    __call__ = client


def test_a_batch_run_with_queued_jobs_counts_as_running():
    clients = BatchClients()
    deployed({"RunPrefix": "s3://bucket/runs/old-run/", "JobQueue": "BatchQueue-abc"})
    r = check({"engine": "batch", "shards": "2"}, clients)
    assert r.status == FAIL and "queue BatchQueue-abc: 1 RUNNABLE" in r.detail


def test_the_kept_bucket_holds_the_run():
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="kept-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="kept-bucket", Key="runs/old-run/_STATUS", Body=b"{}")
    cfg = from_context({"run_id": "old-run", "artifacts_bucket": "kept-bucket"}.get)
    r = artifacts_bucket(cfg, Clients())
    assert r is not None and r.status == OK and "the run resumes from it" in r.detail
    other = artifacts_bucket(from_context({"run_id": "typo-run", "artifacts_bucket": "kept-bucket"}.get), Clients())
    assert other is not None and other.status == WARN and "nothing under runs/typo-run/" in other.detail
    missing = artifacts_bucket(from_context({"run_id": "x", "artifacts_bucket": "no-such-bucket"}.get), Clients())
    assert missing is not None and missing.status == FAIL and "NoSuchBucket" in missing.detail
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="far-bucket")
    far = artifacts_bucket(from_context({"run_id": "x", "artifacts_bucket": "far-bucket"}.get), Clients())
    assert far is not None and far.status == FAIL and "-c region=us-east-1" in far.detail
    assert artifacts_bucket(from_context({"run_id": "x"}.get), Clients()) is None


def test_azs_without_the_types_are_named_with_the_context_that_avoids_them():
    cfg = from_context({"run_id": "x"}.get)
    r = Preflight(cfg, Clients()).offerings()
    # moto's offerings: g6e in ap-northeast-1a and -1c, not in -1d (the region's third AZ).
    assert r.status == WARN and "ap-northeast-1d offers none of them" in r.detail
    assert r.detail.endswith("deploy with -c availability_zones=ap-northeast-1a,ap-northeast-1c")
    pinned = from_context({"run_id": "x", "availability_zones": "ap-northeast-1a,ap-northeast-1c"}.get)
    assert Preflight(pinned, Clients()).offerings().status == OK


def test_teardown_says_what_is_kept_and_how_to_resume(capsys):
    from cdk.teardown import main

    clients = Clients()
    assert main(["-c", "run_id=x"], client=clients) == 0
    assert "does not exist" in capsys.readouterr().out  # nothing deployed: one line, nothing to keep
    redeploy = "npx cdk deploy -c run_id=old-run -c artifacts_bucket=kept-bucket -c pool=cls"
    deployed({"ArtifactsBucket": "kept-bucket", "AccessLogBucket": "log-bucket", "RunPrefix": "s3://kept-bucket/runs/old-run/",
              "KeptByDestroy": "ArtifactsBucket,AccessLogBucket", "RedeployCommand": redeploy})
    assert main([], client=clients) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"teardown: {C.STACK_NAME} in {REGION}"
    assert "kept: s3://kept-bucket/ (the runs, their logs, the weights cache)" in out
    assert "kept: s3://log-bucket/ (the artifacts bucket's access logs; they expire in 90 days)" in out
    assert out[-1] == f"to resume this run after the destroy, run: {redeploy}"
    assert main(["-c", "instance_types=t3.micro"], client=clients) == 2


def test_teardown_says_the_artifacts_go_with_retain_artifacts_false(capsys):
    """retain_artifacts=false: the stack deletes the artifacts bucket (the access-log bucket stays): no "kept" line and
    no resume command for it. A stack deployed before KeptByDestroy existed is answered with the condition."""
    from cdk.teardown import main, notes

    deployed({"ArtifactsBucket": "gone-bucket", "AccessLogBucket": "log-bucket", "RunPrefix": "s3://gone-bucket/runs/r/",
              "KeptByDestroy": "AccessLogBucket"})
    assert main([], client=Clients()) == 0
    out = capsys.readouterr().out.splitlines()
    assert "deleted with the stack (retain_artifacts=false): s3://gone-bucket/ (the runs, their logs, the weights cache)" in out
    assert "kept: s3://log-bucket/ (the artifacts bucket's access logs; they expire in 90 days)" in out
    assert not [line for line in out if "kept: s3://gone-bucket" in line or "to resume" in line]
    older = notes({"ArtifactsBucket": "b", "RunPrefix": "s3://b/runs/r/"})
    assert older[0] == "kept unless deployed with retain_artifacts=false: s3://b/ (the runs, their logs, the weights cache)"


def test_redeploying_a_complete_run_is_said_to_start_nothing():
    """The default run id names the options, so a plain redeploy after a finished run is the same run: the preflight
    says it starts nothing and how to start another."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="done-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    deployed({"RunPrefix": "s3://done-bucket/runs/done-run/", "ArtifactsBucket": "done-bucket",
              "AutoScalingGroup": group("VitEmbedDriveData-done-run", 0)})
    cfg = from_context({"run_id": "done-run"}.get)
    assert running_run(cfg, Clients()).status == OK  # not finished yet: the deploy updates (resumes) it
    s3.put_object(Bucket="done-bucket", Key="runs/done-run/manifest.json", Body=b"{}")
    r = running_run(cfg, Clients())
    assert r.status == WARN and "run done-run is complete" in r.detail and "-c run_id=<new id>" in r.detail
