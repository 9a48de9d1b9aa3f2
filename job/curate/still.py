"""Standing still: consecutive frames of one camera in one scene while the ego vehicle did not move — its own rule,
independent of the near-duplicate threshold.

Frames are walked per (scene, camera) in time order. The first frame of a standstill is kept (the keep rule: the
earliest); each following frame is a ``still`` duplicate of it while

* the ego pose is within ``still_metres`` of the kept frame's pose (planar distance, x/y in metres, global frame),
* it follows the previous frame of the walk by at most ``still_gap_s`` seconds (a gap — frames missing, a filtered
  run — ends the standstill: nothing is known about the time between), and
* its vector is within ``still_cosine`` of the kept frame's (the camera still sees the same view: a car at a light
  sees traffic pass, but not a new street).

The first frame that fails a test starts a new standstill. Measuring from the kept frame, not from the previous one,
keeps a slow creep (0.3 m a frame for 20 frames) from counting as standing still.

Defaults (``job.config``), from what the data can and cannot resolve:

* ``STILL_METRES`` = 0.5: nuScenes localises by matching lidar against its maps, to about 10 cm according to the
  dataset paper (not re-checked here), so a parked car's poses scatter by centimetres; a car moving at walking pace
  (1.4 m/s) is 0.7 m further after one keyframe interval (0.5 s) and crosses 0.5 m within 5 sweeps (~0.4 s at 12 Hz).
* ``STILL_GAP_S`` = 1.5: keyframes come every 0.5 s and sweeps every ~0.083 s, so 1.5 s tolerates two missing
  keyframes and no more.
* ``STILL_COSINE`` = 0.9: a judgement, not a measurement (nuScenes is not reachable from this machine): trained CLIP
  models put two views of one street at a light well above it, and distinct scenes' nearest neighbours around it or
  below (our synthetic data: 0.89 median). ``--still-cosine`` sets another.
The real distribution of frame-to-frame displacement of a run is in its ``ego_speed`` column (speed x interval).
"""
from __future__ import annotations

import math

import numpy as np

from ..config import STILL_COSINE, STILL_GAP_S, STILL_METRES
from ..values import parse_positive
from .duplicates import Duplicates


def check_still_metres(value: float) -> float:
    """A positive, finite distance in metres; a UsageError naming the value otherwise."""
    return parse_positive(value, "still metres", "distance in metres")


def _groups(scene: np.ndarray, channel: np.ndarray) -> np.ndarray:
    keys = np.array([f"{s}\x00{c}" for s, c in zip(scene, channel, strict=True)], dtype=object)
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def still_duplicates(x: np.ndarray, *, scene: np.ndarray, channel: np.ndarray, timestamp: np.ndarray,
                     ego_x: np.ndarray, ego_y: np.ndarray, still_metres: float = STILL_METRES,
                     still_cosine: float = STILL_COSINE, still_gap_s: float = STILL_GAP_S,
                     exclude: np.ndarray | None = None) -> Duplicates:
    """``still`` duplicates among rows with a scene, camera, timestamp (microseconds) and pose (others are never
    still). ``exclude``: rows already reported (exact copies); they are skipped, not used as anchors."""
    still_metres = check_still_metres(still_metres)
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
    at = np.lexsort((rows, ts[rows], g))  # by group, then time (row breaks ties)
    rows, g = rows[at], g[at]
    max_gap_us = still_gap_s * 1e6
    out_r: list[int] = []
    out_k: list[int] = []
    out_c: list[float] = []
    anchor = -1
    for i, r in enumerate(rows):
        if i == 0 or g[i] != g[i - 1] or ts[r] - ts[rows[i - 1]] > max_gap_us:
            anchor = int(r)
            continue
        if math.hypot(ex[r] - ex[anchor], ey[r] - ey[anchor]) < still_metres:
            c = float(np.dot(x[r], x[anchor]))
            if c >= still_cosine:
                out_r.append(int(r))
                out_k.append(anchor)
                out_c.append(c)
                continue
        anchor = int(r)
    d = Duplicates(np.array(out_r, np.int64), np.array(out_k, np.int64), np.full(len(out_r), "still", object),
                   np.array(out_c, np.float32))
    d.info = {"still_metres": still_metres, "still_cosine": still_cosine, "still_gap_s": still_gap_s,
              "rows_with_pose": int(known.sum())}
    return d
