"""A small, realistic nuScenes-format dataroot for tests, and packers for the official archive layouts.

Usage (from any test; ``tests/`` is on ``sys.path`` under pytest)::

    from nuscenes_fixture import make_nuscenes_fixture, pack_mini_archive, pack_trainval_archives

    info = make_nuscenes_fixture(tmp_path / "nuscenes")           # the extracted dataroot
    info.keyframes            # camera keyframe paths (samples/CAM_*/...jpg), sorted
    info.expected[path]       # the metadata row a vector of that image must carry
    pack_mini_archive(info, tmp_path / "v1.0-mini.tgz")           # one archive, tables included
    pack_trainval_archives(info, tmp_path / "arch")               # _meta.tgz + NN_blobs.tgz + NN_keyframes.tgz

What the dataroot holds (the same layout and file naming as the real dataset):

* ``samples/<CHANNEL>/<logfile>__<CHANNEL>__<timestamp_us>.jpg`` keyframes for the six cameras,
  ``sweeps/<CHANNEL>/…`` non-keyframes (``sweeps_per_sample`` per sample and camera),
  ``samples|sweeps/LIDAR_TOP/…pcd.bin`` and ``samples|sweeps/RADAR_FRONT/…pcd`` files mixed in;
* ``<split>/*.json``: sample_data, sample, scene, log, calibrated_sensor, sensor, ego_pose, map, and the annotation
  tables category (nuScenes' 23), attribute, visibility, instance and sample_annotation (``boxes_per_scene`` objects
  scattered around the ego in each scene, annotated in every sample; ``boxes_layout="one_per_camera"``: one object in
  front of each camera instead, one category per image), written with ``indent=0`` like the official ones;
* ``maps/<token>.png`` (must never be taken for a camera image).

Ego poses: one per sample_data row (every sensor), moving at ``SPEED`` m/s along x, except the scene
``STATIONARY_SCENE``, whose pose never changes (a car waiting at a light). In ``REPEATED_SCENES`` (the stationary
one and a moving one) every frame of a camera is the same picture re-encoded at another JPEG quality: near-identical
images, different bytes. ``info.stationary_scene`` / ``info.moving_repeated_scene`` name those two scenes.

Logs cycle through boston-seaport and the singapore-* locations; scene descriptions include
"Night" and "Rain". Everything is deterministic for given arguments (tokens come from a counter),
so two fixtures made with the same arguments are byte-identical.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from conftest import jpeg_bytes
from PIL import Image

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
OTHER_SENSORS = (("LIDAR_TOP", "lidar", ".pcd.bin", "pcd"), ("RADAR_FRONT", "radar", ".pcd", "pcd"))
LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")
DESCRIPTIONS = (
    "Parked cars, peds, turn right",
    "Night, after rain, many peds, wet road",
    "Rain, wait at intersection, bus",
    "Construction, ped crossing, nice view",
    "Night, big street, bus stop",
    "Scooters, overtake truck, peds on sidewalk",
)
META_NAMES = ("sample_data_token", "sample_token", "scene_token", "scene_name", "scene_description", "channel",
              "timestamp", "is_key_frame", "location", "logfile", "date_captured", "split", "ego_x", "ego_y", "ego_speed")
# nuScenes' 23 categories and 8 attributes (the real names), typical sizes (w, l, h) by category family
CATEGORIES = (
    "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle",
    "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck")
ATTRIBUTES = ("cycle.with_rider", "cycle.without_rider", "pedestrian.moving", "pedestrian.sitting_lying_down",
              "pedestrian.standing", "vehicle.moving", "vehicle.parked", "vehicle.stopped")
SIZES = {"vehicle": [1.9, 4.6, 1.7], "human": [0.6, 0.7, 1.7], "animal": [0.4, 0.9, 0.6]}
RARE_SCENES = {"animal": 4, "vehicle.emergency.police": 2}  # one object each, in that scene only
CAMERA_YAW = {"CAM_FRONT": 0.0, "CAM_FRONT_RIGHT": -0.96, "CAM_BACK_RIGHT": -1.92, "CAM_BACK": math.pi,
              "CAM_BACK_LEFT": 1.92, "CAM_FRONT_LEFT": 0.96}  # radians from the ego's heading, like the real rig
SPEED = 8.0  # m/s (29 km/h) along x in every scene but the stationary one: 0.67 m between sweeps, 4 m between keyframes
STATIONARY_SCENE = 1  # scene index (0-based, in log order) whose ego pose never changes: a car waiting at a light
REPEATED_SCENES = (0, 1)  # scenes whose frames of one camera are one picture at varying JPEG quality (near-identical)


@dataclass
class FixtureInfo:
    """What ``make_nuscenes_fixture`` wrote, for assertions."""

    root: Path
    version: str
    tables: dict[str, list[dict[str, Any]]]
    keyframes: list[str]  # camera keyframes, dataroot-relative, sorted
    sweeps: list[str]  # camera sweeps
    non_images: list[str]  # LIDAR / RADAR files
    maps: list[str]
    expected: dict[str, dict[str, Any]]  # camera image path -> metadata columns
    scenes: list[dict[str, Any]] = field(default_factory=list)  # token, name, description, location
    stationary_scene: str = ""  # token of the scene whose ego pose never changes (near-identical frames)
    moving_repeated_scene: str = ""  # token of a moving scene with near-identical frames per camera

    @property
    def images(self) -> list[str]:
        """Every camera image (keyframes and sweeps), sorted."""
        return sorted(self.keyframes + self.sweeps)

    def files(self) -> list[str]:
        """Every file of the dataroot, dataroot-relative, sorted."""
        tables = [f"{self.version}/{t}.json" for t in self.tables]
        return sorted(self.keyframes + self.sweeps + self.non_images + self.maps + tables)


def _token(*parts: Any) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _jpeg(width: int, height: int, seed: int, quality: int = 85) -> bytes:
    """A small photo-like JPEG, different for every seed (the test suite's one image generator)."""
    return jpeg_bytes(width, height, seed=seed, quality=quality)


def _logfile(i: int, location: str) -> tuple[str, str, str]:
    """(logfile, vehicle, date_captured) in the official naming."""
    day = 1 + (i * 7) % 27
    date = f"2018-{7 + i % 3:02d}-{day:02d}"
    if location.startswith("boston"):
        return f"n008-{date}-15-{16 + i:02d}-36-0400", "n008", date
    return f"n015-{date}-11-{(7 + i) % 60:02d}-57+0800", "n015", date


def make_nuscenes_fixture(
    root: Path,
    *,
    n_logs: int = 3,
    scenes_per_log: int = 2,
    samples_per_scene: int = 3,
    sweeps_per_sample: int = 1,
    width: int = 160,
    height: int = 90,
    split: str = "v1.0-mini",
    boxes_per_scene: int = 8,
    boxes_layout: str = "scatter",
) -> FixtureInfo:
    """Write a nuScenes dataroot under ``root`` and return what it holds."""
    root = Path(root)
    tables: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "sensor", "calibrated_sensor", "log", "scene", "sample", "sample_data", "ego_pose",
        "category", "attribute", "visibility", "instance", "sample_annotation", "map")}
    sensors = {}
    for ch in CAMERAS:
        sensors[ch] = {"token": _token("sensor", ch), "channel": ch, "modality": "camera"}
    for ch, modality, _, _ in OTHER_SENSORS:
        sensors[ch] = {"token": _token("sensor", ch), "channel": ch, "modality": modality}
    tables["sensor"] = list(sensors.values())

    keyframes: list[str] = []
    sweeps: list[str] = []
    non_images: list[str] = []
    expected: dict[str, dict[str, Any]] = {}
    scenes_info: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    seed = 0
    scene_no = 61
    for li in range(n_logs):
        location = LOCATIONS[li % len(LOCATIONS)]
        logfile, vehicle, date = _logfile(li, location)
        log_row = {"token": _token("log", li), "logfile": logfile, "vehicle": vehicle, "date_captured": date,
                   "location": location}
        tables["log"].append(log_row)
        calib = {}
        for ch, s in sensors.items():
            f = 1266.4 * width / 1600  # the real cameras' focal length, scaled to the fixture's image size
            row = {"token": _token("cs", li, ch), "sensor_token": s["token"],
                   "translation": [1.7 * math.cos(CAMERA_YAW.get(ch, 0.0)), 0.01 * li + math.sin(CAMERA_YAW.get(ch, 0.0)),
                                   1.5],
                   "rotation": _camera_rotation(CAMERA_YAW.get(ch, 0.0)) if s["modality"] == "camera"
                   else [1.0, 0.0, 0.0, 0.0],
                   "camera_intrinsic": [[f, 0.0, width / 2 + 0.3], [0.0, f, height / 2 - 0.2], [0.0, 0.0, 1.0]]
                   if s["modality"] == "camera" else []}
            calib[ch] = row
            tables["calibrated_sensor"].append(row)
        for si in range(scenes_per_log):
            sc_index = li * scenes_per_log + si
            scene_token = _token("scene", li, si)
            name = f"scene-{scene_no:04d}"
            scene_no += 1 + sc_index % 3
            description = DESCRIPTIONS[sc_index % len(DESCRIPTIONS)]
            base_ts = 1531883530_000000 + li * 86_400_000_000 + si * 3_600_000_000
            sample_tokens = [_token("sample", li, si, k) for k in range(samples_per_scene)]
            scene_row = {"token": scene_token, "log_token": log_row["token"], "nbr_samples": samples_per_scene,
                         "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                         "name": name, "description": description}
            tables["scene"].append(scene_row)
            scenes_info.append({"token": scene_token, "name": name, "description": description,
                                "location": location})
            prev_by_channel: dict[str, dict[str, Any]] = {}
            prev_pose: dict[str, tuple[float, int]] = {}
            frame_no: dict[str, int] = {}
            for k, st in enumerate(sample_tokens):
                sample_ts = base_ts + k * 500_000
                tables["sample"].append({"token": st, "timestamp": sample_ts,
                                         "prev": sample_tokens[k - 1] if k else "",
                                         "next": sample_tokens[k + 1] if k + 1 < samples_per_scene else "",
                                         "scene_token": scene_token})
                for ci, ch in enumerate(list(CAMERAS) + [s[0] for s in OTHER_SENSORS]):
                    modality = sensors[ch]["modality"]
                    for sw in range(sweeps_per_sample + 1):
                        is_key = sw == 0
                        ts = sample_ts + ci * 1_250 + sw * 83_333 + (37 if modality == "camera" else 0)
                        folder = "samples" if is_key else "sweeps"
                        if modality == "camera":
                            ext, fmt = ".jpg", "jpg"
                        else:
                            ext, fmt = next((e, f) for c, _, e, f in OTHER_SENSORS if c == ch)
                        rel = f"{folder}/{ch}/{logfile}__{ch}__{ts}{ext}"
                        sd_token = _token("sd", rel)
                        moved = 0.0 if sc_index == STATIONARY_SCENE else SPEED * (ts - base_ts) / 1e6
                        ego_x, ego_y = 400.0 + 1000.0 * sc_index + moved, 1100.0 + si
                        ego = {"token": _token("ego", rel), "timestamp": ts, "rotation": _yaw_quaternion(0.4 * sc_index),
                               "translation": [ego_x, ego_y, 0.0]}
                        tables["ego_pose"].append(ego)
                        row = {"token": sd_token, "sample_token": st, "ego_pose_token": ego["token"],
                               "calibrated_sensor_token": calib[ch]["token"], "timestamp": ts, "fileformat": fmt,
                               "is_key_frame": is_key, "height": height if modality == "camera" else 0,
                               "width": width if modality == "camera" else 0, "filename": rel,
                               "prev": "", "next": ""}
                        prev = prev_by_channel.get(ch)
                        if prev is not None:
                            prev["next"] = sd_token
                            row["prev"] = prev["token"]
                        prev_by_channel[ch] = row
                        tables["sample_data"].append(row)
                        if modality == "camera":
                            if sc_index in REPEATED_SCENES:  # one picture per camera, re-encoded frame by frame
                                n_frame = frame_no.get(ch, 0)
                                frame_no[ch] = n_frame + 1
                                files[rel] = _jpeg(width, height, 50_000 + 10 * sc_index + ci, 80 + n_frame % 16)
                            else:
                                files[rel] = _jpeg(width, height, seed)
                            seed += 1
                            last = prev_pose.get(ch)
                            speed = abs(ego_x - last[0]) / ((ts - last[1]) / 1e6) if last else None
                            prev_pose[ch] = (ego_x, ts)
                            (keyframes if is_key else sweeps).append(rel)
                            expected[rel] = {
                                "sample_data_token": sd_token, "sample_token": st, "scene_token": scene_token,
                                "scene_name": name, "scene_description": description, "channel": ch,
                                "timestamp": ts, "is_key_frame": is_key, "location": location,
                                "logfile": logfile, "date_captured": date, "split": split,
                                "ego_x": ego_x, "ego_y": ego_y, "ego_speed": speed,
                            }
                        else:
                            files[rel] = hashlib.sha256(rel.encode()).digest() * 8  # fake point cloud
                            non_images.append(rel)
    if boxes_layout == "one_per_camera":
        _add_annotations_per_camera(tables)
    elif boxes_per_scene:
        _add_annotations(tables, boxes_per_scene, width)
    maps = _add_maps(tables, files)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    tdir = root / split
    tdir.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        rows_out = [{k: v for k, v in r.items() if k != "location"} for r in rows] if name == "map" else rows
        (tdir / f"{name}.json").write_text(json.dumps(rows_out, indent=0))
    scene_tokens = [sc["token"] for sc in scenes_info]
    return FixtureInfo(root=root, version=split, tables=tables, keyframes=sorted(keyframes), sweeps=sorted(sweeps),
                       non_images=sorted(non_images), maps=sorted(maps), expected=expected, scenes=scenes_info,
                       stationary_scene=scene_tokens[STATIONARY_SCENE] if len(scene_tokens) > STATIONARY_SCENE else "",
                       moving_repeated_scene=next((scene_tokens[i] for i in REPEATED_SCENES
                                                   if i != STATIONARY_SCENE and i < len(scene_tokens)), ""))


def _yaw_quaternion(yaw: float) -> list[float]:
    """The quaternion (w, x, y, z) of a rotation by ``yaw`` radians about the vertical axis."""
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _camera_rotation(yaw: float) -> list[float]:
    """A camera looking along the ego's heading turned by ``yaw``: the real CAM_FRONT's [0.5, -0.5, 0.5, -0.5]
    (camera z forward, x right, y down) turned about the vertical."""
    (aw, ax, ay, az), (bw, bx, by, bz) = _yaw_quaternion(yaw), (0.5, -0.5, 0.5, -0.5)
    return [aw * bw - ax * bx - ay * by - az * bz, ax * bw + aw * bx - az * by + ay * bz,
            ay * bw + az * bx + aw * by - ax * bz, az * bw - ay * bx + ax * by + aw * bz]


def _instance_category(scene: int, k: int) -> str:
    """Which category instance ``k`` of scene ``scene`` is: cars and pedestrians everywhere, some classes in every
    other scene, ``RARE_SCENES`` hold one rare object each."""
    for cat, where in RARE_SCENES.items():
        if scene == where and k == 7:
            return cat
    plan = ("vehicle.car", "human.pedestrian.adult", "vehicle.car", "movable_object.trafficcone",
            "vehicle.truck" if scene % 2 == 0 else "vehicle.bus.rigid",
            "vehicle.bicycle" if scene % 3 == 0 else "movable_object.barrier",
            "human.pedestrian.child" if scene % 2 else "vehicle.motorcycle",
            "static_object.bicycle_rack")
    return plan[k % len(plan)]


def _add_annotations(tables: dict[str, list[dict[str, Any]]], per_scene: int, width: int) -> None:
    """3D boxes like nuScenes' (``sample_annotation`` + ``instance``, ``category``, ``attribute``, ``visibility``):
    ``per_scene`` objects around the ego in every scene, each annotated in every sample of its scene (some behind the
    car, some far off to a side, some across the edge of a camera's view), with a visibility level and attributes."""
    cat_token = _annotation_tables(tables)
    pose_of_sample = {}
    ego = {r["token"]: r for r in tables["ego_pose"]}
    for sd in tables["sample_data"]:
        if sd["is_key_frame"] and "CAM_FRONT__" in sd["filename"]:
            pose_of_sample[sd["sample_token"]] = ego[sd["ego_pose_token"]]["translation"]
    for sc_index, scene in enumerate(tables["scene"]):
        rng = random.Random(1000 + sc_index)
        samples = [r for r in tables["sample"] if r["scene_token"] == scene["token"]]
        for k in range(per_scene):
            category = _instance_category(sc_index, k)
            inst = {"token": _token("instance", scene["token"], k), "category_token": cat_token[category],
                    "nbr_annotations": len(samples), "first_annotation_token": "", "last_annotation_token": ""}
            tables["instance"].append(inst)
            angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(3.0, 30.0)
            yaw, drift = rng.uniform(-math.pi, math.pi), rng.uniform(-1.0, 1.0)
            size = SIZES.get(category.split(".")[0], [0.6, 0.6, 1.0])
            attrs = [a for a in ATTRIBUTES if a.split(".")[0] == category.split(".")[0]][:1]
            prev = None
            for i, smp in enumerate(samples):
                ex, ey, _ = pose_of_sample[smp["token"]]
                ann = {"token": _token("ann", inst["token"], i), "sample_token": smp["token"],
                       "instance_token": inst["token"], "visibility_token": str(1 + rng.randrange(4)),
                       "attribute_tokens": [_token("attribute", a) for a in attrs],
                       "translation": [ex + dist * math.cos(angle) + drift * i, ey + dist * math.sin(angle),
                                       size[2] / 2],
                       "size": size, "rotation": _yaw_quaternion(yaw), "prev": prev["token"] if prev else "",
                       "next": "", "num_lidar_pts": 10, "num_radar_pts": 1}
                if prev is not None:
                    prev["next"] = ann["token"]
                prev = ann
                tables["sample_annotation"].append(ann)
                inst["first_annotation_token"] = inst["first_annotation_token"] or ann["token"]
                inst["last_annotation_token"] = ann["token"]


PER_CAMERA_CYCLE = ("vehicle.car", "human.pedestrian.adult", "vehicle.truck", "movable_object.trafficcone",
                    "vehicle.bicycle", "vehicle.bus.rigid", "vehicle.motorcycle")


def _annotation_tables(tables: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """The category, attribute and visibility tables (nuScenes' real names); category name -> token."""
    tables["category"] = [{"token": _token("category", c), "name": c, "description": c.replace(".", " "), "index": i}
                          for i, c in enumerate(CATEGORIES)]
    tables["attribute"] = [{"token": _token("attribute", a), "name": a, "description": a} for a in ATTRIBUTES]
    tables["visibility"] = [{"token": str(i + 1), "level": lv, "description": f"visibility of whole object is {lv}"}
                            for i, lv in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))]
    return {r["name"]: r["token"] for r in tables["category"]}


