"""A rehearsal of ``-c engine=batch``: what AWS Batch would run, run here against a moto S3 server.

The batch stack is synthesized; each "container" runs the command and environment of its job definition, read from
the template, with the image's entrypoint (``python -m job``) played by the venv's python on the CPU. Batch's part is
played by this test: the array index in ``AWS_BATCH_JOB_ARRAY_INDEX``, a retry decided by the template's own
``evaluateOnExit`` rules, and the merge started only once every child succeeded. The data is the nuScenes test fixture
packed like trainval (3 keyframe archives + meta) in an S3 bucket, read through ``s3://`` as the shards read the
real bucket. One child is stopped with SIGTERM (a spot reclaim: exit 75) and one SIGKILLed (its host went away);
both are retried and resume. The merged run must equal an unsplit run, and ``job status`` must add it all up.

Deviations from the cloud, each for this machine: ``--device cpu`` instead of cuda (no GPU here), and the children
commit every 2 images (``--batch-size 2 --shard-size 2``) so that a kill lands mid-shard.
"""
from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_MODEL
from job.cli import main
from job.runfolder import RunLayout
from job.runfolder import read_table
from nuscenes_fixture import make_nuscenes_fixture, pack_trainval_archives

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.cdk]

N = 3
RUN_ID = "rehearsal-batch"
SMALL_COMMITS = ["--batch-size", "2", "--shard-size", "2"]
CHANNELS = "CAM_FRONT,CAM_BACK"  # 36 of the fixture's 108 camera keyframes: 12 per archive, one archive per shard
N_IMAGES = 36


@pytest.fixture(scope="module")
def world(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two buckets on the moto server: the nuScenes stand-in holding the archives, and the stack's artifacts."""
    import boto3

    tmp = tmp_path_factory.mktemp("batch-rehearsal")
    info = make_nuscenes_fixture(tmp / "ds", split="v1.0-trainval")
    arch = pack_trainval_archives(info, tmp / "arch", parts=N)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    nuscenes, artifacts = f"nuscenes-{uuid.uuid4().hex[:8]}", f"artifacts-{uuid.uuid4().hex[:8]}"
    for b in (nuscenes, artifacts):
        s3.create_bucket(Bucket=b)
    urls = {}
    for p in [*arch["keyframes"], *arch["meta"]]:
        key = f"public/v1.0/{p.name}"
        s3.put_object(Bucket=nuscenes, Key=key, Body=p.read_bytes())
        urls[p.name] = f"s3://{nuscenes}/{key}"
    sources = [urls[p.name] for p in arch["keyframes"]]
    meta = urls[arch["meta"][0].name]
    return {"tmp": tmp, "s3": s3, "artifacts": artifacts, "sources": sources, "meta": meta}


@pytest.fixture(scope="module")
def stack(world: dict) -> dict:
    """The batch stack, synthesized with the rehearsal's data and model: its two job definitions."""
    from cdk.factory import cdk_json_context, create_app

    ctx = {**cdk_json_context(), "engine": "batch", "shards": str(N), "run_id": RUN_ID,
           "image": "public.ecr.aws/example/vit-embed:rehearsal", "sources": ",".join(world["sources"]),
           "nuscenes_meta": world["meta"], "model": TEST_MODEL[1], "pretrained": TEST_MODEL[3], "channels": CHANNELS}
    app, st = create_app(ctx, outdir=str(world["tmp"] / "cdk.out"))
    template = app.synth().get_stack_artifact(st.artifact_id).template
    resources = template["Resources"]
    (bucket_id,) = [k for k, r in resources.items() if r["Type"] == "AWS::S3::Bucket" and "LoggingConfiguration" in r["Properties"]]
    defs = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Batch::JobDefinition"]
    (shard,) = [d for d in defs if any(q["Type"] == "GPU" for q in d["ContainerProperties"]["ResourceRequirements"])]
    (merge,) = [d for d in defs if d is not shard]
    (submit,) = [r for r in resources.values() if r["Type"] == "Custom::BatchRun"]
    return {"shard": shard, "merge": merge, "bucket_id": bucket_id, "submit": submit}


def _resolve(value, refs: dict[str, str]) -> str:
    """A command argument with its CloudFormation references resolved (the artifacts bucket's name)."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return refs[value["Ref"]]
    if "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(_resolve(p, refs) for p in parts)
    raise AssertionError(f"unexpected token in a container command: {value}")


class Container:
    """One job definition's container, run here: the template's command and environment, the venv's python."""

    def __init__(self, job_definition: dict, world: dict, stack: dict, extra: list[str] | None = None) -> None:
        props = job_definition["ContainerProperties"]
        refs = {stack["bucket_id"]: world["artifacts"]}
        command = [_resolve(c, refs) for c in props["Command"]]
        if "--device" in command:
            command[command.index("--device") + 1] = "cpu"  # no GPU on this machine
        self.argv = [sys.executable, "-m", "job", *command, *(extra or [])]  # the image's ENTRYPOINT, python -m job
        self.env = {**os.environ, **{e["Name"]: e["Value"] for e in props.get("Environment", [])}, "PYTHONPATH": str(REPO)}
        self.retry = job_definition["RetryStrategy"]
        self.logs = world["tmp"] / "logs"
        self.logs.mkdir(exist_ok=True)
        self.cwd = world["tmp"]

    def start(self, index: int | None, attempt: int) -> subprocess.Popen:
        env = dict(self.env)
        if index is not None:
            env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)  # what Batch sets in child `index` of the array
        name = f"{'merge' if index is None else f'shard{index}'}-attempt{attempt}.log"
        out = open(self.logs / name, "w")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(self.argv, env=env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT)
        proc.log = out  # type: ignore[attr-defined]
        return proc

    def run(self, index: int | None, attempt: int = 1) -> int:
        proc = self.start(index, attempt)
        rc = proc.wait(timeout=600)
        proc.log.close()  # type: ignore[attr-defined]
        return rc

    def log(self, index: int | None, attempt: int) -> str:
        return (self.logs / f"{'merge' if index is None else f'shard{index}'}-attempt{attempt}.log").read_text()[-3000:]


