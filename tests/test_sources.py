"""Sources: folder, s3:// prefix and .tgz archives (local and on a real S3 API) give the same records and metadata."""
from __future__ import annotations

import io
import socket
import tarfile
import threading
from pathlib import Path

import boto3
import pytest

from job import fsutil, sources
from job.config import SourceConfig, UsageError
from job.nuscenes import META_FIELDS
from job.sources import ImageRecord, Selection, fanin, open_source
from job.sources import archive_reader as archives
from nuscenes_fixture import (
    CAMERAS,
    add_orphan_image,
    make_nuscenes_fixture,
    pack,
    pack_mini_archive,
    pack_trainval_archives,
    upload_file,
    upload_tree,
)


def _records(cfg: SourceConfig, skip=frozenset()) -> tuple[list[ImageRecord], object]:
    src = open_source(cfg)
    return list(src.records(skip)), src


def _by_path(recs: list[ImageRecord]) -> dict[str, object]:
    return {r.path: (dict(r.meta) if r.meta is not None else None) for r in recs if r.error is None}


def _expected(info, paths, split=None):
    return {p: dict(info.expected[p], **({"split": split} if split else {})) for p in paths}


@pytest.fixture(scope="module")
def packed(nuscenes_dataroot, tmp_path_factory):
    """The dataroot packed as a mini archive (tables last / first / under ./) and as trainval archives."""
    info = nuscenes_dataroot
    d = tmp_path_factory.mktemp("packed")
    out = {
        "mini": pack_mini_archive(info, d / "v1.0-mini.tgz"),
        "mini_first": pack_mini_archive(info, d / "first" / "v1.0-mini.tgz", tables_first=True),
        "mini_dot": pack_mini_archive(info, d / "dot" / "v1.0-mini.tar", prefix="./"),
    }
    out.update(pack_trainval_archives(info, d / "trainval", parts=3))
    return out


@pytest.fixture(scope="module")
def s3_data(s3_server, nuscenes_dataroot, packed):
    """One bucket holding the extracted dataroot under nuscenes/ and the archives under public/v1.0/."""
    bucket = "nuscenes-test-bucket"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    prefix = upload_tree(nuscenes_dataroot.root, bucket, "nuscenes")
    urls = {"prefix": prefix, "mini": upload_file(packed["mini"], bucket, "public/v1.0/v1.0-mini.tgz")}
    for kind in ("meta", "blobs", "keyframes"):
        urls[kind] = [upload_file(p, bucket, f"public/v1.0/{p.name}") for p in packed[kind]]
    return urls


# --------------------------------------------------------------------------- same records everywhere

@pytest.mark.parametrize("where", ["folder", "samples_subfolder", "mini", "mini_first", "mini_dot", "blobs+meta",
                                   "keyframes+meta_as_source", "blobs+meta_folder"])
def test_local_sources_agree(nuscenes_dataroot, packed, where):
    info = nuscenes_dataroot
    root = str(info.root)
    cfg = {
        "folder": SourceConfig(sources=(root,)),
        "samples_subfolder": SourceConfig(sources=(root + "/samples",)),
        "mini": SourceConfig(sources=(str(packed["mini"]),)),
        "mini_first": SourceConfig(sources=(str(packed["mini_first"]),)),
        "mini_dot": SourceConfig(sources=(str(packed["mini_dot"]),)),
        "blobs+meta": SourceConfig(sources=tuple(map(str, packed["blobs"])), nuscenes_meta=str(packed["meta"][0])),
        "keyframes+meta_as_source": SourceConfig(sources=(str(packed["meta"][0]),) + tuple(map(str, packed["keyframes"]))),
        "blobs+meta_folder": SourceConfig(sources=tuple(map(str, packed["blobs"])),
                                          nuscenes_meta=str(info.root / info.version)),
    }[where]
    recs, src = _records(cfg)
    assert src.meta_fields == META_FIELDS
    assert _by_path(recs) == _expected(info, info.keyframes)
    assert len(recs) == len(info.keyframes)  # each exactly once, no error records
    st = src.stats()
    assert st["images"] == len(info.keyframes) and st["images_without_metadata"] == 0 and not st["errors"]
    if where.startswith("mini") and where != "mini_first":
        assert any(p.get("spooled_images") for p in st["inputs"])  # tables came after the images
    if where == "mini_first":
        assert not any(p.get("spooled_images") for p in st["inputs"])


