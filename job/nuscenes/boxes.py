"""Which boxes a camera image shows: nuscenes-devkit's ``get_sample_data(token, box_vis_level=BoxVisibility.ANY)``,
vectorised over every (image, box of its sample) pair.

For a keyframe the devkit takes the boxes of the image's sample (``get_boxes``), moves each into the ego frame at the
image's timestamp (``translate(-ego.translation)``, ``rotate(ego.rotation⁻¹)``), then into the camera frame (the same
with ``calibrated_sensor``), and keeps it when ``box_in_image(..., BoxVisibility.ANY)`` holds. In nuscenes-devkit 1.2.0
that is: **some** corner projects strictly inside the image (0 < u < width, 0 < v < height) with depth > 1 m, and
**every** corner lies more than 0.1 m in front of the camera. The same steps in the same order here (quaternion products
for the orientation, rotation matrices from normalised quaternions), so the result equals the devkit's
(``tests/test_eval_labels.py::test_labels_equal_the_devkit``).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .annotations import Annotations

PAIRS_PER_CHUNK = 262_144  # (image, box) pairs per vectorised step: ~100 MB of float64 temporaries
_CORNER_SIGNS = np.array([[1, 1, 1, 1, -1, -1, -1, -1],  # x: length / 2  (the devkit's Box.corners)
                          [1, -1, -1, 1, 1, -1, -1, 1],  # y: width / 2
                          [1, 1, -1, -1, 1, 1, -1, -1]], np.float64)  # z: height / 2


def _normalised(q: np.ndarray) -> np.ndarray:
    """pyquaternion's ``_normalise``: divide by the norm unless the quaternion is a unit one already."""
    ss = np.einsum("ij,ij->i", q, q)
    n = np.sqrt(ss)
    unit = np.abs(1.0 - ss) < 1e-14
    return np.where((unit | (n == 0))[:, None], q, q / np.where(n == 0, 1.0, n)[:, None])


def quat_inverse(q: np.ndarray) -> np.ndarray:
    """pyquaternion's ``inverse``: the conjugate over the sum of squares."""
    ss = np.einsum("ij,ij->i", q, q)
    return q * np.array([1.0, -1.0, -1.0, -1.0]) / ss[:, None]


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Hamilton product ``a * b`` of (n, 4) quaternions (w, x, y, z)."""
    aw, ax, ay, az = a.T
    bw, bx, by, bz = b.T
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     ax * bw + aw * bx - az * by + ay * bz,
                     ay * bw + az * bx + aw * by - ax * bz,
                     az * bw - ay * bx + ax * by + aw * bz], axis=1)


def rotation_matrices(q: np.ndarray) -> np.ndarray:
    """(n, 3, 3) rotation matrices of (n, 4) quaternions, normalised first (pyquaternion's ``rotation_matrix``)."""
    w, x, y, z = _normalised(q).T
    return np.stack([
        np.stack([w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
        np.stack([2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], axis=1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], axis=1),
    ], axis=1)


def _rotate(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("nij,nj->ni", m, v)


def boxes_in_image(ann: Annotations, images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """For each pair (``images[p]``, ``boxes[p]``): does the camera image show the box (``BoxVisibility.ANY``)?"""
    if not len(images):
        return np.zeros(0, bool)
    # into the ego frame, then into the sensor frame: centre translated then rotated, orientation q⁻¹ * q
    ego_inv = quat_inverse(ann.ego_q[images])
    cs_inv = quat_inverse(ann.cs_q[images])
    center = _rotate(rotation_matrices(ego_inv), ann.center[boxes] - ann.ego_t[images])
    center = _rotate(rotation_matrices(cs_inv), center - ann.cs_t[images])
    orientation = quat_multiply(cs_inv, quat_multiply(ego_inv, ann.rotation[boxes]))
    w, length, h = ann.wlh[boxes].T
    local = _CORNER_SIGNS[None] * (np.stack([length, w, h], axis=1) / 2)[:, :, None]  # (n, 3, 8)
    corners = np.einsum("nij,njk->nik", rotation_matrices(orientation), local) + center[:, :, None]
    k = ann.intrinsic[images]
    depth = corners[:, 2, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = np.einsum("nij,njk->nik", k, corners)
        u = proj[:, 0, :] / proj[:, 2, :]
        v = proj[:, 1, :] / proj[:, 2, :]
    width = ann.width[images][:, None]
    height = ann.height[images][:, None]
    visible = (u > 0) & (u < width) & (v < height) & (v > 0) & (depth > 1)
    in_front = depth > 0.1
    return visible.any(axis=1) & in_front.all(axis=1) & ann.camera[images]


def visible_pairs(ann: Annotations, min_visibility: int = 1,
                  chunk: int = PAIRS_PER_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image rows, box rows) of every box an image shows whose visibility level is at least ``min_visibility``
    (1..4), chunk by chunk over the images (bounded memory whatever the table size)."""
    start, end = ann.box_ranges()
    counts = end - start
    ok_box = ann.visibility >= min_visibility
    i = 0
    n = ann.n_images
    while i < n:
        # as many images as fit in one chunk of pairs (at least one)
        cum = np.cumsum(counts[i:])
        stop = i + max(1, int(np.searchsorted(cum, chunk, side="right")))
        img = np.repeat(np.arange(i, stop), counts[i:stop])
        first = np.repeat(start[i:stop], counts[i:stop])
        offs = np.arange(len(img)) - np.repeat(np.cumsum(counts[i:stop]) - counts[i:stop], counts[i:stop])
        box = first + offs
        keep = ok_box[box]
        img, box = img[keep], box[keep]
        shown = boxes_in_image(ann, img, box)
        yield img[shown], box[shown]
        i = stop