def _add_annotations_per_camera(tables: dict[str, list[dict[str, Any]]]) -> None:
    """One object 12 m down each camera's optical axis in every sample (it moves with the car), fully visible: every
    keyframe camera image shows exactly one category, ``PER_CAMERA_CYCLE[(scene + camera) % 7]``, so the
    categories are unambiguous per image (an oracle's data) and each one is in several scenes."""
    cat_token = _annotation_tables(tables)
    ego = {r["token"]: r for r in tables["ego_pose"]}
    pose = {sd["sample_token"]: ego[sd["ego_pose_token"]] for sd in tables["sample_data"]
            if sd["is_key_frame"] and "CAM_FRONT__" in sd["filename"]}
    for sc_index, scene in enumerate(tables["scene"]):
        samples = [r for r in tables["sample"] if r["scene_token"] == scene["token"]]
        for ci, ch in enumerate(CAMERAS):
            category = PER_CAMERA_CYCLE[(sc_index + ci) % len(PER_CAMERA_CYCLE)]
            inst = {"token": _token("instance1", scene["token"], ch), "category_token": cat_token[category],
                    "nbr_annotations": len(samples), "first_annotation_token": "", "last_annotation_token": ""}
            tables["instance"].append(inst)
            size = SIZES.get(category.split(".")[0], [0.6, 0.6, 1.0])
            for i, smp in enumerate(samples):
                p = pose[smp["token"]]
                (w, _, _, z), (ex, ey, _) = p["rotation"], p["translation"]
                heading = 2 * math.atan2(z, w) + CAMERA_YAW[ch]
                ann = {"token": _token("ann1", inst["token"], i), "sample_token": smp["token"],
                       "instance_token": inst["token"], "visibility_token": "4", "attribute_tokens": [],
                       "translation": [ex + 12 * math.cos(heading), ey + 12 * math.sin(heading), 1.5],
                       "size": size, "rotation": _yaw_quaternion(heading), "prev": "", "next": "",
                       "num_lidar_pts": 10, "num_radar_pts": 1}
                tables["sample_annotation"].append(ann)
                inst["first_annotation_token"] = inst["first_annotation_token"] or ann["token"]
                inst["last_annotation_token"] = ann["token"]


