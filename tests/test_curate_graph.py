"""The k-NN graph: exact (CPU, and the GPU path through fake GPU classes), from an HNSW index and from an IVF index's
lists, recall measured; the pilot's estimate counts the GPU's one-time setup once."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from curate_data import clustered
from fake_gpu_faiss import install

from job.curate import exact_knn, knn_graph
from job.curate import graph as graph_mod
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


def test_exact_graph_on_the_gpu_uploads_once_and_its_pilot_counts_the_setup_once(monkeypatch: pytest.MonkeyPatch):
    n = 2000
    x = clustered(n, seed=6)
    want_rows, want_cos = exact_knn(x, 5, device="cpu")
    rec = install(monkeypatch, upload_delay_s=0.4)  # a slow upload: one-time cost the estimate must not scale
    monkeypatch.setattr(graph_mod, "PILOT_FLOPS", 100 * n * x.shape[1])  # a 100-row pilot: 1/20 of the rows
    monkeypatch.setattr(graph_mod, "GPU_PILOT_ROWS", 64)
    g = knn_graph(x, np.arange(n), 5, progress=False)
    assert g.method == "exact" and g.device == "gpu:0" and g.summary()["device"] == "gpu:0"
    assert rec.count("flat_ip") == 1 and rec.count("upload") == 1  # the base went up once for pilot and graph
    searches = [c[1] for c in rec.calls if c[0] == "search"]
    assert searches[1] == 100 and sum(searches[1:]) == n  # warm-up, pilot, then the rest (pilot rows reused)
    t = g.timings
    assert t["exact_setup_s"] >= 0.4
    per_query_part = t["exact_estimate_s"] - t["exact_setup_s"]
    assert 0 < per_query_part <= t["pilot_s"] * n / 100 + 1e-6  # only the pilot's search time is scaled
    assert t["exact_estimate_s"] < t["exact_setup_s"] * n / 100 / 2  # scaling the upload too would say >= 8 s
    assert (g.rows == want_rows).mean() > 0.999
    np.testing.assert_allclose(g.cosines, want_cos, atol=2e-6)  # fp16 base, exact cosines


def test_graph_gpu_failure_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="job")  # an earlier CLI test in this worker may have set another level
    x = clustered(1200, seed=7)
    want_rows, want_cos = exact_knn(x, 4, device="cpu")
    install(monkeypatch, fail={"search": 3})  # warm-up, pilot, then the graph's first GPU call fails
    monkeypatch.setattr(graph_mod, "GPU_PILOT_ROWS", 100)
    monkeypatch.setattr(graph_mod, "PILOT_FLOPS", 0)
    g = knn_graph(x, np.arange(1200), 4, progress=False)
    assert g.method == "exact" and g.device == "cpu"
    (note,) = g.params["fallbacks"]
    assert "failed on the GPU" in note
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"exact search: {note} (the rest of this job runs on the CPU too)"]
    assert (g.rows == want_rows).all()
    np.testing.assert_allclose(g.cosines, want_cos, atol=1e-6)


def test_graph_on_cpu_device_never_touches_the_gpu(monkeypatch: pytest.MonkeyPatch):
    rec = install(monkeypatch)
    g = knn_graph(clustered(300), np.arange(300), 3, progress=False, device="cpu")
    assert g.device == "cpu" and rec.calls == []


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
    assert g.method == method and g.params["truth_device"] == "cpu"
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


def test_approximate_graph_takes_its_recall_truth_from_the_gpu_and_frees_it(monkeypatch: pytest.MonkeyPatch):
    x = clustered(3000, seed=8)
    ids = np.arange(3000, dtype=np.int64)
    index = _index(x, ids, "IVF32,Flat")
    cpu = knn_graph(x, ids, 10, index=index, budget_s=0.0, recall_sample=400, progress=False, device="cpu")
    rec = install(monkeypatch)
    g = knn_graph(x, ids, 10, index=index, budget_s=0.0, recall_sample=400, progress=False)
    assert g.method == "ivf-lists" and g.device == "cpu" and g.params["truth_device"] == "gpu:0"
    assert rec.count("upload") == 1 and rec.names()[-1] == "free"  # one upload: pilot and both truth halves
    assert g.recall == cpu.recall and (g.rows == cpu.rows).all()
