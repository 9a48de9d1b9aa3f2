"""End to end through the CLI: the same rows (ids, paths, metadata, vectors) from a folder, an s3:// prefix and .tgz archives on S3."""
from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TEST_MODEL
from nuscenes_fixture import make_nuscenes_fixture, pack_mini_archive, pack_trainval_archives, upload_file, upload_tree

from job.cli import main
from job.nuscenes import META_NAMES
from job.runfolder import path_id

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def _rows(out: Path) -> dict[int, dict]:
    t = pq.read_table(out / "embeddings.parquet")
    return {r["id"]: r for r in t.to_pylist()}


def test_folder_s3_prefix_and_s3_archives_give_identical_rows(tmp_path, s3_server):
    info = make_nuscenes_fixture(tmp_path / "nuscenes", n_logs=2, scenes_per_log=1, samples_per_scene=1,
                                 sweeps_per_sample=1)  # 12 keyframes + 12 sweeps
    mini = pack_mini_archive(info, tmp_path / "v1.0-mini.tgz")
    arch = pack_trainval_archives(info, tmp_path / "trainval", parts=2)
    bucket = "e2e-nuscenes"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    prefix = upload_tree(info.root, bucket, "extracted")
    mini_url = upload_file(mini, bucket, "public/v1.0/v1.0-mini.tgz")
    meta_url = upload_file(arch["meta"][0], bucket, "public/v1.0/v1.0-trainval_meta.tgz")
    for p in arch["blobs"]:
        upload_file(p, bucket, f"public/v1.0/{p.name}")

    runs = {
        "folder": ["--source", str(info.root)],
        "s3_prefix": ["--source", prefix],
        "s3_mini_tgz": ["--source", mini_url],
        "s3_blobs_tgz": ["--source", f"s3://{bucket}/public/v1.0/v1.0-trainval0*_blobs.tgz",
                         "--nuscenes-meta", meta_url],
    }
    results = {}
    for name, args in runs.items():
        out = tmp_path / "runs" / name
        rc = main(["embed", *TEST_MODEL, *args, "--out", str(out), "--no-progress", "--workers", "0",
                   "--batch-size", "16", "--include-sweeps"])
        assert rc == 0, name
        results[name] = _rows(out)

    ref = results["folder"]
    assert {r["path"] for r in ref.values()} == set(info.images)
    for row in ref.values():
        assert row["id"] == path_id(row["path"])
        assert {k: row[k] for k in META_NAMES} == info.expected[row["path"]]
    for name, rows in results.items():
        assert rows.keys() == ref.keys(), name
        for i, row in rows.items():
            assert {k: v for k, v in row.items() if k != "embedding"} == \
                {k: v for k, v in ref[i].items() if k != "embedding"}, (name, row["path"])
            np.testing.assert_allclose(row["embedding"], ref[i]["embedding"], rtol=1e-5, atol=1e-6)
