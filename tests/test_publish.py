"""Publish stage and s3:// run folders, against a real S3 API (moto server on 127.0.0.1)."""
from __future__ import annotations

import json
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from conftest import TEST_MODEL
from job.cli import main
from job.publish import publish_run
from job.runfolder import RunLayout
from job.runfolder import read_table

pytestmark = pytest.mark.s3


def _keys(bucket: str, prefix: str) -> list[str]:
    resp = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def test_embed_then_publish(image_dir: Path, tmp_path: Path, s3_bucket: str) -> None:
    out = tmp_path / "run"
    assert main(["embed", *TEST_MODEL, "--image-dir", str(image_dir), "--out", str(out), "--no-progress",
                 "--shard-size", "5"]) == 0
    info = publish_run(str(out), f"s3://{s3_bucket}/runs/r1/")
    keys = _keys(s3_bucket, "runs/r1/")
    assert "runs/r1/manifest.json" in keys
    assert sum(k.startswith("runs/r1/embeddings.parquet/part-") for k in keys) == 3
    assert info["files"] == len(keys)
    remote = read_table(RunLayout(f"s3://{s3_bucket}/runs/r1").embeddings)
    assert sorted(remote.column("path").to_pylist()) == sorted(pq.read_table(out / "embeddings.parquet")
                                                             .column("path").to_pylist())


def test_unfinished_run_is_not_published(tmp_path: Path, s3_bucket: str, capsys) -> None:
    (tmp_path / "run").mkdir()
    rc = main(["publish", "--run", str(tmp_path / "run"), "--to", f"s3://{s3_bucket}/runs/x/"])
    assert rc == 2 and "no manifest.json" in capsys.readouterr().err
    assert _keys(s3_bucket, "runs/x/") == []


def test_run_folder_on_s3_and_resume(image_dir: Path, s3_bucket: str) -> None:
    """--out s3://…: shards, failures and the manifest go straight to S3; a second run resumes there."""
    out = f"s3://{s3_bucket}/runs/direct"
    args = ["embed", *TEST_MODEL, "--image-dir", str(image_dir), "--out", out, "--no-progress", "--shard-size", "4"]
    assert main(args) == 0
    keys = _keys(s3_bucket, "runs/direct/")
    assert "runs/direct/manifest.json" in keys and "runs/direct/_run.json" in keys
    assert read_table(RunLayout(str(out)).embeddings).num_rows == 12
    assert main(args) == 0
    manifest = json.loads(boto3.client("s3").get_object(Bucket=s3_bucket, Key="runs/direct/manifest.json")["Body"].read())
    assert manifest["counts"]["embedded_this_attempt"] == 0 and manifest["counts"]["embedded"] == 12


def test_run_records_where_it_was_published(image_dir: Path, tmp_path: Path, s3_bucket: str) -> None:
    """``job run --publish``: the run folder's manifest says where the copy went (``published``), read back from the
    file; the published copy is complete and its manifest came last."""
    out = tmp_path / "run"
    dest = f"s3://{s3_bucket}/runs/pub/"
    assert main(["run", *TEST_MODEL, "--image-dir", str(image_dir), "--out", str(out), "--no-progress", "--no-index",
                 "--no-project", "--publish", dest]) == 0
    published = json.loads((out / "manifest.json").read_text())["published"]
    assert published["to"] == dest and published["files"] == len(_keys(s3_bucket, "runs/pub/")) >= 3
    assert published["bytes"] > 0
    remote = json.loads(boto3.client("s3").get_object(Bucket=s3_bucket, Key="runs/pub/manifest.json")["Body"].read())
    assert remote["counts"]["embedded"] == 12 and remote["status"] == "succeeded"
