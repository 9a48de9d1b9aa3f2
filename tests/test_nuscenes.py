"""nuScenes tables: loading (chunked, msgspec or stdlib), the join, path helpers, the metadata schema."""
from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from nuscenes_fixture import add_orphan_image, make_nuscenes_fixture, pack_trainval_archives

from job import nuscenes as ns
from job.nuscenes import jsonstream
from job.runfolder import embedding_schema


def _builder_from_dir(d: Path, version: str, **kw) -> ns.TablesBuilder:
    b = ns.TablesBuilder(version, **kw)
    for t in ns.NEEDED_TABLES:
        b.add(t, (d / f"{t}.json").read_bytes())
    return b


def test_join_matches_the_tables_for_every_image(nuscenes_dataroot):
    info = nuscenes_dataroot
    fs = fsspec.filesystem("file")
    tables = ns.load_tables_dir(fs, str(info.root / info.version))
    assert tables.version == "v1.0-mini"
    assert len(tables) == len(info.images)  # LIDAR/RADAR rows are not kept
    for path in info.images:
        assert tables.lookup(path) == info.expected[path]
    for path in info.non_images:
        assert tables.lookup(path) is None
    assert tables.lookup("samples/CAM_FRONT/not-there.jpg") is None
    nights = {m["scene_name"] for m in info.expected.values() if "Night" in m["scene_description"]}
    assert nights and {m["location"] for m in info.expected.values()} >= {"boston-seaport", "singapore-onenorth"}


def _ego(sd: dict, by: dict) -> dict:
    """ego_x, ego_y and the speed from the previous frame (sample_data.prev), straight from the raw rows."""
    pose = by["ego_pose"][sd["ego_pose_token"]]
    speed = None
    if sd["prev"]:
        prev = by["ego_pose"][by["sample_data"][sd["prev"]]["ego_pose_token"]]
        dx, dy = pose["translation"][0] - prev["translation"][0], pose["translation"][1] - prev["translation"][1]
        speed = float(np.hypot(dx, dy)) / ((pose["timestamp"] - prev["timestamp"]) / 1e6)
    return {"ego_x": pose["translation"][0], "ego_y": pose["translation"][1], "ego_speed": speed}


def test_expected_metadata_is_what_the_raw_tables_say(nuscenes_dataroot):
    """Cross-check the fixture's expectations against an independent join of the JSON files."""
    info = nuscenes_dataroot
    t = {name: json.loads((info.root / info.version / f"{name}.json").read_text()) for name in ns.NEEDED_TABLES}
    by = {name: {r["token"]: r for r in rows} for name, rows in t.items()}
    tables = ns.load_tables_dir(fsspec.filesystem("file"), str(info.root / info.version))
    for sd in t["sample_data"]:
        if not sd["filename"].endswith(".jpg"):
            continue
        sample = by["sample"][sd["sample_token"]]
        scene = by["scene"][sample["scene_token"]]
        lg = by["log"][scene["log_token"]]
        sensor = by["sensor"][by["calibrated_sensor"][sd["calibrated_sensor_token"]]["sensor_token"]]
        assert tables.lookup(sd["filename"]) == {
            "sample_data_token": sd["token"], "sample_token": sample["token"], "scene_token": scene["token"],
            "scene_name": scene["name"], "scene_description": scene["description"], "channel": sensor["channel"],
            "timestamp": sd["timestamp"], "is_key_frame": sd["is_key_frame"], "location": lg["location"],
            "logfile": lg["logfile"], "date_captured": lg["date_captured"], "split": "v1.0-mini",
            **_ego(sd, by),
        }


@pytest.mark.parametrize("chunk", [97, 1000, 1 << 20])
def test_chunked_parse_equals_whole_parse(nuscenes_dataroot, chunk):
    info = nuscenes_dataroot
    d = info.root / info.version
    whole = _builder_from_dir(d, info.version).build()
    small = _builder_from_dir(d, info.version, chunk_bytes=chunk).build()
    for p in info.images:
        assert small.lookup(p) == whole.lookup(p)


