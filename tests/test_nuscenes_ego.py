"""Ego pose columns (ego_x, ego_y, ego_speed) against the official nuscenes-devkit, on the generated dataroot."""
from __future__ import annotations

import math

import fsspec
import pytest
from nuscenes_fixture import SPEED

from job import nuscenes as ns


@pytest.fixture(scope="module")
def devkit(nuscenes_dataroot):
    from nuscenes.nuscenes import NuScenes

    info = nuscenes_dataroot
    return NuScenes(version=info.version, dataroot=str(info.root), verbose=False)


@pytest.fixture(scope="module")
def tables(nuscenes_dataroot):
    info = nuscenes_dataroot
    return ns.load_tables_dir(fsspec.filesystem("file"), str(info.root / info.version))


def _devkit_ego(nusc, sd_token: str) -> tuple[float, float, float | None]:
    """x, y and the speed from the previous frame of the same camera, the way a devkit user computes them."""
    sd = nusc.get("sample_data", sd_token)
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    if not sd["prev"]:
        return pose["translation"][0], pose["translation"][1], None
    prev = nusc.get("ego_pose", nusc.get("sample_data", sd["prev"])["ego_pose_token"])
    dist = math.dist(pose["translation"][:2], prev["translation"][:2])
    return pose["translation"][0], pose["translation"][1], dist / ((pose["timestamp"] - prev["timestamp"]) / 1e6)


def test_ego_pose_equals_the_devkit(nuscenes_dataroot, devkit, tables):
    info = nuscenes_dataroot
    firsts = 0
    for path in info.images:
        meta = tables.lookup(path)
        x, y, speed = _devkit_ego(devkit, meta["sample_data_token"])
        assert meta["ego_x"] == x and meta["ego_y"] == y
        if speed is None:
            firsts += 1
            assert meta["ego_speed"] is None
        else:
            assert meta["ego_speed"] == pytest.approx(speed, rel=1e-12, abs=1e-12)
    assert firsts == 6 * len(info.scenes)  # the first frame of every camera of every scene has no predecessor


def test_stationary_and_moving_scenes(nuscenes_dataroot, tables):
    info = nuscenes_dataroot
    speeds = {}
    for path in info.images:
        meta = tables.lookup(path)
        if meta["ego_speed"] is not None:
            speeds.setdefault(meta["scene_token"], set()).add(round(meta["ego_speed"], 9))
    assert speeds[info.stationary_scene] == {0.0}
    assert speeds[info.moving_repeated_scene] == {SPEED}


def test_speed_does_not_depend_on_what_the_run_keeps(nuscenes_dataroot, tables):
    """A keyframes-only join still measures each keyframe against its predecessor sweep, like the full join."""
    info = nuscenes_dataroot
    d = info.root / info.version
    b = ns.TablesBuilder(info.version, keep=lambda f: f.startswith("samples/") and ns.is_image_name(f))
    for t in ns.NEEDED_TABLES:
        b.add(t, (d / f"{t}.json").read_bytes())
    keyframes_only = b.build()
    assert len(keyframes_only) == len(info.keyframes)
    for path in info.keyframes:
        assert keyframes_only.lookup(path) == tables.lookup(path) == info.expected[path]