def batch_decides(retry: dict, *, exit_code: int | None, status_reason: str = "", reason: str = "") -> str:
    """What AWS Batch does after a failed attempt: the first evaluateOnExit rule whose every condition matches (glob
    patterns, a trailing * matches any rest); none matching means retry (Batch's documented default)."""
    for rule in retry["EvaluateOnExit"]:
        conditions = [(rule.get("OnExitCode"), "" if exit_code is None else str(exit_code)),
                      (rule.get("OnStatusReason"), status_reason), (rule.get("OnReason"), reason)]
        if all(pattern is None or fnmatch.fnmatchcase(value, pattern) for pattern, value in conditions):
            return rule["Action"]
    return "RETRY"


def _parts(world: dict, index: int) -> int:
    prefix = f"runs/{RUN_ID}/shards/{index}/embeddings.parquet/"
    listing = world["s3"].list_objects_v2(Bucket=world["artifacts"], Prefix=prefix)
    return sum(1 for o in listing.get("Contents", []) if o["Key"].endswith(".parquet"))


def _kill_mid_shard(container: Container, world: dict, index: int, sig: signal.Signals) -> int:
    """Start child ``index``, send ``sig`` once it has committed two parts to S3; its exit code."""
    proc = container.start(index, attempt=1)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and _parts(world, index) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, f"child {index} ended before it could be stopped:\n{container.log(index, 1)}"
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    proc.log.close()  # type: ignore[attr-defined]
    return rc


def _rows(run: str) -> dict[int, dict]:
    t = read_table(RunLayout.for_output(run).embeddings)
    rows = {r["id"]: r for r in t.to_pylist()}
    assert len(rows) == t.num_rows, "no duplicate ids"
    return rows