@pytest.mark.s3
@pytest.mark.parametrize("where", ["prefix", "mini", "blobs_glob+meta", "keyframes+meta_as_source"])
def test_s3_sources_agree(nuscenes_dataroot, s3_data, where):
    info = nuscenes_dataroot
    bucket_url = s3_data["mini"].rsplit("/public/", 1)[0]
    cfg = {
        "prefix": SourceConfig(sources=(s3_data["prefix"],)),
        "mini": SourceConfig(sources=(s3_data["mini"],)),
        "blobs_glob+meta": SourceConfig(sources=(f"{bucket_url}/public/v1.0/v1.0-trainval0*_blobs.tgz",),
                                        nuscenes_meta=s3_data["meta"][0]),
        "keyframes+meta_as_source": SourceConfig(sources=tuple(s3_data["meta"] + s3_data["keyframes"])),
    }[where]
    recs, src = _records(cfg)
    assert _by_path(recs) == _expected(info, info.keyframes)
    assert len(recs) == len(info.keyframes)
    if where == "prefix":
        assert all(r.data == (info.root / r.path).read_bytes() for r in recs)


@pytest.mark.s3
def test_s3_prefix_with_sweeps_and_limit(nuscenes_dataroot, s3_data):
    info = nuscenes_dataroot
    recs, _ = _records(SourceConfig(sources=(s3_data["prefix"],), keyframes_only=False))
    assert _by_path(recs) == _expected(info, info.images)
    recs, _ = _records(SourceConfig(sources=(s3_data["prefix"],), limit=7))
    assert [r.path for r in recs] == info.keyframes[:7]


def test_folder_records_point_at_files(nuscenes_dataroot):
    recs, src = _records(SourceConfig(sources=(str(nuscenes_dataroot.root),)))
    assert all(r.url == str(nuscenes_dataroot.root / r.path) and r.data is None for r in recs)
    assert [r.path for r in recs] == nuscenes_dataroot.keyframes  # source order: sorted
    assert src.total == len(nuscenes_dataroot.keyframes)


def test_archive_bytes_are_the_files(nuscenes_dataroot, packed):
    recs, _ = _records(SourceConfig(sources=(str(packed["mini"]),), keyframes_only=False))
    assert len(recs) == len(nuscenes_dataroot.images)
    assert all(r.data == (nuscenes_dataroot.root / r.path).read_bytes() for r in recs)


# --------------------------------------------------------------------------- filters

def test_lidar_radar_and_maps_never_yielded(nuscenes_dataroot, packed):
    for cfg in (SourceConfig(sources=(str(nuscenes_dataroot.root),), keyframes_only=False),
                SourceConfig(sources=tuple(map(str, packed["blobs"])), keyframes_only=False,
                             nuscenes_meta=str(packed["meta"][0]))):
        recs, src = _records(cfg)
        paths = {r.path for r in recs}
        assert paths == set(nuscenes_dataroot.images)
        assert not paths & set(nuscenes_dataroot.non_images) and not any(p.startswith("maps/") for p in paths)
    assert src.stats()["members_skipped"] > len(nuscenes_dataroot.non_images)


def test_selection_follows_the_nuscenes_layout():
    sel = Selection(frozenset({"CAM_FRONT"}), keyframes_only=True)
    assert sel.wants("samples/CAM_FRONT/a.jpg") and not sel.wants("samples/CAM_BACK/a.jpg")
    assert not sel.wants("sweeps/CAM_FRONT/a.jpg")
    assert Selection(frozenset({"CAM_FRONT"}), keyframes_only=False).wants("sweeps/CAM_FRONT/a.jpg")
    assert not sel.wants("sweeps/LIDAR_TOP/a.pcd.bin") and not sel.wants("samples/LIDAR_TOP/a.jpg")
    assert not sel.wants("maps/x.png") and not sel.wants("v1.0-mini/x.png")
    assert sel.wants("CAM_FRONT/frame_000.jpg") and sel.wants("a.jpg")  # a plain folder of pictures


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_channel_and_sweep_filters(nuscenes_dataroot, packed, kind):
    info = nuscenes_dataroot
    source = str(info.root) if kind == "folder" else str(packed["mini"])
    recs, _ = _records(SourceConfig(sources=(source,), channels=("CAM_FRONT", "CAM_BACK"), keyframes_only=False))
    want = [p for p in info.images if p.split("/")[1] in ("CAM_FRONT", "CAM_BACK")]
    assert _by_path(recs) == _expected(info, want)
    assert {r.meta["is_key_frame"] for r in recs} == {True, False}
    assert {r.meta["channel"] for r in recs} == {"CAM_FRONT", "CAM_BACK"}


