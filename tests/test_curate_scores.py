"""Uniqueness: among the kept images (a copy no longer hides its original), and ``--uniqueness fiftyone`` against a
re-implementation of fiftyone-brain's own code.

fiftyone-brain cannot be installed here (it needs fiftyone, MongoDB, eta), so ``_fiftyone_reference`` re-implements
its functions line for line from the source read at voxel51/fiftyone-brain commit
7238036bcb5fb83177baf5c1b6b0c52937f32e58 (2026-08-12, ``job.curate.FIFTYONE_COMMIT``):
``fiftyone/brain/internal/core/uniqueness.py`` ``_compute_uniqueness`` (K = 3, ``similarity_index._kneighbors(k=K
+ 1, return_dists=True)``, ``np.mean(dists[:, 1:] * [0.6, 0.3, 0.1], axis=1)``, divided by the max) and
``fiftyone/brain/internal/core/sklearn.py`` ``NeighborsHelper`` (``_MAX_PRECOMPUTE_DISTS = 15000``; ``_build_dists``:
``embeddings -= embeddings.mean(axis=0)``, ``skm.pairwise_distances(metric="cosine")``, ``np.fill_diagonal(dists,
np.nan)``, then ``_nanargmin``'s ``np.argsort(...)[:, :k]``; ``_build_neighbors``: the same centring, then
``skp.normalize`` and ``skn.NearestNeighbors(metric="euclidean")``, ``kneighbors(X=None, n_neighbors=k)``)."""
from __future__ import annotations

import numpy as np
import pytest
from curate_data import clustered, planted
from scipy.stats import spearmanr

from job.curate import (
    FIFTYONE_COMMIT,
    find_duplicates,
    keep_rank,
    knn_graph,
    scores,
    to_roots,
    uniqueness_fiftyone,
    uniqueness_kept,
)


def _fiftyone_reference(embeddings: np.ndarray) -> np.ndarray:
    import sklearn.metrics as skm
    import sklearn.neighbors as skn
    import sklearn.preprocessing as skp

    K = 3
    if len(embeddings) <= K:
        return np.ones(len(embeddings))
    embeddings = np.array(embeddings)  # _build_dists / _build_neighbors centre in place
    embeddings -= embeddings.mean(axis=0, keepdims=True)
    if len(embeddings) <= 15000:  # _MAX_PRECOMPUTE_DISTS
        d = skm.pairwise_distances(embeddings, metric="cosine")
        np.fill_diagonal(d, np.nan)
        inds = np.argsort(d, axis=1)[:, : K + 1]  # _nanargmin(k=K + 1)
        dists = np.array([row[i] for i, row in zip(inds, d)])
    else:
        nn = skn.NearestNeighbors(metric="euclidean").fit(skp.normalize(embeddings, axis=1))
        dists, _ = nn.kneighbors(X=None, n_neighbors=K + 1)
    sample_dists = np.mean(dists[:, 1:] * [0.6, 0.3, 0.1], axis=1)
    return sample_dists / sample_dists.max()


@pytest.mark.parametrize(("n", "d"), [(2000, 128), (16000, 32)])  # both sides of fiftyone-brain's 15,000 switch
def test_fiftyone_uniqueness_reproduces_fiftyone_brain(n, d):
    x, _ = planted(clustered(n - n // 50, d=d, clusters=25, spread=0.5, seed=4), share=0.02, big_group=6)
    g = knn_graph(x, np.arange(len(x)), 10, method="exact", progress=False)
    ours, info = uniqueness_fiftyone(x, g)
    ref = _fiftyone_reference(x)
    assert info["commit"] == FIFTYONE_COMMIT and info["centred"]
    rho = spearmanr(ours, ref).statistic
    assert rho >= 0.999, rho
    if n <= 15000:  # the exact centred neighbours: the same numbers
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    top = max(1, len(x) // 100)
    overlap = len(set(np.argsort(-ours)[:top]) & set(np.argsort(-ref)[:top])) / top
    assert overlap >= 0.95


def _reference_kept(x: np.ndarray, kept: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """The weighted distance to the nearest kept images, over the kept images only (brute force)."""
    xk = x[kept].astype(np.float64)
    d = np.sqrt(np.maximum(0, 2 - 2 * xk @ xk.T))
    np.fill_diagonal(d, np.inf)
    near = np.sort(d, axis=1)[:, : len(weights)]
    s = np.mean(near * np.asarray(weights), axis=1)
    return s / s.max()


@pytest.mark.parametrize("weights", [(0.6, 0.3, 0.1), (0.5, 0.5), (0.4, 0.3, 0.2, 0.1)])
def test_kept_uniqueness_is_computed_among_the_kept_images(weights):
    base = clustered(1500, d=64, clusters=20, spread=0.5, seed=8)
    x, src = planted(base, share=0.04, big_group=25)  # a group of 25 copies: all 10 graph neighbours its own
    n = len(x)
    g = knn_graph(x, np.arange(n), 10, method="exact", progress=False)
    d = find_duplicates(g, x, keep_rank(np.arange(n), np.arange(n)))
    to_roots(d, x)
    assert np.isin(np.nonzero(src >= 0)[0], d.rows).all()
    u, info = uniqueness_kept(g, x, d, weights, extra=d.info.get("extra"))
    kept = np.setdiff1d(np.arange(n), d.rows)
    np.testing.assert_allclose(u[kept], _reference_kept(x, kept, weights), atol=2e-4)
    keep, _ = d.roots()
    assert (u[d.rows] == u[keep]).all()  # a copy is as rare as what it repeats
    assert info["kept"] == len(kept) and info["short"] == 0 and info["weights"] == list(weights)
    # the point: a source with a copy is as unique as it is without one (the old score pushed it down)
    sources = np.unique(src[src >= 0])
    alone = _reference_kept(base, np.arange(len(base)), weights)
    scale = u[kept].max()
    assert spearmanr(u[sources] / scale, alone[sources]).statistic > 0.99
    cols = scores(g, u)
    assert set(cols) == {"id", "uniqueness", "nn_cosine", "kth_cosine"} and (cols["kth_cosine"] <= cols["nn_cosine"]).all()


def test_tiny_runs_score_one():
    x = clustered(3, seed=6)
    g = knn_graph(x, np.arange(3), 2, progress=False)
    assert uniqueness_fiftyone(x, g)[0].tolist() == [1.0, 1.0, 1.0]