def test_batch_flow_shards_retries_merge(world: dict, stack: dict, capsys) -> None:
    run_uri = f"s3://{world['artifacts']}/runs/{RUN_ID}/"
    shard = Container(stack["shard"], world, stack, extra=SMALL_COMMITS)
    merge = Container(stack["merge"], world, stack)
    assert stack["submit"]["Properties"]["Shards"] == str(N)  # Batch starts N children (cdk/functions/submit_run)

    # The retry rules the template gives Batch: another attempt for a lost host or a graceful stop, none otherwise.
    assert batch_decides(shard.retry, exit_code=75) == "RETRY"
    assert batch_decides(shard.retry, exit_code=None, status_reason="Host EC2 (instance i-0abc) terminated.") == "RETRY"
    assert batch_decides(shard.retry, exit_code=1, reason="Essential container in task exited") == "EXIT"
    assert batch_decides(shard.retry, exit_code=2) == "EXIT"

    assert shard.run(0) == 0, shard.log(0, 1)

    # Child 1: spot reclaim. SIGTERM -> the job commits what it embedded and exits 75 -> Batch retries it.
    rc = _kill_mid_shard(shard, world, 1, signal.SIGTERM)
    assert rc == 75, shard.log(1, 1)
    committed = _parts(world, 1)
    assert batch_decides(shard.retry, exit_code=rc) == "RETRY"
    assert shard.run(1, attempt=2) == 0, shard.log(1, 2)

    # Child 2: its host goes away (SIGKILL, nothing committed after the kill) -> "Host EC2 ... terminated." -> retry.
    rc = _kill_mid_shard(shard, world, 2, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert batch_decides(shard.retry, exit_code=None, status_reason="Host EC2 (instance i-0def) terminated.") == "RETRY"

    # Meanwhile `job status` sees two shards done and one still "running" (killed, not yet retried), no merge.
    capsys.readouterr()
    assert main(["status", run_uri, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "running" and doc["merge"] is None
    assert [s["status"] for s in doc["shards"]] == ["succeeded", "succeeded", "running"]
    # Batch would hold the merge (it depends on the array); run now, it refuses and names the shard.
    assert merge.run(None, attempt=0) == 1
    assert "shards/2 has not finished" in merge.log(None, 0)
    assert "Contents" not in world["s3"].list_objects_v2(Bucket=world["artifacts"], Prefix=f"runs/{RUN_ID}/manifest.json")

    assert shard.run(2, attempt=2) == 0, shard.log(2, 2)

    # Every child succeeded: Batch starts the merge.
    assert merge.run(None) == 0, merge.log(None, 1)

    # The merged run equals one unsplit run over the same archives (ids, vectors, metadata).
    whole = str(world["tmp"] / "whole")
    sources = [a for s in world["sources"] for a in ("--source", s)]
    assert main(["run", *sources, "--nuscenes-meta", world["meta"], *TEST_MODEL, "--channels", CHANNELS, "--out", whole,
                 "--no-index", "--no-project", "--no-progress", "--log-level", "WARNING"]) == 0
    merged, unsplit = _rows(run_uri), _rows(whole)
    assert merged.keys() == unsplit.keys() and len(merged) == N_IMAGES
    for i, row in unsplit.items():
        vectors = [k for k in row if k.startswith("embedding")]  # the vector and (pool mean) the CLS vector
        for k in vectors:
            np.testing.assert_allclose(merged[i][k], row[k], atol=1e-6)
        assert {k: v for k, v in merged[i].items() if k not in vectors} == {k: v for k, v in row.items() if k not in vectors}

    manifest = json.loads(world["s3"].get_object(Bucket=world["artifacts"], Key=f"runs/{RUN_ID}/manifest.json")["Body"].read())
    assert manifest["counts"]["embedded"] == N_IMAGES and manifest["index"] is not None and manifest["projection"] is not None
    assert [s["index"] for s in manifest["source"]["shards"]] == list(range(N))
    for i in (1, 2):  # the retried children resumed: nothing embedded twice
        m = json.loads(world["s3"].get_object(Bucket=world["artifacts"], Key=f"runs/{RUN_ID}/shards/{i}/manifest.json")["Body"].read())
        assert m["counts"]["resumed_from_earlier_attempts"] >= (2 * committed if i == 1 else 4)  # >= 2 parts of 2
        assert m["counts"]["embedded"] == N_IMAGES // N

    # `job status` adds it all up: every shard, the merge's phases, the sums.
    capsys.readouterr()
    assert main(["status", run_uri, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "succeeded" and doc["progress"]["done"] == doc["progress"]["total"] == N_IMAGES
    assert [s["status"] for s in doc["shards"]] == ["succeeded"] * N
    assert doc["shards"][1]["previous"]["status"] == "interrupted"  # the spot-reclaimed attempt
    assert [p["phase"] for p in doc["merge"]["phases"]] == ["merge", "index", "project"]
    assert main(["status", run_uri, "--watch", "0.1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("status  succeeded") and f"{N_IMAGES}/{N_IMAGES} (100.0%)" in text and "merge     succeeded" in text
