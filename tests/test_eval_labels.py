"""Ground truth from the run's own tables: the labels equal nuscenes-devkit's (``get_sample_data`` with
``BoxVisibility.ANY``, then the visibility filter) for every image and every category; the annotation tables read the
same in any order, from a folder or an archive; scene words and standing still."""
from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from job.eval import derive_labels
from job.eval.labels import STOPPED_MPS, scene_words
from job.nuscenes import ANNOTATION_TABLES, AnnotationBuilder, fill_from_dir
from job.sources import fill_from_location
from nuscenes_fixture import pack_mini_archive


def _rows(info) -> pa.Table:
    """The rows a run of the fixture's keyframes carries (what ``run_rows`` reads from the embeddings)."""
    keys = sorted(info.keyframes)
    meta = [info.expected[p] for p in keys]
    return pa.table({
        "id": pa.array(range(len(keys)), pa.int64()),
        "sample_data_token": [m["sample_data_token"] for m in meta],
        "scene_token": [m["scene_token"] for m in meta],
        "scene_description": [m["scene_description"] for m in meta],
        "channel": [m["channel"] for m in meta],
        "ego_speed": pa.array([m["ego_speed"] for m in meta], pa.float64()),
        "is_key_frame": [True] * len(keys),
    })


def _devkit_labels(root: Path, version: str, min_visibility: int) -> dict[str, tuple[list[str], list[str]]]:
    """sample_data token -> (sorted categories, sorted attributes) by nuscenes-devkit 1.2.0."""
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.geometry_utils import BoxVisibility

    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    out = {}
    for sd in nusc.sample_data:
        if not sd["is_key_frame"] or sd["sensor_modality"] != "camera":
            continue
        _, boxes, _ = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.ANY)
        cats, attrs = set(), set()
        for box in boxes:
            rec = nusc.get("sample_annotation", box.token)
            if int(rec["visibility_token"]) >= min_visibility:
                cats.add(box.name)
                attrs.update(nusc.get("attribute", a)["name"] for a in rec["attribute_tokens"])
        out[sd["token"]] = (sorted(cats), sorted(attrs))
    return out


def _labels(info, min_visibility: int) -> pa.Table:
    ann = fill_from_dir(fsspec.filesystem("file"), str(info.root / info.version),
                        AnnotationBuilder(info.version, [info.expected[p]["sample_data_token"] for p in info.keyframes]))
    return derive_labels(ann.build(), _rows(info), min_visibility)


@pytest.mark.parametrize("min_visibility", [1, 2, 4])
def test_labels_equal_the_devkit(nuscenes_dataroot, min_visibility):
    """Every keyframe camera image, every category and attribute, as the devkit sees them (2 is the default)."""
    info = nuscenes_dataroot
    labels = _labels(info, min_visibility)
    ref = _devkit_labels(info.root, info.version, min_visibility)
    assert labels.num_rows == len(info.keyframes) == len(ref)
    got = {t: (c, a) for t, c, a in zip(labels.column("sample_data_token").to_pylist(),
                                        labels.column("categories").to_pylist(),
                                        labels.column("attributes").to_pylist())}
    assert got == ref
    # the fixture's boxes make the comparison bite: shown and hidden boxes, several categories, rare ones
    shown = [c for c, _ in got.values() if c]
    assert 0 < len(shown) < len(got)
    assert len({c for cs in shown for c in cs}) >= 5
    assert max(len(c) for c in shown) >= 2 or min_visibility == 4
    boxes = labels.column("boxes").to_numpy()
    assert (boxes >= np.array([len(c) for c, _ in (got[t] for t in labels.column("sample_data_token").to_pylist())])
            ).all()


def test_box_geometry_cases_are_covered(nuscenes_dataroot):
    """Boxes of an image's sample that the devkit drops (behind the camera, beside it) exist for most images, so
    the geometry is what decides, not the sample."""
    info = nuscenes_dataroot
    per_sample = {}
    for a in info.tables["sample_annotation"]:
        per_sample[a["sample_token"]] = per_sample.get(a["sample_token"], 0) + 1
    labels = _labels(info, 1)
    sample_of = {m["sample_data_token"]: m["sample_token"] for m in info.expected.values()}
    dropped = [per_sample[sample_of[t]] - b for t, b in zip(labels.column("sample_data_token").to_pylist(),
                                                          labels.column("boxes").to_pylist())]
    assert sum(d > 0 for d in dropped) > 0.8 * len(dropped)


