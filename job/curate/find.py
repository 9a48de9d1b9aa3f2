"""All duplicates in one call, in a fixed order: exact copies, then standing still, then near duplicates.

1. ``exact``: equal content hashes (``order.hash_groups``); the copies leave the candidate set.
2. The near threshold: given, or ``auto`` from the k-NN graph's edges, byte-identical pairs left out
   (``near_threshold``; the graph step gates its pair recall on the same rule).
3. ``still``: per camera and scene, frames whose ego pose stayed within ``still_metres`` of the standstill's first
   frame, close in time and with a vector within ``still_cosine`` of it (``still.still_duplicates``: its own rule,
   needs the nuScenes columns). Runs before ``near`` because a car waiting at a light makes more near-identical
   frames than the k-NN graph lists per image.
4. ``near``: greedy keep-first over the k-NN graph among the images left (``duplicates.near_duplicates``).

Every image appears at most once, with the kind of the first step that claimed it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..config import STILL_COSINE, STILL_GAP_S, STILL_METRES
from .duplicates import Duplicates, exact_duplicates, near_duplicates, nearest_distinct_cosines
from .knn import KnnGraph
from .order import hash_groups
from .still import still_duplicates
from .threshold import NearThreshold, parse_threshold

STILL_COLUMNS = ("scene", "channel", "timestamp", "ego_x", "ego_y")


def same_hash(rows: np.ndarray, groups: np.ndarray | None) -> np.ndarray | None:
    """(n, k) mask of the graph edges between byte-identical copies (None without hashes)."""
    if groups is None:
        return None
    return (groups[:, None] >= 0) & (rows >= 0) & (groups[np.clip(rows, 0, None)] == groups[:, None])


def near_threshold(rows: np.ndarray, cosines: np.ndarray, groups: np.ndarray | None,
                   value: str | float = "auto") -> NearThreshold:
    """The near threshold of a graph (``rows``, ``cosines``): given, or ``auto`` from its edges without the
    byte-identical pairs (``groups``: ``order.hash_groups``)."""
    return parse_threshold(value, cosines, same_hash(rows, groups))


def find_duplicates(graph: KnnGraph, x: np.ndarray, rank: np.ndarray, *,
                    near_threshold_value: str | float | NearThreshold = "auto",
                    hashes: Sequence[bytes | str | None] | np.ndarray | None = None,
                    still: Mapping[str, Any] | None = None, still_metres: float = STILL_METRES,
                    still_cosine: float = STILL_COSINE, still_gap_s: float = STILL_GAP_S,
                    device: str = "auto") -> Duplicates:
    """Exact, still and near duplicates of the rows of ``x`` (the graph's rows), one line per duplicate.

    ``rank``: keep order (``order.keep_rank``). ``near_threshold_value``: ``auto``, a cosine, or a threshold already
    read. ``hashes``: content hash per row (None: no exact step). ``still``: arrays ``scene``, ``channel``,
    ``timestamp``, ``ego_x``, ``ego_y`` (None: no still step). The result's ``threshold`` is the near threshold used
    (with its rule); ``info`` holds the counts and each row's nearest distinct cosine (``nn_cosines``)."""
    n = len(x)
    groups = hash_groups(hashes) if hashes is not None else None
    exact = exact_duplicates(groups, rank, x) if groups is not None else Duplicates.empty()
    threshold = near_threshold_value if isinstance(near_threshold_value, NearThreshold) else \
        near_threshold(graph.rows, graph.cosines, groups, near_threshold_value)
    claimed = exact.mask(n)
    still_d = Duplicates.empty()
    if still is not None:
        missing = [c for c in STILL_COLUMNS if c not in still]
        if missing:
            raise ValueError(f"still needs the columns {', '.join(STILL_COLUMNS)}; missing {', '.join(missing)}")
        still_d = still_duplicates(x, scene=np.asarray(still["scene"], object),
                                   channel=np.asarray(still["channel"], object),
                                   timestamp=np.asarray(still["timestamp"], np.float64),
                                   ego_x=np.asarray(still["ego_x"], np.float64),
                                   ego_y=np.asarray(still["ego_y"], np.float64), still_metres=still_metres,
                                   still_cosine=still_cosine, still_gap_s=still_gap_s, exclude=claimed)
        claimed |= still_d.mask(n)
    near = near_duplicates(graph, x, threshold, rank, exclude=claimed, device=device)
    out = Duplicates.concat([exact, still_d, near])
    out.threshold = threshold
    out.info = {"counts": out.counts(), "near": near.info, "still": still_d.info,
                "nn_cosines": nearest_distinct_cosines(graph, groups), "extra": near.info.get("extra", {})}
    return out
