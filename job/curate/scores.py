"""Per-image scores from the k-NN graph: FiftyOne Brain's ``uniqueness`` and the neighbour cosines beside it.

FiftyOne Brain (``fiftyone/brain/internal/core/uniqueness.py``) scores a sample by the weighted mean of its
distances to its 3 nearest neighbours, ``mean([0.6·d1, 0.3·d2, 0.1·d3])`` (numpy's mean, so the sum divided by 3),
then divides by the largest value over the samples (higher = rarer, 1.0 for the rarest); with 3 samples or fewer
every score is 1. Its distance, as first written and documented, is the Euclidean distance between the
embeddings; on unit vectors that is ``sqrt(2 - 2·cos)``, which is what is computed here from the graph's cosines.

Two details of FiftyOne's current code (since fiftyone-brain #201, Nov 2024, which moved uniqueness onto its
similarity backend) differ, and are *not* reproduced: it subtracts the dataset's mean embedding before measuring
(cosine distance below 15,000 samples, Euclidean on re-normalised vectors above), and its ``dists[:, 1:]`` — meant
to drop the query itself — now drops the true nearest neighbour, since the backend already leaves the query out,
so it weighs neighbours 2-4. ``fiftyone_uniqueness_current`` in bench/curate_bench.py reimplements that variant for
the side-by-side numbers.
"""
from __future__ import annotations

import numpy as np

from .knn import KnnGraph

UNIQUENESS_WEIGHTS = (0.6, 0.3, 0.1)


def unit_distance(cosines: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine: ``sqrt(max(0, 2 - 2·cos))``."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.asarray(cosines, np.float64)))


def uniqueness(graph: KnnGraph) -> np.ndarray:
    """FiftyOne Brain's uniqueness (0-1, higher = rarer) from the graph's 3 nearest neighbours, float32."""
    n = len(graph.ids)
    if n <= len(UNIQUENESS_WEIGHTS):
        return np.ones(n, np.float32)
    if graph.k < len(UNIQUENESS_WEIGHTS):
        raise ValueError(f"uniqueness needs a graph with k >= {len(UNIQUENESS_WEIGHTS)} (got k = {graph.k})")
    d = unit_distance(graph.cosines[:, : len(UNIQUENESS_WEIGHTS)])
    score = np.mean(d * np.asarray(UNIQUENESS_WEIGHTS), axis=1)
    top = float(np.nanmax(score))
    return (score / top if top > 0 else np.ones(n)).astype(np.float32)


def scores(graph: KnnGraph) -> dict[str, np.ndarray]:
    """The ``scores.parquet`` columns: ``id``, ``uniqueness``, ``nn_cosine`` (to the nearest neighbour) and
    ``kth_cosine`` (to the k-th: how crowded the image's neighbourhood is; lower = sparser)."""
    last = graph.cosines[np.arange(len(graph.ids)), np.maximum(0, np.sum(graph.rows >= 0, axis=1) - 1)]
    return {"id": graph.ids, "uniqueness": uniqueness(graph), "nn_cosine": graph.cosines[:, 0].astype(np.float32),
            "kth_cosine": last.astype(np.float32)}
