"""Streaming archive reader: member order and bytes, decoders, damaged archives, S3 ranged reads with retries."""
from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
from nuscenes_fixture import pack, upload_file

from job import fsutil
from job.errors import StorageError
from job.sources import archive_reader as archives
from job.sources import remote
from job.sources.archive_reader import ArchiveError, ArchiveReader


def _files(n: int = 12, size: int = 3000) -> dict[str, bytes]:
    import random

    rng = random.Random(0)
    return {f"samples/CAM_FRONT/f{i:03d}.jpg": bytes(rng.getrandbits(8) for _ in range(size + i)) for i in range(n)}


def _write(tmp_path: Path, files: dict[str, bytes], name: str = "a.tgz", prefix: str = "") -> Path:
    for rel, data in files.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_bytes(data)
    return pack(tmp_path / "src", list(files), tmp_path / name, prefix=prefix)


def _read_all(reader: ArchiveReader) -> dict[str, bytes]:
    return {m.name: m.read() for m in reader.members() if m.isfile}


@pytest.mark.parametrize("decoder", ["isal", "gzip"])
@pytest.mark.parametrize("name,prefix", [("a.tgz", ""), ("a.tar.gz", "./"), ("a.tar", "")])
def test_members_in_order_with_bytes(tmp_path, decoder, name, prefix):
    files = _files()
    path = _write(tmp_path, files, name, prefix)
    reader = ArchiveReader(str(path), decoder=decoder)
    got = _read_all(reader)
    assert list(got) == [prefix + k for k in files]
    assert list(got.values()) == list(files.values())
    s = reader.stats
    assert s.complete and s.error is None
    assert s.compressed == (not name.endswith(".tar"))
    assert s.bytes_read == path.stat().st_size
    assert s.bytes_decompressed >= sum(len(v) for v in files.values())


def test_unread_members_are_skipped(tmp_path):
    files = _files()
    path = _write(tmp_path, files)
    reader = ArchiveReader(str(path))
    names = [m.name for m in reader.members()]  # nothing read: tarfile skips the data
    assert [n for n in names if n.endswith(".jpg")] == list(files)
    assert reader.stats.complete


@pytest.mark.parametrize("decoder", ["isal", "gzip"])
def test_truncated_archive_keeps_earlier_members(tmp_path, decoder):
    import random

    rng = random.Random(1)
    files = {f"samples/CAM_FRONT/f{i:03d}.jpg": rng.randbytes(40_000) for i in range(40)}
    path = _write(tmp_path, files)
    data = path.read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(data[: len(data) // 2])
    reader = ArchiveReader(str(cut), decoder=decoder)
    got = {}
    with pytest.raises(ArchiveError, match="archive truncated") as err:
        for m in reader.members():
            if m.isfile:
                got[m.name] = m.read()
    # the gzip decoders lose at most their last block (isal: GZIP_BLOCK) before the break
    assert 5 < len(got) < len(files)
    assert all(files[k] == v for k, v in got.items())
    assert reader.stats.error and not reader.stats.complete
    assert err.value.member is None or err.value.member.endswith(".jpg")


def test_broken_gzip_stream_is_an_error(tmp_path):
    files = _files(20, 5000)
    path = _write(tmp_path, files)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 64] = bytes(b ^ 0x5A for b in data[mid: mid + 64])
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(bytes(data))
    for decoder in ("isal", "gzip"):
        with pytest.raises(ArchiveError, match="broken gzip|corrupt tar|truncated"):
            _read_all(ArchiveReader(str(bad), decoder=decoder))


def test_broken_gzip_crc_is_an_error(tmp_path):
    files = _files(4, 2000)
    path = _write(tmp_path, files)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # CRC32 in the gzip trailer
    bad = tmp_path / "crc.tgz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="broken gzip"):
        _read_all(ArchiveReader(str(bad)))


def test_corrupt_header_mid_archive_is_not_a_silent_end(tmp_path):
    files = _files(10, 2000)
    path = _write(tmp_path, files, "plain.tar")
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as t:
        sixth = [m for m in t.getmembers() if m.isfile()][5]
    data[sixth.offset + 148: sixth.offset + 156] = b"garbage!"  # header checksum
    bad = tmp_path / "hdr.tar"
    bad.write_bytes(bytes(data))
    reader = ArchiveReader(str(bad))
    got = []
    with pytest.raises(ArchiveError, match="corrupt tar archive"):
        for m in reader.members():
            if m.isfile:
                got.append(m.read())
    assert got == list(files.values())[:5]


def test_not_an_archive(tmp_path):
    p = tmp_path / "x.tgz"
    p.write_bytes(gzip.compress(b"hello world, not a tar" * 100))
    with pytest.raises(ArchiveError, match="tar"):
        _read_all(ArchiveReader(str(p)))
    with pytest.raises(ArchiveError, match="missing"):
        _read_all(ArchiveReader(str(tmp_path / "nope.tgz")))


def test_non_regular_member_reader_raises(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("samples/CAM_FRONT/link.jpg")
        ti.type, ti.linkname = tarfile.SYMTYPE, "other.jpg"
        t.addfile(ti)
    p = tmp_path / "l.tar"
    p.write_bytes(buf.getvalue())
    (m,) = list(ArchiveReader(str(p)).members())
    assert not m.isfile
    with pytest.raises(ArchiveError, match="not a regular file"):
        m.read()


@pytest.mark.s3
def test_s3_ranged_reads_with_retry(tmp_path, s3_bucket, monkeypatch):
    files = _files(30, 4000)
    path = _write(tmp_path, files)
    url = upload_file(path, s3_bucket, "public/v1.0/a.tgz")
    import s3fs

    real = s3fs.S3FileSystem.cat_file
    calls = {"n": 0}

    def flaky(self, path, start=None, end=None, **kw):
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise ConnectionResetError("injected transient failure")
        return real(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "cat_file", flaky)
    s3fs.S3FileSystem.clear_instance_cache()  # cached instances carry their own bound sync methods
    monkeypatch.setattr(fsutil, "READ_BACKOFF_S", 0.01)
    reader = ArchiveReader(url, block_size=16 << 10, prefetch=3)
    got = _read_all(reader)
    assert list(got.values()) == list(files.values())
    assert reader.stats.retries == 2
    assert reader.stats.bytes_read == path.stat().st_size
    assert calls["n"] > 5  # many ranged GETs, not one download


def test_retry_gives_up_and_does_not_retry_missing(monkeypatch):
    monkeypatch.setattr(fsutil, "READ_BACKOFF_S", 0.0)
    n = {"calls": 0}

    def boom():
        n["calls"] += 1
        raise TimeoutError("slow")

    with pytest.raises(StorageError, match=r"^GET x failed after 3 tries .*TimeoutError: slow.*run the same command"):
        remote.retry(boom, "GET x", retries=2)
    assert n["calls"] == 3

    def missing():
        n["calls"] += 1
        raise FileNotFoundError("x")

    n["calls"] = 0
    with pytest.raises(FileNotFoundError):
        remote.retry(missing, "x")
    assert n["calls"] == 1
