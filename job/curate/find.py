"""All duplicates in one call, in a fixed order: exact copies, then standing still, then near duplicates.

1. ``exact``: equal content hashes (``order.hash_groups``); the copies leave the candidate set.
2. The near threshold: given, or ``auto`` from each image's cosine to its nearest neighbour that is not a
   byte-identical copy (``duplicates.nearest_distinct_cosines``).
3. ``still``: per camera and scene, frames whose ego pose and vector both stay close to the standstill's first frame
   (``still.still_duplicates``; needs the nuScenes columns). Runs before ``near`` because a car waiting at a light
   makes more near-identical frames than the k-NN graph lists per image.
4. ``near``: greedy keep-first over the k-NN graph among the images left (``duplicates.near_duplicates``).

Every image appears at most once, with the kind of the first step that claimed it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..config import STILL_METRES
from .duplicates import Duplicates, exact_duplicates, near_duplicates, nearest_distinct_cosines
from .knn import KnnGraph
from .order import hash_groups
from .still import still_duplicates
from .threshold import parse_threshold

STILL_COLUMNS = ("scene", "channel", "timestamp", "ego_x", "ego_y")


def find_duplicates(graph: KnnGraph, x: np.ndarray, rank: np.ndarray, *, near_threshold: str | float = "auto",
                    hashes: Sequence[bytes | str | None] | np.ndarray | None = None,
                    still: Mapping[str, Any] | None = None, still_metres: float = STILL_METRES,
                    device: str = "auto") -> Duplicates:
    """Exact, still and near duplicates of the rows of ``x`` (the graph's rows), one line per duplicate.

    ``rank``: keep order (``order.keep_rank``). ``hashes``: content hash per row (None: no exact step).
    ``still``: arrays ``scene``, ``channel``, ``timestamp``, ``ego_x``, ``ego_y`` (None: no still step).
    The result's ``threshold`` is the near threshold used (with its rule); ``info`` holds the counts and the
    nearest-neighbour cosines the threshold was read from (``nn_cosines``)."""
    n = len(x)
    groups = hash_groups(hashes) if hashes is not None else None
    exact = exact_duplicates(groups, rank, x) if groups is not None else Duplicates.empty()
    nn = nearest_distinct_cosines(graph, groups)
    threshold = parse_threshold(near_threshold, nn)
    claimed = exact.mask(n)
    still_d = Duplicates.empty()
    if still is not None:
        missing = [c for c in STILL_COLUMNS if c not in still]
        if missing:
            raise ValueError(f"still needs the columns {', '.join(STILL_COLUMNS)}; missing {', '.join(missing)}")
        still_d = still_duplicates(x, threshold, scene=np.asarray(still["scene"], object),
                                   channel=np.asarray(still["channel"], object),
                                   timestamp=np.asarray(still["timestamp"], np.float64),
                                   ego_x=np.asarray(still["ego_x"], np.float64),
                                   ego_y=np.asarray(still["ego_y"], np.float64),
                                   still_metres=still_metres, exclude=claimed)
        claimed |= still_d.mask(n)
    near = near_duplicates(graph, x, threshold, rank, exclude=claimed, device=device)
    out = Duplicates.concat([exact, still_d, near])
    out.threshold = threshold
    out.info = {"counts": out.counts(), "near": near.info, "still": still_d.info, "nn_cosines": nn}
    return out