def test_compact_json_and_stdlib_fallback(nuscenes_dataroot, tmp_path, monkeypatch):
    info = nuscenes_dataroot
    d = tmp_path / "v1.0-mini"
    d.mkdir()
    for t in ns.NEEDED_TABLES:
        rows = json.loads((info.root / info.version / f"{t}.json").read_text())
        (d / f"{t}.json").write_text(json.dumps(rows, separators=(",", ":")))
    fast = _builder_from_dir(d, "v1.0-mini", chunk_bytes=300).build()
    monkeypatch.setattr(jsonstream, "msgspec", None)
    slow = _builder_from_dir(d, "v1.0-mini", chunk_bytes=300).build()
    for p in info.images:
        assert fast.lookup(p) == slow.lookup(p) == info.expected[p]


def test_array_slices_are_valid_json():
    rows = [{"token": f"t{i}", "filename": f"samples/CAM_FRONT/x__CAM_FRONT__{i}.jpg"} for i in range(50)]
    data = json.dumps(rows, indent=0).encode()
    pos = 0

    def read(n):
        nonlocal pos
        out = data[pos:pos + n]
        pos += len(out)
        return out

    slices = list(ns.iter_array_slices(read, 64))
    assert len(slices) > 5
    assert [r for s in slices for r in json.loads(s)] == rows
    odd = b"[\n" + b"\n ,".join(json.dumps(r).encode() for r in rows) + b"\n]\n"  # "}<ws>," boundaries
    pos = 0
    data = odd
    assert [r for s in ns.iter_array_slices(read, 50) for r in json.loads(s)] == rows
    chunks = iter([b" [ ] ", b""])
    assert list(ns.iter_array_slices(lambda n: next(chunks))) == []