@pytest.mark.parametrize("kind", ["folder", "mini", "blobs"])
def test_scene_filter_by_name_and_token(nuscenes_dataroot, packed, kind):
    info = nuscenes_dataroot
    night = [s for s in info.scenes if "Night" in s["description"]]
    assert len(night) >= 2
    keys = (night[0]["name"], night[1]["token"])
    src = {"folder": dict(sources=(str(info.root),)), "mini": dict(sources=(str(packed["mini"]),)),
           "blobs": dict(sources=tuple(map(str, packed["blobs"])), nuscenes_meta=str(packed["meta"][0]))}[kind]
    recs, _ = _records(SourceConfig(scenes=keys, **src))
    want = [p for p in info.keyframes if info.expected[p]["scene_token"] in {night[0]["token"], night[1]["token"]}]
    assert _by_path(recs) == _expected(info, want)


@pytest.mark.parametrize("kind", ["folder", "mini", "mini_first"])
def test_limit_takes_the_first_n_in_source_order(nuscenes_dataroot, packed, kind):
    info = nuscenes_dataroot
    source = str(info.root) if kind == "folder" else str(packed[kind])
    recs, src = _records(SourceConfig(sources=(source,), limit=5))
    assert len(recs) == 5
    if kind == "folder":
        assert [r.path for r in recs] == info.keyframes[:5]
    assert all(r.meta == info.expected[r.path] for r in recs)  # metadata even when the tables come last
    # a resumed run: the first 2 are done; the limit still means the same 5 images
    again, _ = _records(SourceConfig(sources=(source,), limit=5), skip={r.path for r in recs[:2]})
    assert [r.path for r in again] == [r.path for r in recs[2:]]


def test_limit_with_scenes_counts_only_matching(nuscenes_dataroot, packed):
    info = nuscenes_dataroot
    scene = info.scenes[-1]
    recs, _ = _records(SourceConfig(sources=(str(packed["mini"]),), scenes=(scene["name"],), limit=4))
    assert len(recs) == 4 and {r.meta["scene_name"] for r in recs} == {scene["name"]}


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("kind", ["folder", "mini", "mini_first", "blobs"])
def test_skip_set_is_honoured(nuscenes_dataroot, packed, kind):
    info = nuscenes_dataroot
    src = {"folder": dict(sources=(str(info.root),)), "mini": dict(sources=(str(packed["mini"]),)),
           "mini_first": dict(sources=(str(packed["mini_first"]),)),
           "blobs": dict(sources=tuple(map(str, packed["blobs"])), nuscenes_meta=str(packed["meta"][0]))}[kind]
    skip = set(info.keyframes[::3])
    recs, s = _records(SourceConfig(**src), skip=skip)
    assert _by_path(recs) == _expected(info, [p for p in info.keyframes if p not in skip])
    assert s.stats()["skipped_done"] == len(skip)


# --------------------------------------------------------------------------- faults

def test_image_without_metadata_row_is_kept(tmp_path):
    info = make_nuscenes_fixture(tmp_path / "ds", n_logs=1, scenes_per_log=1, samples_per_scene=2)
    orphan = add_orphan_image(info)
    for source in (str(info.root), str(pack(info.root, sorted(info.files() + [orphan]), tmp_path / "m.tgz"))):
        recs, src = _records(SourceConfig(sources=(source,)))
        got = _by_path(recs)
        assert got.pop(orphan) is None
        assert got == _expected(info, info.keyframes)
        st = src.stats()
        assert st["images_without_metadata"] == 1 and any("no sample_data row" in w for w in st["warnings"])


def test_blobs_without_tables_keep_empty_metadata(nuscenes_dataroot, packed):
    recs, src = _records(SourceConfig(sources=tuple(map(str, packed["keyframes"]))))
    assert set(_by_path(recs)) == set(nuscenes_dataroot.keyframes)
    assert all(r.meta is None for r in recs)
    st = src.stats()
    assert st["images_without_metadata"] == len(recs) and any("--nuscenes-meta" in w for w in st["warnings"])
    assert not any(p.get("spooled_images") for p in st["inputs"])  # blobs never wait for tables


