"""Shared fixtures: a real S3 API (moto in server mode on 127.0.0.1), small JPEGs, the small test model."""
from __future__ import annotations

import io
import os
import socket
from pathlib import Path
from typing import Iterator

# `make test` runs the suite in parallel (pytest-xdist): each worker (and every job it starts as a subprocess)
# computes on its share of the cores, at least one thread, instead of every worker fighting over all of them.
# Set before numpy/torch load their thread pools.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

# UMAP's numba kernels are compiled afresh in every process that projects (~10 s of CPU each, most of a small test
# run); LLVM's -O1 compiles them ~40 % faster and runs them as fast on test-sized data (-O0 would be 10x slower).
os.environ.setdefault("NUMBA_OPT", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

# Small model used wherever the test is not about ViT-L-14 itself (ViT-S/32: 384-d vectors, a quarter of ViT-B/32's
# compute). Tests that need a job to still be embedding seconds later use SLOW_MODEL.
TEST_MODEL = ["--model", "ViT-S-32", "--pretrained", "none"]
SLOW_MODEL = ["--model", "ViT-B-32", "--pretrained", "none"]


def exit_code(argv: list[str]) -> int:
    """``python -m job ARGV``'s exit code, whether argparse (SystemExit) or the command decided it."""
    from job.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; the environment points boto3/s3fs (and subprocesses) at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN")}
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server: str) -> Iterator[str]:
    """A fresh, empty bucket on the moto server; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=name)
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
    yield name


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, photo-like RGB image (gradients + blobs), so JPEG and resampling behave as on real frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 127 + 80 * np.sin(xx / width * fx * 6.28 + ph) * np.cos(yy / height * fy * 6.28)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.03, 0.2) * width
        color = rng.uniform(0, 255, 3)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        img[mask] = 0.5 * img[mask] + 0.5 * color
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def jpeg_bytes(width: int = 1600, height: int = 900, seed: int = 0, quality: int = 90) -> bytes:
    """JPEG bytes of a photo-like image."""
    buf = io.BytesIO()
    photo_like(width, height, seed).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    """A folder of 12 small camera-like JPEGs in two sub-folders."""
    root = tmp_path / "images"
    for i in range(12):
        sub = root / ("CAM_FRONT" if i % 2 == 0 else "CAM_BACK")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"frame_{i:03d}.jpg").write_bytes(jpeg_bytes(320, 180, seed=i))
    return root


@pytest.fixture(scope="session")
def nuscenes_dataroot(tmp_path_factory: pytest.TempPathFactory):
    """A small generated nuScenes dataroot (``tests/nuscenes_fixture.py``: 3 logs, 6 scenes, 108 camera
    keyframes + 108 sweeps, LIDAR/RADAR files, ``v1.0-mini`` tables). Shared by the session: read-only."""
    from nuscenes_fixture import make_nuscenes_fixture

    return make_nuscenes_fixture(tmp_path_factory.mktemp("nuscenes") / "nuscenes")


@pytest.fixture(scope="session")
def curated_run(nuscenes_dataroot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run shared by the test session: the generated dataroot's keyframes and sweeps embedded by the small
    test model at 64 px, indexed and curated (``--select 24`` balanced over location and channel, exported to
    ``to_label.txt`` beside the run folder) by one in-process ``job run``. Read-only: a test that changes a run copies
    it first."""
    from job.cli import main

    out = tmp_path_factory.mktemp("curated") / "run"
    rc = main(["run", "--source", str(nuscenes_dataroot.root), "--include-sweeps", *TEST_MODEL, "--image-size", "64",
               "--out", str(out), "--shard-size", "50", "--no-project", "--workers", "0", "--curate", "--select", "24",
               "--balance", "location,channel", "--export", str(out.parent / "to_label.txt"), "--no-progress",
               "--log-level", "WARNING"])
    assert rc == 0
    return out
