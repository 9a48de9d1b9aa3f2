"""S3 that fails now and then: through a proxy that answers a seeded share of requests with 500/503, the job's retries
carry a run through 10 % faults with the same vectors; at 90 % it ends with one line naming the operation and the
URL, exit 1, and the same command completes once the faults stop."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from faultproxy import FaultProxy

from conftest import TEST_MODEL, jpeg_bytes

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.s3]
N = 16


def _run(endpoint: str, bucket: str, out: str, attempts: int | None = None) -> subprocess.CompletedProcess:
    args = ["run", "--source", f"s3://{bucket}/src/", "--out", f"s3://{bucket}/{out}", *TEST_MODEL, "--image-size", "64",
            "--batch-size", "4", "--shard-size", "4", "--no-project", "--index-type", "flat", "--no-progress",
            "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": endpoint}
    if attempts is not None:  # the standard AWS variable, which the job's one retry setting follows (fsutil)
        env["AWS_MAX_ATTEMPTS"] = str(attempts)
    return subprocess.run([sys.executable, "-m", "job", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def _vectors(bucket: str, out: str) -> dict[str, np.ndarray]:
    import s3fs

    fs = s3fs.S3FileSystem(anon=False)
    t = pq.read_table(f"{bucket}/{out}/embeddings.parquet", columns=["path", "embedding"], filesystem=fs)
    return dict(zip(t.column("path").to_pylist(), np.stack(t.column("embedding").to_numpy(zero_copy_only=False))))


def test_faults_are_retried_or_end_in_one_line_and_the_same_command_resumes(s3_server: str, s3_bucket: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for i in range(N):
        s3.put_object(Bucket=s3_bucket, Key=f"src/CAM_FRONT/f{i:03d}.jpg", Body=jpeg_bytes(160, 90, seed=i, quality=70))
    with FaultProxy(s3_server, rate=0.10, seed=7) as proxy:
        flaky = _run(proxy.endpoint, s3_bucket, "flaky")
        assert flaky.returncode == 0, flaky.stderr
        assert proxy.failed > 5, (proxy.failed, proxy.requests)  # the faults were there, and were retried

        proxy.rate = 0.90
        broken = _run(proxy.endpoint, s3_bucket, "broken", attempts=3)
        lines = [line for line in broken.stderr.strip().splitlines() if "error:" in line]
        assert broken.returncode == 1, broken.stderr
        assert "Traceback" not in broken.stderr and len(lines) == 1, broken.stderr
        assert lines[0].startswith("python -m job run: error: ") and f"s3://{s3_bucket}/" in lines[0], lines
        assert "run the same command" in lines[0], lines

        proxy.rate = 0.0
        again = _run(proxy.endpoint, s3_bucket, "broken")
        assert again.returncode == 0, again.stderr
    # the run that met 10 % faults holds the same vectors as the one that ended with none
    want, got = _vectors(s3_bucket, "broken"), _vectors(s3_bucket, "flaky")
    assert len(want) == N and got.keys() == want.keys()
    assert all(np.allclose(got[k], want[k], atol=1e-6) for k in want)