def test_annotation_tables_read_the_same_from_an_archive_in_any_order(nuscenes_dataroot, tmp_path):
    """Tables in an archive (ego_pose before sample_data, as in the official meta archive's name order) and in a
    folder (sample_data first) build the same columns; only the wanted images and their poses are kept."""
    info = nuscenes_dataroot
    tokens = [info.expected[p]["sample_data_token"] for p in info.keyframes[:40]]
    folder = fill_from_dir(fsspec.filesystem("file"), str(info.root / info.version),
                           AnnotationBuilder(info.version, tokens)).build()
    archive = pack_mini_archive(info, tmp_path / "v1.0-mini.tgz", tables_first=True)
    (streamed,) = fill_from_location(str(archive), None, lambda v: AnnotationBuilder(v, tokens))
    built = streamed.build()
    assert folder.n_images == built.n_images == 40
    order_a = np.argsort(folder.sd_tokens.to_pylist())
    order_b = np.argsort(built.sd_tokens.to_pylist())
    for name in ("width", "height", "ego_t", "ego_q", "cs_t", "cs_q", "intrinsic", "camera"):
        assert np.array_equal(getattr(folder, name)[order_a], getattr(built, name)[order_b]), name
    for name in ("category", "visibility", "center", "wlh", "rotation", "attr_offsets", "attr_codes"):
        assert np.array_equal(getattr(folder, name), getattr(built, name)), name
    assert folder.n_boxes == len(info.tables["sample_annotation"])


def test_annotation_builder_is_chunked_and_names_broken_tables(nuscenes_dataroot):
    info = nuscenes_dataroot
    d = info.root / info.version

    def build(chunk: int) -> AnnotationBuilder:
        b = AnnotationBuilder(info.version, chunk_bytes=chunk)
        for t in ANNOTATION_TABLES:
            b.add(t, (d / f"{t}.json").read_bytes())
        return b

    whole, small = build(1 << 20).build(), build(211).build()
    assert np.array_equal(whole.center, small.center) and np.array_equal(whole.ego_t, small.ego_t)
    from job.nuscenes import TablesError

    b = AnnotationBuilder(info.version)
    data = (d / "sample_annotation.json").read_bytes()
    with pytest.raises(TablesError, match="sample_annotation.json"):
        b.add("sample_annotation", data[: len(data) // 2])
    with pytest.raises(TablesError, match="missing table"):
        AnnotationBuilder(info.version).build()


def test_scene_words_and_standing_still(nuscenes_dataroot):
    info = nuscenes_dataroot
    labels = _labels(info, 2)
    rows = _rows(info)
    desc = dict(zip(rows.column("sample_data_token").to_pylist(), rows.column("scene_description").to_pylist()))
    for tok, words in zip(labels.column("sample_data_token").to_pylist(), labels.column("scene_words").to_pylist()):
        assert words == scene_words(desc[tok])
    assert scene_words("Night, after rain, many peds") == ["after", "many", "night", "peds", "rain"]
    speed = labels.column("ego_speed").to_pylist()
    stopped = labels.column("stopped").to_pylist()
    assert all(s is None for v, s in zip(speed, stopped) if v is None)
    assert all(s == (v < STOPPED_MPS) for v, s in zip(speed, stopped) if v is not None)
    assert True in stopped and False in stopped  # the fixture's stationary scene and its moving ones


def test_fixture_tables_are_what_the_devkit_loads(nuscenes_dataroot):
    """The fixture's annotation tables carry every field the devkit's loader and ours read."""
    info = nuscenes_dataroot
    ann = json.loads((info.root / info.version / "sample_annotation.json").read_text())
    assert ann and {"token", "sample_token", "instance_token", "visibility_token", "attribute_tokens", "translation",
                    "size", "rotation"} <= set(ann[0])
