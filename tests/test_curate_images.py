"""Curation on real JPEGs embedded by a random-weight ViT-B-32: the generated nuScenes dataroot's frames, with
byte-identical copies and re-encoded, resized copies planted among them.

A random-weight model (no weights can be downloaded here) embeds distinct images close together (nearest
neighbours at 1 - cos ~ 0.008-0.03 on these frames) and cannot tell a strong re-encode from a new picture: a copy
shrunk to 75 % at JPEG quality 70 lands at ~0.004-0.008, inside the distinct images' range, where no threshold can
separate them. Copies enlarged 1.5x at quality 95 (and the fixture's re-encoded frames of one picture) land at
~5e-5, two orders of magnitude below the distinct images: those are the planted near duplicates.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from job.curate import content_hash, find_duplicates, keep_rank, knn_graph


def _reencode(data: bytes, scale: float, quality: int) -> bytes:
    img = Image.open(io.BytesIO(data))
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def curated(nuscenes_dataroot):
    from job.config import ModelConfig
    from job.decode import decode_image
    from job.model.load import ImageEncoder, load_model

    info = nuscenes_dataroot
    repeated = {info.stationary_scene, info.moving_repeated_scene}
    paths = info.keyframes + [p for p in info.sweeps if info.expected[p]["scene_token"] in repeated]
    data = [(info.root / p).read_bytes() for p in paths]
    meta = [info.expected[p] for p in paths]
    distinct = [i for i, m in enumerate(meta) if m["scene_token"] not in repeated]
    exact_src, near_src = distinct[:4], distinct[4:10]
    data += [data[i] for i in exact_src] + [_reencode(data[i], 1.5, 95) for i in near_src]
    meta += [dict(meta[i], timestamp=meta[i]["timestamp"] + 1) for i in exact_src + near_src]  # later copies
    enc = ImageEncoder(load_model(ModelConfig(model="ViT-B-32", pretrained="none", device="cpu", precision="fp32")))
    arr = np.stack([decode_image(b, 224, "pad")[0] for b in data])
    x = np.concatenate([enc(arr[s:s + 32]) for s in range(0, len(arr), 32)]).astype(np.float32)
    n = len(x)
    ids = np.arange(n, dtype=np.int64) + 1000
    graph = knn_graph(x, ids, 10, progress=False)
    still = {"scene": [m["scene_token"] for m in meta], "channel": [m["channel"] for m in meta],
             "timestamp": [m["timestamp"] for m in meta],
             "ego_x": [m["ego_x"] if i < len(paths) else np.nan for i, m in enumerate(meta)],
             "ego_y": [m["ego_y"] if i < len(paths) else np.nan for i, m in enumerate(meta)]}
    rank = keep_rank(ids, np.array(still["timestamp"], np.float64))
    dups = find_duplicates(graph, x, rank, hashes=[content_hash(b) for b in data], still=still)
    base = len(paths)
    copies = {base + j: src for j, src in enumerate(exact_src + near_src)}
    return {"dups": dups, "meta": meta, "copies": copies, "exact_src": exact_src, "base": base, "info": info}


def _by_row(d):
    return {int(r): (int(k), str(kind)) for r, k, kind in zip(d.rows, d.links, d.kinds, strict=True)}


def test_byte_identical_copies_are_exact_and_reencoded_copies_near(curated):
    got = _by_row(curated["dups"])
    for row, src in curated["copies"].items():
        kind = "exact" if row < curated["base"] + len(curated["exact_src"]) else "near"
        assert got[row] == (src, kind)
    assert curated["dups"].threshold.found_mode, curated["dups"].threshold.rule


def test_the_stationary_sequence_is_still_and_the_moving_one_not(curated):
    info, meta, got = curated["info"], curated["meta"], _by_row(curated["dups"])
    for cam in {m["channel"] for m in meta}:
        frames = sorted((m["timestamp"], i) for i, m in enumerate(meta[: curated["base"]])
                        if m["scene_token"] == info.stationary_scene and m["channel"] == cam)
        first = frames[0][1]
        assert first not in got
        assert [got.get(i) for _, i in frames[1:]] == [(first, "still")] * (len(frames) - 1)
    moving = [i for i, m in enumerate(meta[: curated["base"]]) if m["scene_token"] == info.moving_repeated_scene]
    assert not any(got.get(i, (0, ""))[1] == "still" for i in moving)
    assert any(got.get(i, (0, ""))[1] == "near" for i in moving)  # they look alike, but the car drove on


def test_no_two_distinct_images_are_flagged(curated):
    info, meta, d = curated["info"], curated["meta"], curated["dups"]
    repeated = {info.stationary_scene, info.moving_repeated_scene}
    for r, k in zip(d.rows, d.links, strict=True):
        if r in curated["copies"]:
            continue
        assert meta[r]["scene_token"] in repeated and meta[k]["scene_token"] == meta[r]["scene_token"]
        assert meta[k]["channel"] == meta[r]["channel"]  # the same picture re-encoded, never another one
