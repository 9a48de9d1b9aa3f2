"""Standing still: consecutive frames of one camera in one scene while the ego vehicle did not move.

Frames are walked per (scene, camera) in time order. The first frame of a standstill is kept (the keep rule: the
earliest); each following frame is a ``still`` duplicate of it while the ego pose is within ``still_metres`` of the
kept frame's pose (planar distance, x/y in metres of the global frame) *and* its vector within the near threshold
of the kept frame's vector. The first frame that fails either test starts a new anchor. Measuring from the kept
frame, not from the previous one, keeps a slow creep (0.3 m a frame for 20 frames) from counting as standing still.

Default ``STILL_METRES`` = 0.5 (``job.config``), from what the poses can and cannot resolve: nuScenes localises by matching lidar
against its maps, to about 10 cm according to the dataset paper (not re-checked here), so a parked car's poses
scatter by centimetres; a car moving at walking pace (1.4 m/s) is 0.7 m further after one keyframe interval (0.5 s)
and crosses 0.5 m within 5 sweeps (~0.4 s at 12 Hz); anything faster leaves 0.5 m behind between two keyframes.
Half a metre therefore separates "waiting" (pose noise, a car creeping a few decimetres in a queue) from "driving"
at either frame rate. The real distribution of frame-to-frame displacement could not be measured here (the
nuScenes bucket is not reachable from this machine): a real run's ``ego_speed`` column gives it (speed x frame
interval), and ``--still-metres`` overrides the default.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import STILL_METRES
from ..values import parse_positive
from .duplicates import Duplicates
from .threshold import NearThreshold


def check_still_metres(value: float) -> float:
    """A positive, finite distance in metres; a UsageError naming the value otherwise."""
    return parse_positive(value, "still metres", "distance in metres")


def _groups(scene: np.ndarray, channel: np.ndarray) -> np.ndarray:
    keys = np.array([f"{s}\x00{c}" for s, c in zip(scene, channel, strict=True)], dtype=object)
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def still_duplicates(x: np.ndarray, threshold: NearThreshold, *, scene: np.ndarray, channel: np.ndarray,
                     timestamp: np.ndarray, ego_x: np.ndarray, ego_y: np.ndarray,
                     still_metres: float = STILL_METRES, exclude: np.ndarray | None = None) -> Duplicates:
    """``still`` duplicates among rows with a scene, camera, timestamp and pose (others are never still).

    ``exclude``: rows already reported (exact copies); they are skipped, not used as anchors.
    """
    still_metres = check_still_metres(still_metres)
    t = float(threshold.cosine)
    n = len(x)
    ts = np.asarray(timestamp, np.float64)
    ex, ey = np.asarray(ego_x, np.float64), np.asarray(ego_y, np.float64)
    known = np.array([s is not None and c is not None for s, c in zip(scene, channel, strict=True)], bool)
    known &= np.isfinite(ts) & np.isfinite(ex) & np.isfinite(ey)
    if exclude is not None:
        known &= ~exclude
    rows = np.nonzero(known)[0]
    if len(rows) < 2:
        return Duplicates.empty()
    g = _groups(np.asarray(scene, object)[rows], np.asarray(channel, object)[rows])
    rows = rows[np.lexsort((rows, ts[rows], g))]  # by group, then time (row breaks ties)
    g_sorted = np.sort(g)
    out_r: list[int] = []
    out_k: list[int] = []
    out_c: list[float] = []
    anchor = -1
    for i, r in enumerate(rows):
        if i == 0 or g_sorted[i] != g_sorted[i - 1]:
            anchor = int(r)
            continue
        moved = math.hypot(ex[r] - ex[anchor], ey[r] - ey[anchor])
        if moved < still_metres:
            c = float(np.dot(x[r], x[anchor]))
            if c >= t:
                out_r.append(int(r))
                out_k.append(anchor)
                out_c.append(c)
                continue
        anchor = int(r)
    d = Duplicates(np.array(out_r, np.int64), np.array(out_k, np.int64), np.full(len(out_r), "still", object),
                   np.array(out_c, np.float32), threshold)
    d.info = {"still_metres": still_metres, "rows_with_pose": int(known.sum())}
    assert n >= 0
    return d