def test_truncated_archive_keeps_earlier_records(nuscenes_dataroot, tmp_path):
    info = nuscenes_dataroot
    big = make_nuscenes_fixture(tmp_path / "big", n_logs=2, scenes_per_log=2, samples_per_scene=4,
                                sweeps_per_sample=0, width=320, height=180)
    full = pack_mini_archive(big, tmp_path / "full.tgz", tables_first=True)
    data = full.read_bytes()
    cut = tmp_path / "v1.0-mini.tgz"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    recs, src = _records(SourceConfig(sources=(str(cut),)))
    good = [r for r in recs if r.error is None]
    bad = [r for r in recs if r.error is not None]
    assert len(bad) == 1 and bad[0].error.startswith("archive truncated")
    assert 5 < len(good) < len(big.keyframes)
    assert all(r.data == (big.root / r.path).read_bytes() and r.meta == big.expected[r.path] for r in good)
    st = src.stats()
    assert st["errors"] and st["inputs"][0]["error"] and not st["inputs"][0]["complete"]
    # resume: the failure path was committed, the archive is read again without duplicates
    again, _ = _records(SourceConfig(sources=(str(cut),)), skip={r.path for r in recs})
    assert again == []
    del info


def test_broken_gzip_in_one_archive_does_not_stop_the_others(nuscenes_dataroot, packed, tmp_path):
    info = nuscenes_dataroot
    first, second, third = packed["keyframes"]
    data = bytearray(second.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 200] = bytes(200)
    broken = tmp_path / second.name
    broken.write_bytes(bytes(data))
    recs, src = _records(SourceConfig(sources=(str(first), str(broken), str(third)),
                                      nuscenes_meta=str(packed["meta"][0])))
    errors = [r for r in recs if r.error]
    assert len(errors) == 1 and errors[0].error.split(":")[0] in ("broken gzip stream", "corrupt tar archive",
                                                                   "archive truncated")
    paths = [r.path for r in recs if not r.error]
    assert len(paths) == len(set(paths))
    with tarfile.open(first) as t1, tarfile.open(third) as t3:
        intact = {n for t in (t1, t3) for n in t.getnames() if n.endswith(".jpg") and "/CAM_" in n}
    assert intact <= set(paths)
    assert all(info.expected[p] == r.meta for r in recs if not r.error for p in [r.path])


def test_corrupt_and_unreadable_members(nuscenes_dataroot, tmp_path):
    info = nuscenes_dataroot
    good = info.keyframes[:3]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for rel in good:
            data = (info.root / rel).read_bytes()
            ti = tarfile.TarInfo(rel)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo(info.keyframes[3])
        link.type, link.linkname = tarfile.SYMTYPE, good[0]
        t.addfile(link)
        junk = b"\xff\xd8 not really a jpeg"
        ti = tarfile.TarInfo(info.keyframes[4])
        ti.size = len(junk)
        t.addfile(ti, io.BytesIO(junk))
    p = tmp_path / "odd.tgz"
    p.write_bytes(buf.getvalue())
    recs, src = _records(SourceConfig(sources=(str(p),), nuscenes_meta=str(info.root)))
    by = {r.path: r for r in recs}
    assert by[info.keyframes[3]].error.startswith("archive member unreadable")
    assert by[info.keyframes[4]].data == junk and by[info.keyframes[4]].error is None  # the decoder reports it
    assert all(by[r].data == (info.root / r).read_bytes() for r in good)
    assert src.stats()["inputs"][0]["unreadable_members"] == 1


# --------------------------------------------------------------------------- concurrency

def test_many_archives_each_record_exactly_once(tmp_path, monkeypatch):
    info = make_nuscenes_fixture(tmp_path / "ds", n_logs=4, scenes_per_log=2, samples_per_scene=2,
                                 sweeps_per_sample=1, split="v1.0-trainval")
    arch = pack_trainval_archives(info, tmp_path / "a", parts=4)
    monkeypatch.setattr(fanin, "QUEUE_SIZE", 4)  # force the readers to block on the consumer
    seen_threads = set()
    real = sources.Archive.produce

    def produce(self, p):
        seen_threads.add(threading.current_thread().name)
        yield from real(self, p)

    monkeypatch.setattr(sources.Archive, "produce", produce)
    recs, src = _records(SourceConfig(sources=tuple(map(str, arch["blobs"])), keyframes_only=False,
                                      nuscenes_meta=str(arch["meta"][0])))
    paths = [r.path for r in recs]
    assert len(paths) == len(set(paths)) == len(info.images)
    assert _by_path(recs) == _expected(info, info.images)
    assert len(seen_threads) == 4
    assert src.stats()["archives_read"] == 4


def test_closing_early_stops_the_readers(nuscenes_dataroot, packed):
    before = threading.active_count()
    src = open_source(SourceConfig(sources=tuple(map(str, packed["blobs"])), keyframes_only=False,
                                   nuscenes_meta=str(packed["meta"][0])))
    it = src.records()
    first = [next(it) for _ in range(3)]
    it.close()
    assert len(first) == 3
    import time

    for _ in range(100):
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() <= before


