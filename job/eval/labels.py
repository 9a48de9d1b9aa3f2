"""Ground truth from the run's own metadata: what nuScenes' annotations say each keyframe camera image shows
(``eval/labels.parquet``).

For every row of the run that is a keyframe camera image found in the annotation tables: the categories (and
attributes) of the boxes of its sample that the camera shows (nuscenes-devkit's ``get_sample_data`` with
``BoxVisibility.ANY``: :func:`job.nuscenes.visible_pairs`) and whose visibility level is at least
``--min-visibility``; the words of its scene's description; whether the car stood still (the run's ``ego_speed`` below
``STOPPED_MPS``). Columns (:data:`LABELS_SCHEMA`):

``id``, ``sample_data_token``, ``scene_token``, ``channel``, ``categories`` (sorted category names), ``attributes``
(sorted attribute names), ``boxes`` (how many boxes counted), ``scene_words`` (sorted lower-case words of the scene
description), ``ego_speed`` (m/s, null at a scene's first frame), ``stopped`` (null where the speed is).
"""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UsageError
from ..nuscenes import Annotations, visible_pairs
from ..nuscenes.keys import positions, token_keys
from ..runfolder import RunLayout, open_dataset, read_table

STOPPED_MPS = 0.5  # below this the car counts as standing still (1.8 km/h: a pose's jitter while parked is ~0.05 m/s)
ROW_COLUMNS = ("id", "sample_data_token", "scene_token", "scene_description", "channel", "ego_speed", "is_key_frame")
LABELS_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("sample_data_token", pa.string()),
    pa.field("scene_token", pa.string()),
    pa.field("channel", pa.string()),
    pa.field("categories", pa.list_(pa.string())),
    pa.field("attributes", pa.list_(pa.string())),
    pa.field("boxes", pa.int32()),
    pa.field("scene_words", pa.list_(pa.string())),
    pa.field("ego_speed", pa.float64()),
    pa.field("stopped", pa.bool_()),
])
_WORD = re.compile(r"[a-z0-9]+")


def run_rows(layout: RunLayout) -> pa.Table:
    """The run's rows that can carry labels (keyframes with a ``sample_data_token``), with the columns labels need.
    A run without nuScenes metadata is a UsageError: there is nothing to score it against."""
    names = set(open_dataset(layout.embeddings).schema.names)
    if "sample_data_token" not in names:
        raise UsageError(f"{layout.run_dir} has no nuScenes metadata (no sample_data_token column): job eval scores "
                         "runs of nuScenes images against nuScenes' annotations")
    table = read_table(layout.embeddings, [c for c in ROW_COLUMNS if c in names])
    keep = pc.is_valid(table.column("sample_data_token"))
    if "is_key_frame" in table.column_names:
        keep = pc.and_(keep, pc.fill_null(table.column("is_key_frame"), False))
    table = table.filter(keep)
    if table.num_rows == 0:
        raise UsageError(f"{layout.run_dir} holds no nuScenes keyframe with a sample_data_token: nothing to score "
                         "(annotations exist for keyframes only)")
    return table


def scene_words(description: str | None) -> list[str]:
    """The sorted, unique lower-case words of a scene description."""
    return sorted(set(_WORD.findall((description or "").lower())))


def _lists(owner: np.ndarray, codes: np.ndarray, names: list[str], n: int) -> pa.ListArray:
    """One sorted, unique list of ``names[code]`` per row 0..n-1, from (row, code) pairs."""
    width = max(1, len(names))
    key = np.unique(owner.astype(np.int64) * width + codes.astype(np.int64))
    rows, vals = key // width, key % width
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
    values = pa.array(names, pa.string()).take(pa.array(vals)) if len(vals) else pa.array([], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def derive_labels(ann: Annotations, rows: pa.Table, min_visibility: int) -> pa.Table:
    """The labels of every row of ``rows`` (``run_rows``) whose image the annotation tables hold (others are left
    out: images without a sample_data row in these tables, non-camera rows)."""
    image = positions(token_keys(rows.column("sample_data_token").to_pylist()), token_keys(ann.sd_tokens.to_pylist()))
    found = image >= 0
    found &= ann.camera[np.clip(image, 0, None)] if len(ann.camera) else False
    keep_rows = np.flatnonzero(found)
    image = image[keep_rows]
    n = len(keep_rows)
    # per annotation-image: which of the kept rows it is (an image may be a row once only: tokens are unique)
    row_of_image = np.full(ann.n_images, -1, np.int64)
    row_of_image[image] = np.arange(n)
    cat_rows, cat_codes, attr_rows, attr_codes = [], [], [], []
    boxes = np.zeros(n, np.int32)
    for img, box in visible_pairs(ann, min_visibility):
        r = row_of_image[img]
        ok = r >= 0
        r, box = r[ok], box[ok]
        known = ann.category[box] >= 0
        cat_rows.append(r[known])
        cat_codes.append(ann.category[box][known])
        np.add.at(boxes, r, 1)
        counts = ann.attr_offsets[box + 1] - ann.attr_offsets[box]
        first = np.repeat(ann.attr_offsets[box], counts)
        step = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        codes = ann.attr_codes[first + step]
        owners = np.repeat(r, counts)
        attr_rows.append(owners[codes >= 0])
        attr_codes.append(codes[codes >= 0])

    def cat(chunks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)

    kept = rows.take(pa.array(keep_rows))
    descriptions = kept.column("scene_description").to_pylist() if "scene_description" in kept.column_names \
        else [None] * n
    words = {d: scene_words(d) for d in set(descriptions)}
    speed = kept.column("ego_speed") if "ego_speed" in kept.column_names else pa.nulls(n, pa.float64())
    return pa.table({
        "id": kept.column("id"),
        "sample_data_token": kept.column("sample_data_token"),
        "scene_token": kept.column("scene_token") if "scene_token" in kept.column_names else pa.nulls(n, pa.string()),
        "channel": kept.column("channel") if "channel" in kept.column_names else pa.nulls(n, pa.string()),
        "categories": _lists(cat(cat_rows), cat(cat_codes), ann.categories, n),
        "attributes": _lists(cat(attr_rows), cat(attr_codes), ann.attributes, n),
        "boxes": pa.array(boxes, pa.int32()),
        "scene_words": pa.array([words[d] for d in descriptions], pa.list_(pa.string())),
        "ego_speed": speed,
        "stopped": pc.less(speed, STOPPED_MPS),
    }, schema=LABELS_SCHEMA)
