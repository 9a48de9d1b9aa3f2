"""Progress of a ``.tgz`` stream, whose image count is known only at its end: the total is estimated from the bytes
read (source), written to ``_STATUS`` as ``total_estimated`` with an ETA (status writer, a real run), summed over
shards and shown with ``~`` by ``job status``."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import boto3
import pytest

from conftest import TEST_MODEL, jpeg_bytes
from job.status import writer as status_mod
from job.cli import main
from job.config import SourceConfig
from job.sources import open_source
from job.status import StatusWriter
from job.status import aggregate, format_run_status, format_status


def typed(docs: dict) -> dict:
    """Status documents as ``job.status.read_status`` returns them."""
    import msgspec

    from job.runfolder import StatusDoc

    return {i: msgspec.convert(d, type=StatusDoc) for i, d in docs.items()}

N = 80  # camera images in the padded archive
PAD = 512 << 10  # random (incompressible, like JPEGs) LIDAR bytes after each image: ~42 MB in all


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A blobs-like archive: N small camera JPEGs, each followed by a LIDAR file the source skips (but reads)."""
    path = tmp_path_factory.mktemp("padded") / "v1.0-test01_blobs.tgz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for i in range(N):
            for rel, data in ((f"samples/CAM_FRONT/n{i:03d}__CAM_FRONT__{i}.jpg", jpeg_bytes(64, 36, seed=i)),
                              (f"samples/LIDAR_TOP/n{i:03d}__LIDAR_TOP__{i}.pcd.bin", os.urandom(PAD))):
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_stream_estimates_its_total_from_the_bytes_read(padded: Path) -> None:
    src = open_source(SourceConfig(sources=(str(padded),)))
    assert src.total is None and src.estimated_total() is None  # nothing read yet
    seen: list[tuple[int, int | None]] = []
    for k, _ in enumerate(src.records(), 1):
        seen.append((k, src.estimated_total()))
        assert src.total is None  # the exact total stays unknown while streaming
    assert len(seen) == N
    assert src.estimated_total() == N  # the whole archive read: exact
    # Read-ahead (a few MiB, more on a busy machine) counts as read: the estimate runs low by what is buffered, a
    # shrinking share of what was read. The arithmetic itself is checked exactly below.
    errors = [abs(e - N) / N for k, e in seen if k >= N // 2 and e is not None]
    assert len(errors) == N - N // 2 + 1 and max(errors) <= 0.25, seen
    assert max(abs(e - N) / N for k, e in seen[-N // 16:] if e is not None) <= 0.1, seen  # the last 5


def test_estimate_arithmetic(padded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images met so far plus the unread bytes at the density met so far, over every archive; listed parts exact."""
    from job.sources.archive import Archive

    other = tmp_path / "v1.0-test02_blobs.tgz"
    other.write_bytes(padded.read_bytes())
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(5):
        (folder / f"f{i}.jpg").write_bytes(jpeg_bytes(32, 18, seed=i))
    src = open_source(SourceConfig(sources=(str(padded), str(other), str(folder))))
    a, b = [pt for pt in src.inputs if isinstance(pt, Archive)]
    size = padded.stat().st_size
    progress = {a.url: (0, 0), b.url: (0, 0)}
    monkeypatch.setattr(Archive, "read_so_far", lambda self: progress[self.url])
    assert src.estimated_total() is None  # nothing read: no density yet
    progress[a.url] = (10, size // 4)  # a quarter of one archive: 10 images -> 40 per archive
    assert src.estimated_total() == 5 + 10 + round(10 * (2 * size - size // 4) / (size // 4))
    progress[a.url], progress[b.url] = (N, size), (N // 2, size // 2)
    assert src.estimated_total() == 5 + N + N // 2 + round((N + N // 2) * (size // 2) / (size + size // 2))
    progress[b.url] = (N, size)
    assert src.estimated_total() == 5 + 2 * N  # everything read: exact


def test_estimate_is_capped_by_the_limit_and_absent_with_scenes(padded: Path, nuscenes_dataroot, tmp_path: Path) -> None:
    from nuscenes_fixture import pack_mini_archive

    src = open_source(SourceConfig(sources=(str(padded),), limit=10))
    records = list(src.records())
    assert len(records) == 10 and src.estimated_total() == 10
    mini = pack_mini_archive(nuscenes_dataroot, tmp_path / "v1.0-mini.tgz")
    scene = sorted(nuscenes_dataroot.expected[p]["scene_name"] for p in nuscenes_dataroot.keyframes)[0]
    src = open_source(SourceConfig(sources=(str(mini),), scenes=(scene,)))
    assert list(src.records()) and src.estimated_total() is None  # images per byte say nothing about one scene


def test_s3_archive_size_comes_from_the_object(s3_server: str, padded: Path) -> None:
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="estimate-bucket")
    boto3.client("s3", endpoint_url=s3_server).upload_file(str(padded), "estimate-bucket", f"v1.0/{padded.name}")
    src = open_source(SourceConfig(sources=(f"s3://estimate-bucket/v1.0/{padded.name}",)))
    assert src.inputs[0].size == padded.stat().st_size
    assert len(list(src.records())) == N and src.estimated_total() == N


def test_status_writer_reports_an_estimated_total_and_its_eta(tmp_path: Path) -> None:
    w = StatusWriter.open(str(tmp_path))
    w.phase("embed")
    w.progress(10, None, 1, 5.0, estimated_total=100, force=True)
    doc = json.loads((tmp_path / "_STATUS").read_text())
    p = doc["progress"]
    assert (p["done"], p["total"], p["total_estimated"], p["eta_s"]) == (10, None, 100, 18)
    text = format_status(doc, [])
    assert "images  10/~100 (10.0%), 1 failed, 5.0 images/s, ETA 0m18s (estimated from the bytes read)" in text
    w.progress(30, None, 1, 5.0, estimated_total=25, force=True)  # an estimate below what is done: done
    p = json.loads((tmp_path / "_STATUS").read_text())["progress"]
    assert (p["total_estimated"], p["eta_s"]) == (30, 0)
    w.progress(40, 40, 1, 5.0, estimated_total=39, force=True)  # an exact total wins
    p = json.loads((tmp_path / "_STATUS").read_text())["progress"]
    assert p["total"] == 40 and "total_estimated" not in p
    w.progress(40, None, 1, 5.0, force=True)  # nothing known: no total, no ETA
    p = json.loads((tmp_path / "_STATUS").read_text())["progress"]
    assert p["total"] is None and p["eta_s"] is None and "total_estimated" not in p
    assert "images  40 done, 1 failed, 5.0 images/s" in format_status(json.loads((tmp_path / "_STATUS").read_text()), [])


def test_split_run_sums_estimated_totals() -> None:
    def shard(i: int, status: str, progress: dict) -> dict:
        return {"status": status, "shard": [i, 3], "phase": "embed", "progress": progress}

    shards = {
        0: shard(0, "succeeded", {"done": 50, "total": None, "total_estimated": 50, "failed": 0}),
        1: shard(1, "running", {"done": 20, "total": None, "total_estimated": 60, "failed": 0, "images_per_s": 2.0,
                                "eta_s": 20}),
        2: shard(2, "running", {"done": 10, "total": 40, "failed": 0, "images_per_s": 1.0, "eta_s": 30}),
    }
    doc = aggregate(typed(shards), None)
    p = doc["progress"]
    assert (p["done"], p["total"], p["total_estimated"], p["eta_s"]) == (80, None, 150, 30)
    text = format_run_status(doc, [])
    assert "images  80/~150 (53.3%), 0 failed, 3.0 images/s, ETA 0m30s (slowest shard)" in text
    assert any(line.startswith("shard 1") and "20/~60 (33.3%)" in line for line in text.splitlines())
    del shards[2]["progress"]["total"]  # one shard knows nothing yet: no total of any kind
    assert "total_estimated" not in aggregate(typed(shards), None)["progress"]


@pytest.mark.slow
def test_a_run_on_an_archive_writes_an_estimated_total_while_embedding(padded: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_mod, "PROGRESS_EVERY_S", 0.0)
    written: list[dict] = []
    real_write = StatusWriter._write

    def spy(self: StatusWriter) -> None:
        if "progress" in self.doc:
            written.append(dict(self.doc["progress"]))
        real_write(self)

    monkeypatch.setattr(StatusWriter, "_write", spy)
    run = tmp_path / "run"
    assert main(["run", "--source", str(padded), *TEST_MODEL, "--image-size", "64", "--batch-size", "4",
                 "--out", str(run), "--no-project", "--index-type", "flat", "--no-progress",
                 "--log-level", "WARNING"]) == 0
    mid = [p for p in written if N // 4 <= p["done"] < N]
    assert mid, written
    for p in mid:
        assert p["total"] is None and abs(p["total_estimated"] - N) <= 0.15 * N and p["eta_s"] is not None, p
    final = json.loads((run / "_STATUS").read_text())["progress"]
    assert final["done"] == N and final["total_estimated"] == N