# --------------------------------------------------------------------------- configuration errors

def test_config_errors(tmp_path, nuscenes_dataroot, image_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "missing.tgz"): "does not exist",
        str(tmp_path / "empty"): "holds no wanted image files",
        str(tmp_path / "file.txt"): "not a .tgz/.tar archive",
        str(tmp_path / "nothing*.tgz"): "matches nothing",
        "gs://bucket/x.tgz": "unsupported source",
        "https://example.com/v1.0-mini.tgz": "unsupported source",
    }
    for uri, msg in cases.items():
        with pytest.raises(UsageError, match=msg) as err:
            open_source(SourceConfig(sources=(uri,)))
        assert "\n" not in str(err.value)
        if "unsupported" in msg or "exist" in msg:
            assert "valid" in str(err.value)
    with pytest.raises(UsageError, match="'LIDAR_TOP' is not a camera"):  # a config that cannot exist
        SourceConfig(sources=(str(image_dir),), channels=("LIDAR_TOP",))
    with pytest.raises(UsageError, match="--scenes needs the nuScenes tables"):
        open_source(SourceConfig(sources=(str(image_dir),), scenes=("scene-0061",)))
    with pytest.raises(UsageError, match="unknown scene"):
        open_source(SourceConfig(sources=(str(nuscenes_dataroot.root),), scenes=("scene-9999",)))
    with pytest.raises(UsageError, match="--nuscenes-meta"):
        open_source(SourceConfig(sources=(str(image_dir),), nuscenes_meta=str(tmp_path / "nope")))
    with pytest.raises(UsageError, match="holds no nuScenes tables"):
        open_source(SourceConfig(sources=(str(image_dir),), nuscenes_meta=str(tmp_path / "empty")))


def test_only_meta_archive_is_an_error(packed):
    with pytest.raises(UsageError, match="only nuScenes metadata archives"):
        open_source(SourceConfig(sources=(str(packed["meta"][0]),)))


def test_generic_image_folder(image_dir):
    recs, src = _records(SourceConfig(sources=(str(image_dir),)))
    assert src.meta_fields == ()
    assert sorted(r.path for r in recs) == sorted(p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*.jpg"))
    assert all(r.meta is None for r in recs)


def test_local_sources_touch_no_network(nuscenes_dataroot, packed, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network access while reading local sources")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for cfg in (SourceConfig(sources=(str(nuscenes_dataroot.root),)),
                SourceConfig(sources=(str(packed["mini"]),)),
                SourceConfig(sources=tuple(map(str, packed["keyframes"])), nuscenes_meta=str(packed["meta"][0]))):
        recs, _ = _records(cfg)
        assert len(recs) == len(nuscenes_dataroot.keyframes)


@pytest.mark.s3
def test_s3_prefix_read_retries_and_read_errors(nuscenes_dataroot, s3_data, monkeypatch):
    import s3fs

    real = s3fs.S3FileSystem.cat_file
    failed = set()

    def flaky(self, path, start=None, end=None, **kw):
        if path.endswith(".jpg") and path not in failed:
            failed.add(path)
            raise ConnectionResetError("injected")
        if "CAM_BACK_LEFT" in path:
            raise PermissionError("denied")
        return real(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "cat_file", flaky)
    s3fs.S3FileSystem.clear_instance_cache()  # cached instances carry their own bound sync methods
    monkeypatch.setattr(fsutil, "READ_BACKOFF_S", 0.0)
    recs, src = _records(SourceConfig(sources=(s3_data["prefix"],)))
    errors = {r.path for r in recs if r.error}
    assert errors == {p for p in nuscenes_dataroot.keyframes if "CAM_BACK_LEFT" in p}
    assert all(r.error.startswith("read error: PermissionError") for r in recs if r.error)
    assert len(recs) == len(nuscenes_dataroot.keyframes)
    assert src.stats()["inputs"][0]["retries"] >= len(nuscenes_dataroot.keyframes) - len(errors)


def test_camera_list_matches_config():
    from job.values import CAMERA_CHANNELS

    assert set(CAMERAS) == set(CAMERA_CHANNELS)


def test_pack_helper_roundtrip(tmp_path, nuscenes_dataroot):
    out = pack(nuscenes_dataroot.root, nuscenes_dataroot.keyframes[:2], tmp_path / "x.tar")
    with tarfile.open(out) as t:
        assert [n for n in t.getnames() if n.endswith(".jpg")] == nuscenes_dataroot.keyframes[:2]
    assert isinstance(Path(out), Path)