def _add_maps(tables: dict[str, list[dict[str, Any]]], files: dict[str, bytes]) -> list[str]:
    """One map image (and ``map`` row) per location; returns the map files' paths."""
    maps = []
    for lg in tables["log"]:
        if lg["location"] not in {m.get("location") for m in tables["map"]}:
            tok = _token("map", lg["location"])
            rel = f"maps/{tok}.png"
            buf = io.BytesIO()
            Image.new("L", (32, 32), 200).save(buf, "PNG")
            files[rel] = buf.getvalue()
            maps.append(rel)
            tables["map"].append({"token": tok, "log_tokens": [lg["token"]], "category": "semantic_prior",
                                  "filename": rel, "location": lg["location"]})
    return maps


def add_orphan_image(info: FixtureInfo, channel: str = "CAM_FRONT", *, keyframe: bool = True) -> str:
    """Write a camera image that has no sample_data row; returns its dataroot-relative path."""
    logfile = info.tables["log"][0]["logfile"]
    rel = f"{'samples' if keyframe else 'sweeps'}/{channel}/{logfile}__{channel}__1999999999999999.jpg"
    (info.root / rel).write_bytes(_jpeg(64, 36, 99_999))
    return rel


# --------------------------------------------------------------------------- packing

def _dirs_of(paths: Iterable[str]) -> list[str]:
    out = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(out)