def test_broken_tables_raise_tables_error(nuscenes_dataroot, tmp_path):
    info = nuscenes_dataroot
    b = ns.TablesBuilder("v1.0-mini")
    data = (info.root / info.version / "sample_data.json").read_bytes()
    with pytest.raises(ns.TablesError, match="sample_data.json"):
        b.add("sample_data", data[: len(data) // 2])
    b = ns.TablesBuilder("v1.0-mini")
    b.add("scene", (info.root / info.version / "scene.json").read_bytes())
    with pytest.raises(ns.TablesError, match="missing table"):
        b.build()
    with pytest.raises(ns.TablesError, match="missing table"):
        ns.load_tables_dir(fsspec.filesystem("file"), str(tmp_path))


def test_keep_filter_limits_rows(nuscenes_dataroot):
    info = nuscenes_dataroot
    d = info.root / info.version
    only_front = _builder_from_dir(d, info.version,
                                   keep=lambda f: f.startswith("samples/CAM_FRONT/")).build()
    fronts = [p for p in info.keyframes if p.startswith("samples/CAM_FRONT/")]
    assert len(only_front) == len(fronts)
    assert only_front.lookup(fronts[0]) == info.expected[fronts[0]]


def test_meta_index_prefers_trainval_and_finds_version_dirs(tmp_path):
    mini = make_nuscenes_fixture(tmp_path / "root", n_logs=1, scenes_per_log=1, samples_per_scene=1,
                                 sweeps_per_sample=0, split="v1.0-mini")
    trainval = make_nuscenes_fixture(tmp_path / "root", n_logs=1, scenes_per_log=1, samples_per_scene=1,
                                     sweeps_per_sample=0, split="v1.0-trainval")
    fs = fsspec.filesystem("file")
    dirs = ns.find_version_dirs(fs, str(tmp_path / "root"))
    assert [d.rsplit("/", 1)[-1] for d in dirs] == ["v1.0-trainval", "v1.0-mini"]
    index = ns.MetaIndex([ns.load_tables_dir(fs, d) for d in reversed(dirs)])
    assert index.versions == ["v1.0-trainval", "v1.0-mini"]
    assert index.lookup(mini.keyframes[0])["split"] == "v1.0-trainval"
    assert trainval.keyframes == mini.keyframes
    assert "scene-0061" in index.scene_keys()


def test_orphan_image_has_no_row(tmp_path):
    info = make_nuscenes_fixture(tmp_path / "ds", n_logs=1, scenes_per_log=1, samples_per_scene=1)
    orphan = add_orphan_image(info)
    tables = ns.load_tables_dir(fsspec.filesystem("file"), str(info.root / info.version))
    assert orphan not in tables and tables.lookup(orphan) is None


@pytest.mark.parametrize("raw,rel", [
    ("./samples/CAM_FRONT/a.jpg", "samples/CAM_FRONT/a.jpg"),
    ("nuscenes/samples/CAM_FRONT/a.jpg", "samples/CAM_FRONT/a.jpg"),
    ("data/sets/nuscenes/v1.0-mini/scene.json", "v1.0-mini/scene.json"),
    ("./maps/x.png", "maps/x.png"),
    ("CAM_FRONT/frame_000.jpg", "CAM_FRONT/frame_000.jpg"),
    ("a//b/./c.jpg", "a/b/c.jpg"),
])
def test_dataroot_relative(raw, rel):
    assert ns.dataroot_relative(raw) == rel


def test_path_helpers():
    assert ns.is_version_dir("v1.0-trainval") and ns.is_version_dir("v1.0-mini") and not ns.is_version_dir("samples")
    assert ns.version_order(["v1.0-mini", "v2.0-x", "v1.0-trainval"]) == ["v1.0-trainval", "v1.0-mini", "v2.0-x"]
    assert ns.table_of("v1.0-trainval/sample_data.json") == ("v1.0-trainval", "sample_data")
    assert ns.table_of("maps/expansion/boston-seaport.json") is None
    assert not ns.is_image_name("samples/LIDAR_TOP/x.pcd.bin") and ns.is_image_name("a/B.JPG")


def test_meta_fields_fit_the_embedding_schema(nuscenes_dataroot):
    assert ns.META_NAMES == ("sample_data_token", "sample_token", "scene_token", "scene_name", "scene_description",
                             "channel", "timestamp", "is_key_frame", "location", "logfile", "date_captured", "split",
                             "ego_x", "ego_y", "ego_speed")
    schema = embedding_schema(8, ns.META_FIELDS)
    assert schema.field("timestamp").type == pa.int64() and schema.field("is_key_frame").type == pa.bool_()
    assert all(schema.field(n).nullable for n in ns.META_NAMES)
    # what a lookup returns converts to arrow with these types; a partial row or none at all gives nulls
    info = nuscenes_dataroot
    tables = ns.load_tables_dir(fsspec.filesystem("file"), str(info.root / info.version))
    full = tables.lookup(info.keyframes[0])
    assert full is not None and set(full) == set(ns.META_NAMES)
    partial = {"sample_data_token": "a", "timestamp": 1531883530412470, "is_key_frame": True}
    table = pa.Table.from_pylist([full, partial, {}], schema=pa.schema(list(ns.META_FIELDS)))
    assert table.column("timestamp").to_pylist() == [full["timestamp"], 1531883530412470, None]
    assert table.column("scene_name").to_pylist() == [full["scene_name"], None, None]


def test_trainval_packing_layout(tmp_path):
    import tarfile

    info = make_nuscenes_fixture(tmp_path / "ds", n_logs=2, scenes_per_log=1, samples_per_scene=1,
                                 split="v1.0-trainval")
    arch = pack_trainval_archives(info, tmp_path / "arch", parts=2)
    with tarfile.open(arch["meta"][0]) as t:
        names = t.getnames()
    assert "v1.0-trainval/sample_data.json" in names and any(n.startswith("maps/") for n in names)
    assert not any(n.startswith(("samples/", "sweeps/")) for n in names)
    with tarfile.open(arch["keyframes"][0]) as t:
        assert all(n.startswith("samples") for n in t.getnames())
    with tarfile.open(arch["blobs"][1]) as t:
        files = [n for n in t.getnames() if "." in n.rsplit("/", 1)[-1]]
    assert any(n.startswith("sweeps/") for n in files) and any("LIDAR_TOP" in n for n in files)
