"""The k-NN graph: exact (CPU, and the GPU path through fake GPU classes), through a balanced partition and from the
run's index, each approximate graph searched deeper until it holds the pairs above the near threshold (pair recall,
measured on a stratified sample against exact search); the pilot's estimate counts the GPU's one-time setup once."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from curate_data import clustered, planted
from fake_gpu_faiss import install

from job.curate import balanced_partition, exact_knn, knn_graph, partition_knn
from job.curate import graph as graph_mod
from job.curate.record import graph_info
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
    assert g.method == "exact" and g.device == "gpu:0" and graph_info(g).device == "gpu:0"
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
    (note,) = g.fallbacks
    assert "failed on the GPU" in note
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"exact search: {note} (the rest of this job runs on the CPU too)"]
    assert (g.rows == want_rows).all()
    np.testing.assert_allclose(g.cosines, want_cos, atol=1e-6)


def test_graph_on_cpu_device_never_touches_the_gpu(monkeypatch: pytest.MonkeyPatch):
    rec = install(monkeypatch)
    g = knn_graph(clustered(300), np.arange(300), 3, progress=False, device="cpu")
    assert g.device == "cpu" and rec.calls == []


def test_auto_is_exact_for_small_sets():
    x = clustered(400)
    g = knn_graph(x, np.arange(400) * 7 + 1, 4, progress=False)
    assert g.method == "exact" and g.recall == 1.0 and g.pair_recall == 1.0 and g.rows.shape == (400, 4)
    assert "exact_estimate_s" in g.timings
    assert (g.neighbour_ids() == g.rows * 7 + 1).all()


def _planted_cliplike(n: int = 6000, seed: int = 12):
    return planted(clustered(n, d=128, clusters=40, spread=0.5, seed=seed), share=0.03, big_group=15)


def test_the_partition_is_balanced_even_over_uneven_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([clustered(9000, d=32, clusters=3, spread=0.2, seed=1), clustered(300, d=32, seed=2)])
    x = x[rng.permutation(len(x))]
    part = balanced_partition(x, 256, seed=0)
    sizes = part.sizes()
    assert sizes.sum() == len(x) and sorted(part.order.tolist()) == list(range(len(x)))
    assert sizes.max() <= 3 * 256 and part.nlist >= len(x) // 512
    assert (part.near[:, 0] == np.arange(part.nlist)).all()  # each list's nearest list is itself
    lists = part.list_of_rows()
    assert all((lists[part.members(lst)] == lst).all() for lst in range(part.nlist))
    same = np.repeat(clustered(1, d=32, seed=3), 1200, axis=0)  # identical vectors: k-means cannot split them
    tied = balanced_partition(same, 256, seed=0)
    assert tied.sizes().max() <= 2 * 256 and tied.sizes().sum() == 1200


def test_partition_search_is_exact_within_its_lists_and_deepens_by_adding_lists():
    x, _ = _planted_cliplike(3000)
    part = balanced_partition(x, 128, seed=0)
    rows1, cos1 = partition_knn(part, x, 10, 1)
    lists = part.list_of_rows()
    assert ((rows1 < 0) | (lists[np.clip(rows1, 0, None)] == lists[:, None])).all()  # probe 1: its own list only
    rows3, cos3 = partition_knn(part, x, 10, 3)
    deeper = partition_knn(part, x, 10, 3, start=1, done=(rows1, cos1))
    np.testing.assert_array_equal(deeper[0], rows3)
    ok = rows3 >= 0
    np.testing.assert_allclose(cos3[ok], np.einsum("ij,ij->i", x[np.nonzero(ok)[0]], x[rows3[ok]]), atol=1e-5)
    truth, _ = _brute(x, 10)
    recall = [np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r, truth, strict=True)]) for r in (rows1, rows3)]
    assert recall[1] > recall[0] and not (rows3 == np.arange(len(x))[:, None]).any()
    only = np.array([5, 17, 2999])
    np.testing.assert_array_equal(partition_knn(part, x, 10, 3, only=only)[0], rows3[only])


def test_the_partition_graph_holds_the_pairs_above_the_threshold():
    x, src = _planted_cliplike()
    n = len(x)
    g = knn_graph(x, np.arange(n), 10, method="partition", list_size=128, progress=False)
    assert g.method == "partition" and g.lists and g.largest_list and g.probe
    assert g.pair_recall is not None and g.pair_recall >= 0.99 and g.pairs > 50 and g.pair_rows >= 500
    assert 0.94 < (g.pair_threshold or 0) < 0.97 and g.tuning[-1]["pair_recall"] == round(g.pair_recall, 5)
    copies = np.nonzero(src >= 0)[0]
    held = (g.rows[copies] == src[copies][:, None]).any(axis=1) | (g.rows[src[copies]] == copies[:, None]).any(axis=1)
    truth, _ = _brute(x, 10)
    in_top = (truth[copies] == src[copies][:, None]).any(axis=1)  # pairs a 10-graph can hold at all
    assert held[in_top].mean() >= 0.99  # the measured pair recall is the real one
    true_recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(g.rows, truth, strict=True)])
    assert abs(g.recall - true_recall) < 0.03


def test_a_graph_that_falls_short_is_searched_deeper_until_it_holds_the_pairs():
    """Small lists cut pairs apart (here with a gate at cosine 0.85: ordinary close neighbours count as pairs); each
    further partition (another seed, other boundaries) is searched and merged until the sample's pair recall reaches
    the target."""
    x, src = _planted_cliplike()
    g = knn_graph(x, np.arange(len(x)), 10, method="partition", list_size=32, target_pair_recall=0.99,
                  gate=lambda rows, cos: 0.85, progress=False)
    efforts = [t["effort"] for t in g.tuning]
    assert efforts == list(range(1, len(efforts) + 1)) and len(efforts) >= 2
    assert all(t["pair_recall"] < 0.99 for t in g.tuning[:-1]) and g.partitions == efforts[-1] and g.probe == 2
    assert g.pair_recall is not None and (g.pair_recall >= 0.99 or g.partitions == 8)
    assert g.tuning[-1]["pair_recall"] > g.tuning[0]["pair_recall"]
    ok = g.rows >= 0
    assert not (g.rows == np.arange(len(x))[:, None]).any()
    assert all(len(set(r[r >= 0])) == int((r >= 0).sum()) for r in g.rows)  # merged: no neighbour twice
    np.testing.assert_allclose(g.cosines[ok], np.einsum("ij,ij->i", x[np.nonzero(ok)[0]], x[g.rows[ok]]), atol=1e-5)


def _index(x: np.ndarray, ids: np.ndarray, factory: str):
    import faiss

    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, ids)
    assert index.ntotal == len(x)
    return index


@pytest.mark.parametrize("factory", ["IDMap,HNSW16,Flat", "IDMap,IVF32,PQ16x4"])
def test_graph_from_the_runs_index_holds_the_pairs_with_exact_cosines(factory):
    x, _ = _planted_cliplike(4000)
    ids = np.arange(len(x), dtype=np.int64) * 3 + 5
    index = _index(x, ids, factory)
    g = knn_graph(x, ids, 10, index=index, method="index", progress=False)
    assert g.method == "index" and g.search_params and g.pair_recall is not None and g.pair_recall >= 0.99
    assert g.truth_device == "cpu"
    ok = g.rows >= 0
    np.testing.assert_allclose(g.cosines[ok], np.einsum("ij,ij->i", x[np.where(ok)[0]], x[g.rows[ok]]), atol=1e-5)
    assert (np.diff(np.where(ok, g.cosines, -np.inf), axis=1) <= 1e-6).all()  # re-sorted by the exact cosine


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
        knn_graph(x, np.arange(50), index=index, method="index")


def test_approximate_graph_takes_its_recall_truth_from_the_gpu_and_frees_it(monkeypatch: pytest.MonkeyPatch):
    x, _ = _planted_cliplike(3000)
    ids = np.arange(len(x), dtype=np.int64)
    cpu = knn_graph(x, ids, 10, method="partition", list_size=128, progress=False, device="cpu")
    rec = install(monkeypatch)
    g = knn_graph(x, ids, 10, method="partition", list_size=128, progress=False)
    assert g.method == "partition" and g.device == "cpu" and g.truth_device == "gpu:0"
    assert rec.count("upload") == 1 and rec.names()[-1] == "free"  # one upload: the recall sample's truth
    assert g.pair_recall == cpu.pair_recall and (g.rows == cpu.rows).all()


def test_drop_self_never_keeps_the_query_when_fewer_than_k_others_were_found():
    from job.index.exact import drop_self

    rows, sims = np.array([[7, 3, 5]]), np.array([[1.0, 0.9, 0.8]], np.float32)
    r, c = drop_self(rows, sims, np.array([7]), 3)  # three found, self among them: two others
    assert r.tolist() == [[3, 5, -1]] and np.isnan(c[0, 2])
    r, _ = drop_self(rows, sims, np.array([9]), 2)
    assert r.tolist() == [[7, 3]]
