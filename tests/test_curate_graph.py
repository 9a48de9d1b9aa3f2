"""The k-NN graph: exact (Faiss and torch paths), from an HNSW index and from an IVF index's lists, recall measured."""
from __future__ import annotations

import numpy as np
import pytest
from curate_data import clustered

from job.curate import exact_knn, knn_graph
from job.index.exact import exact_search
from job.errors import UsageError


def _brute(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(s, rows, axis=1)


def test_exact_graph_equals_brute_force_and_drops_self_even_among_identical_vectors():
    x = clustered(600, seed=3)
    x[10] = x[11] = x[12] = x[13]  # identical vectors: self need not come first in the search
    rows, cos = exact_knn(x, 5, batch=128)
    b_rows, b_cos = _brute(x, 5)
    assert not (rows == np.arange(600)[:, None]).any()
    np.testing.assert_allclose(cos, b_cos, atol=1e-5)
    agree = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rows, b_rows, strict=True)])
    assert agree > 0.99  # ties may order differently
    assert set(rows[10][:3]) == {11, 12, 13}


def test_torch_path_equals_faiss():
    x = clustered(300, seed=4)
    r1, c1 = exact_search(x[:50], x, 6, device="cpu")
    r2, c2 = exact_search(x[:50], x, 6, device="torch")
    np.testing.assert_allclose(c1, c2, atol=1e-5)
    assert (r1 == r2).mean() > 0.98


def test_auto_is_exact_without_an_index_and_for_small_sets():
    x = clustered(400)
    g = knn_graph(x, np.arange(400) * 7 + 1, 4, progress=False)
    assert g.method == "exact" and g.recall == 1.0 and g.rows.shape == (400, 4)
    assert "exact_estimate_s" in g.timings
    assert (g.neighbour_ids() == g.rows * 7 + 1).all()


def _index(x: np.ndarray, ids: np.ndarray, factory: str):
    import faiss

    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, ids)
    assert index.ntotal == len(x)
    return index


@pytest.mark.parametrize(("factory", "method"), [("IDMap,HNSW16,Flat", "index"), ("IVF32,Flat", "ivf-lists"),
                                                 ("IDMap,IVF32,Flat", "ivf-lists")])
def test_graph_from_an_index_records_its_measured_recall(factory, method):
    x = clustered(4000, seed=5)
    ids = np.arange(4000, dtype=np.int64) * 3 + 5
    index = _index(x, ids, factory)
    g = knn_graph(x, ids, 10, index=index, budget_s=0.0, recall_sample=400, progress=False)
    assert g.method == method
    truth, _ = _brute(x, 10)
    true_recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(g.rows, truth, strict=True)])
    assert g.recall >= 0.95 and abs(g.recall - true_recall) < 0.03  # the recorded recall is the real one
    assert g.recall_queries == 200
    ok = g.rows >= 0
    np.testing.assert_allclose(g.cosines[ok], np.einsum("ij,ij->i", x[np.where(ok)[0]], x[g.rows[ok]]), atol=1e-4)


def test_bad_input_is_a_usage_error():
    x = clustered(50)
    with pytest.raises(UsageError, match="k-NN method 'fast' unknown; valid choices"):
        knn_graph(x, np.arange(50), method="fast")
    with pytest.raises(UsageError, match="needs the run's index"):
        knn_graph(x, np.arange(50), method="index")
    with pytest.raises(UsageError, match="k = 0 is out of range; use 1 to 49"):
        knn_graph(x, np.arange(50), 0)
    import faiss

    index = faiss.IndexIDMap(faiss.IndexFlatIP(64))
    index.add_with_ids(x[:10], np.arange(10))
    with pytest.raises(UsageError, match="holds 10 vectors but 50 were given; rebuild it with: python -m job index"):
        knn_graph(x, np.arange(50), index=index)