def pack(root: Path, rel_paths: Iterable[str], out_path: Path, *, compresslevel: int = 1,
         with_dirs: bool = True, prefix: str = "") -> Path:
    """Pack ``rel_paths`` (in the given order) of ``root`` into a .tgz / .tar like ``tar czf``.

    Directory entries come right before their first file, as GNU tar writes them; ``prefix``
    (e.g. ``"./"``) is prepended to every member name.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rel_paths = list(rel_paths)
    mode = "w:gz" if out_path.name.endswith((".tgz", ".gz")) else "w"
    kwargs = {"compresslevel": compresslevel} if mode == "w:gz" else {}
    seen_dirs: set[str] = set()
    with tarfile.open(out_path, mode, format=tarfile.GNU_FORMAT, **kwargs) as tar:  # type: ignore[call-overload]
        for rel in rel_paths:
            if with_dirs:
                for d in _dirs_of([rel]):
                    if d not in seen_dirs:
                        seen_dirs.add(d)
                        ti = tarfile.TarInfo(prefix + d + "/")
                        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_546_300_800
                        tar.addfile(ti)
            data = (Path(root) / rel).read_bytes()
            ti = tarfile.TarInfo(prefix + rel)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_546_300_800
            tar.addfile(ti, io.BytesIO(data))
    return out_path


def pack_mini_archive(info: FixtureInfo, out_path: Path, *, tables_first: bool = False, prefix: str = "") -> Path:
    """One archive like ``v1.0-mini.tgz``: ``maps/``, ``samples/``, ``sweeps/``, ``<split>/`` at the top level.

    By default the members are in name order, which puts the tables *after* all images (the
    harder case for a streaming reader); ``tables_first`` puts them first.
    """
    files = info.files()
    tables = [f for f in files if f.startswith(info.version + "/")]
    rest = [f for f in files if not f.startswith(info.version + "/")]
    return pack(info.root, tables + rest if tables_first else rest + tables, out_path, prefix=prefix)


def pack_trainval_archives(info: FixtureInfo, out_dir: Path, *, parts: int = 2,
                           name: str = "v1.0-trainval") -> dict[str, list[Path]]:
    """Archives like the official trainval set, split by scene into ``parts`` blobs:

    ``<name>_meta.tgz`` (``<split>/*.json`` + ``maps/``), ``<name>NN_blobs.tgz`` (``samples/`` +
    ``sweeps/``, every sensor) and ``<name>NN_keyframes.tgz`` (``samples/`` only, every sensor).
    Make the fixture with ``split="v1.0-trainval"`` for the real table-folder name.
    """
    out_dir = Path(out_dir)
    files = info.files()
    meta = [f for f in files if f.startswith((info.version + "/", "maps/"))]
    out: dict[str, list[Path]] = {"meta": [pack(info.root, meta, out_dir / f"{name}_meta.tgz")],
                                  "blobs": [], "keyframes": []}
    logfiles = [lg["logfile"] for lg in info.tables["log"]]
    data_files = [f for f in files if f.startswith(("samples/", "sweeps/"))]
    by_part: list[list[str]] = [[] for _ in range(parts)]
    for f in data_files:
        logfile = f.split("/")[-1].split("__")[0]
        by_part[logfiles.index(logfile) * parts // max(1, len(logfiles))].append(f)
    for i, part_files in enumerate(by_part, start=1):
        out["blobs"].append(pack(info.root, part_files, out_dir / f"{name}{i:02d}_blobs.tgz"))
        out["keyframes"].append(pack(info.root, [f for f in part_files if f.startswith("samples/")],
                                     out_dir / f"{name}{i:02d}_keyframes.tgz"))
    return out


def upload_tree(root: Path, bucket: str, prefix: str, endpoint_url: str | None = None,
                rel_paths: Iterable[str] | None = None) -> str:
    """Upload files of ``root`` (all, or ``rel_paths``) to ``s3://bucket/prefix/``; returns that URL."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url)
    root = Path(root)
    rels = list(rel_paths) if rel_paths is not None else sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for rel in rels:
        s3.put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{rel}".lstrip("/"), Body=(root / rel).read_bytes())
    return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/") + "/"


def upload_file(path: Path, bucket: str, key: str, endpoint_url: str | None = None) -> str:
    """Upload one file; returns its ``s3://`` URL."""
    import boto3

    boto3.client("s3", endpoint_url=endpoint_url).put_object(Bucket=bucket, Key=key, Body=Path(path).read_bytes())
    return f"s3://{bucket}/{key}"
