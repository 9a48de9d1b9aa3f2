"""Ego pose per image: ``ego_x``, ``ego_y`` (metres, global frame) and ``ego_speed`` (m/s) from the ego_pose table.

``sample_data.ego_pose_token`` names the pose of a frame (nuScenes has one pose per sample_data row, timestamped
like it). The speed is the planar distance between a frame's pose and the pose of its predecessor of the same
camera (``sample_data.prev``, empty at the first frame of a scene, so the speed is null there) divided by the time
between the two poses: the mean speed over the last 1/12 s (sweeps) or 0.5 s (a keyframe whose predecessor the
run left out is still measured against it: the speed does not depend on which frames a run embeds). Everything is
columnar: the trainval ego_pose table (~2.6M rows) is streamed in slices into arrays, never held as objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .jsonstream import decode_ego_pose, iter_array_slices


@dataclass
class EgoPoses:
    """The ego_pose table as columns: token, timestamp (µs), x, y (metres)."""

    tokens: list[pa.Array] = field(default_factory=list)
    timestamps: list[np.ndarray] = field(default_factory=list)
    xs: list[np.ndarray] = field(default_factory=list)
    ys: list[np.ndarray] = field(default_factory=list)
    rows: int = 0

    def add_stream(self, read: object, chunk_bytes: int) -> None:
        """Parse an ego_pose.json stream slice by slice."""
        for piece in iter_array_slices(read, chunk_bytes):  # type: ignore[arg-type]
            rows = decode_ego_pose(piece)
            if not rows:
                continue
            tok, ts, x, y = zip(*rows)
            self.tokens.append(pa.array(tok, pa.string()))
            self.timestamps.append(np.asarray(ts, np.int64))
            self.xs.append(np.asarray(x, np.float64))
            self.ys.append(np.asarray(y, np.float64))
            self.rows += len(rows)


def _lookup(values: pa.ChunkedArray | pa.Array, keys: pa.ChunkedArray) -> np.ndarray:
    """Position of each value in ``keys`` (-1 where absent or null)."""
    idx = pc.index_in(values, value_set=keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys)
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def ego_columns(poses: EgoPoses, ego_tokens: pa.ChunkedArray, prev_tokens: pa.ChunkedArray,
                image_tokens: pa.ChunkedArray, image_ego_tokens: pa.ChunkedArray,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ego_x, ego_y, ego_speed) for the kept rows (NaN where unknown)."""
    n = len(ego_tokens)
    nan = np.full(n, np.nan)
    if poses.rows == 0:
        return nan, nan.copy(), nan.copy()
    keys = pa.chunked_array(poses.tokens, type=pa.string())
    ts = np.concatenate(poses.timestamps)
    x = np.concatenate(poses.xs)
    y = np.concatenate(poses.ys)

    def at(arr: np.ndarray, pos: np.ndarray, fill: float = np.nan) -> np.ndarray:
        return np.where(pos >= 0, arr[np.clip(pos, 0, None)], fill)

    own = _lookup(ego_tokens, keys)
    ex, ey, et = at(x, own), at(y, own), at(ts.astype(np.float64), own)
    prev_row = _lookup(prev_tokens, image_tokens.combine_chunks())  # the predecessor among all image rows
    prev_ep = pc.take(image_ego_tokens.combine_chunks(), pa.array(np.where(prev_row >= 0, prev_row, 0)))
    prev_pose = np.where(prev_row >= 0, _lookup(prev_ep, keys), -1)
    px, py, pt = at(x, prev_pose), at(y, prev_pose), at(ts.astype(np.float64), prev_pose)
    dt = (et - pt) / 1e6
    with np.errstate(invalid="ignore", divide="ignore"):
        speed = np.where(dt > 0, np.hypot(ex - px, ey - py) / dt, np.nan)
    return ex, ey, speed
