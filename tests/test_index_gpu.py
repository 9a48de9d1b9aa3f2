"""Faiss on the GPU (faiss-gpu): where each step runs, the exact search's single upload and query tiles, IVF training
and adding on the GPU, saved indexes that are CPU indexes, and one warning on a GPU failure — on the CPU through fake
GPU classes (tests/fake_gpu_faiss.py) and the real faiss-gpu classes without a device; the tests marked ``gpu`` run
the same on a real GPU."""
from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from fake_gpu_faiss import install

from job.cli import build_parser, config_from_args
from job.config import IndexConfig, IndexOverrides
from job.errors import UsageError
from job.index import build_index_file, load_index, plan_index
from job.index import exact as exact_mod
from job.index._gpu import Placement
from job.index.build import build_index
from job.index.exact import ExactSearcher, exact_search
from job.index.tune import walk_index
from job.runfolder import read_index_info

D = 32
needs_gpu = pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs a CUDA GPU visible to Faiss (faiss-gpu)")


def clustered(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), d))
    x = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(path: Path, x: np.ndarray) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    pq.write_table(pa.table({"id": np.arange(len(x), dtype=np.int64) * 5 + 3, "path": [f"f{i}.jpg" for i in range(len(x))],
                             "embedding": emb}), path)
    return str(path)


@pytest.fixture(autouse=True)
def _job_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="job")  # an earlier CLI test in this worker may have set another level


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


IVF_N = 12_000  # >= 39 x 256 training points: 8-bit PQ codes by default, which the GPU IVF-PQ takes


def cpu_types(index) -> list[str]:
    return [type(ix).__name__ for ix in walk_index(index)]


# ------------------------------------------------------------------------------------------ where it runs


def test_the_gpu_is_used_only_when_faiss_sees_one_and_device_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert not Placement("auto").gpu and not Placement("cpu").gpu
    with pytest.raises(UsageError, match=r"--device cuda, but Faiss sees no GPU .*use --device auto or cpu"):
        Placement("cuda")
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert Placement("auto").gpu and Placement("cuda").gpu
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1 / 0)  # cpu must not even ask
    assert not Placement("cpu").gpu
    with pytest.raises(UsageError, match="unknown device 'gpu'; valid choices: auto, cpu, cuda"):
        Placement("gpu")


def test_this_machine_has_no_gpu_so_auto_is_the_cpu() -> None:
    """The locked faiss-gpu wheel on a machine without a GPU: the CPU library (what CI and the tests run)."""
    if faiss.get_num_gpus():
        pytest.skip("a GPU is present")
    with ExactSearcher(clustered(50), device="auto") as s:
        assert s.device == "cpu" and not s.on_gpu


def test_device_option_reaches_the_index_config() -> None:
    parser = build_parser()
    ns = parser.parse_args(["index", "--embeddings", "e.parquet", "--index-out", "i.faiss", "--device", "cpu"])
    assert config_from_args(ns).index.device == "cpu"
    ns = parser.parse_args(["index", "--embeddings", "e.parquet", "--index-out", "i.faiss"])
    assert config_from_args(ns).index.device == "auto"
    with pytest.raises(UsageError, match="unknown device 'tpu'; valid choices: auto, cpu, cuda"):
        IndexConfig(device="tpu")


def test_index_device_cuda_without_a_gpu_exits_2_and_writes_nothing(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from job.cli import main

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    emb = write_embeddings(tmp_path / "v" / "embeddings.parquet", clustered(300))
    out = tmp_path / "idx" / "i.faiss"
    rc = main(["index", "--embeddings", emb, "--index-out", str(out), "--device", "cuda", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--device cuda, but Faiss sees no GPU" in err and len(err.splitlines()) == 1, err
    assert not out.parent.exists()


# ------------------------------------------------------------------------------------------ exact search


def test_exact_search_uploads_the_base_once_as_fp16_tiles_the_queries_and_rescores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rec = install(monkeypatch)
    monkeypatch.setattr(exact_mod, "GPU_QUERY_TILE", 128)
    monkeypatch.setattr(exact_mod, "GPU_ADD_CHUNK", 700)
    x = clustered(2000, 64, seed=1)
    x[7] = x[8]  # identical vectors and near ties: where fp16 rounding could reorder
    want_rows, want_sims = exact_search(x[:500], x, 10, device="cpu")
    with ExactSearcher(x, device="auto") as s:
        assert s.device == "gpu:0" and s.setup_s > 0
        rows, sims = s.search(x[:500], 10)
        rows2, sims2 = s.search(x[500:900], 10)
    assert rec.names().count("resources") == 1 and rec.count("flat_ip") == 1
    assert rec.calls[1] == ("flat_ip", 64, True, 0)  # float16 base on device 0
    assert [c[1] for c in rec.calls if c[0] == "upload"] == [700, 700, 600]  # once, in chunks
    searches = [c[1:] for c in rec.calls if c[0] == "search"]
    assert searches[0] == (exact_mod.WARMUP_QUERIES, 1)  # the warm-up is setup
    assert searches[1:] == [(128, 18)] * 3 + [(116, 18)] + [(128, 18)] * 3 + [(16, 18)]  # k + RESCORE_EXTRA
    assert rec.names()[-1] == "free"
    # fp16 candidates, float32 cosines: the same neighbours and the exact cosines the CPU gives
    assert (rows == want_rows).mean() > 0.999
    np.testing.assert_allclose(sims, want_sims, atol=2e-6)
    np.testing.assert_allclose(sims2, exact_search(x[500:900], x, 10, device="cpu")[1], atol=2e-6)
    # (the fp16 scores themselves are off by more: the re-scoring is what makes the cosines exact)
    raw, _ = faiss.IndexFlatIP(64), None
    raw.add(x.astype(np.float16).astype(np.float32))
    d16, _ = raw.search(x[:500].astype(np.float16).astype(np.float32), 10)
    assert np.abs(d16 - want_sims).max() > 1e-4


def test_rescoring_a_tile_overlaps_the_gpu_search_of_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, search_delay_s=0.15)
    monkeypatch.setattr(exact_mod, "GPU_QUERY_TILE", 50)
    real = exact_mod.rescore

    def slow_rescore(*args):
        time.sleep(0.15)
        return real(*args)

    monkeypatch.setattr(exact_mod, "rescore", slow_rescore)
    x = clustered(400)
    with ExactSearcher(x) as s:
        t0 = time.perf_counter()
        rows, _ = s.search(x[:200], 3)  # 4 tiles: 8 x 0.15 s one after the other, ~5 x 0.15 s overlapped
        elapsed = time.perf_counter() - t0
    assert (rows[:, 0] == np.arange(200)).all()
    assert elapsed < 7 * 0.15, elapsed


def test_exact_search_gpu_failure_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    rec = install(monkeypatch, fail={"search": 3})  # the warm-up and the first tile pass, the second tile fails
    monkeypatch.setattr(exact_mod, "GPU_QUERY_TILE", 100)
    x = clustered(1500, seed=2)
    with ExactSearcher(x, device="cuda") as s:
        rows, sims = s.search(x[:450], 5)
        assert s.device == "cpu" and s.placement.steps == {"exact": "cpu"}
        s.search(x[450:600], 5)  # later searches: the CPU, no new warning
    want_rows, want_sims = exact_search(x[:450], x, 5, device="cpu")
    assert (rows == want_rows).all() and np.allclose(sims, want_sims, atol=1e-6)
    assert rec.count("search") == 3 and "free" in rec.names()
    (warning,) = warnings_of(caplog)
    assert "exact failed on the GPU (RuntimeError: fake GPU failure in search" in warning
    assert len(s.placement.fallbacks) == 1


def test_exact_search_upload_failure_falls_back(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    install(monkeypatch, fail={"upload": 1})
    x = clustered(300)
    with ExactSearcher(x) as s:
        assert not s.on_gpu and s.placement.fallbacks
        rows, _ = s.search(x[:20], 3)
    assert (rows[:, 0] == np.arange(20)).all()
    assert len(warnings_of(caplog)) == 1


@pytest.fixture
def pretend_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fakes but the GPU count: the locked faiss-gpu's own GPU classes, on a machine without a GPU."""
    if faiss.get_num_gpus():
        pytest.skip("a GPU is present")
    import job.index._gpu as gpu_module

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(gpu_module, "_resources", None)


def test_real_faiss_gpu_classes_without_a_device_fall_back(pretend_one_gpu: None,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The locked faiss-gpu's own GpuIndexFlatIP raises here (no device 0)."""
    x = clustered(200)
    rows, sims = exact_search(x[:10], x, 3)
    assert (rows[:, 0] == np.arange(10)).all()
    (warning,) = warnings_of(caplog)
    assert "Invalid GPU device" in warning


def test_device_cpu_never_touches_the_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rec = install(monkeypatch)
    x = clustered(3000)
    exact_search(x[:10], x, 3, device="cpu")
    emb = write_embeddings(tmp_path / "e.parquet", x)
    info = build_index_file(emb, str(tmp_path / "i.faiss"), IndexConfig("ivfpq", device="cpu"), progress=False)
    assert rec.calls == []
    assert info.devices == {"truth": "cpu", "train": "cpu", "add": "cpu", "tune": "cpu"} and info.device_notes == {}


# ------------------------------------------------------------------------------------------ index building


@pytest.mark.parametrize("kind,factory,ivf_type", [
    ("ivfpq", None, "IndexIVFPQ"),  # IDMap,IVF,PQ,Refine(SQ8): the IVF behind two wrappers
    ("flat", "IVF32,Flat", "IndexIVFFlat"),  # the IVF is the index
    ("flat", "PCA32,IVF32,SQ8", "IndexIVFScalarQuantizer"),  # behind a pre-transform
])
def test_ivf_trains_and_fills_on_the_gpu_and_is_saved_as_a_cpu_index(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, factory: str | None, ivf_type: str) -> None:
    x = clustered(IVF_N)
    emb = write_embeddings(tmp_path / "e.parquet", x)
    icfg = IndexConfig(kind, factory=factory, device="auto")
    cpu_info = build_index_file(emb, str(tmp_path / "cpu.faiss"), IndexConfig(kind, factory=factory, device="cpu"),
                                progress=False)
    rec = install(monkeypatch)
    info = build_index_file(emb, str(tmp_path / "gpu.faiss"), icfg, progress=False)
    to_gpu = [c for c in rec.calls if c[0] == "to_gpu"]
    assert to_gpu == [("to_gpu", ivf_type, 0, True)] and rec.count("to_cpu") == 1
    (gpu_ivf,) = rec.gpu_indexes  # trained and filled where the GPU index stood
    assert gpu_ivf.is_trained and gpu_ivf.ntotal == IVF_N
    assert info.devices == {"truth": "gpu:0", "train": "gpu:0", "add": "gpu:0", "tune": "cpu"}
    assert info.device == "gpu:0 (truth, train, add); cpu (tune)" and info.fallbacks == []
    assert "tune" in info.device_notes
    assert json.loads((tmp_path / "gpu.json").read_text())["devices"]["train"] == "gpu:0"
    assert read_index_info(str(tmp_path / "gpu.faiss")).devices == info.devices
    saved = load_index(str(tmp_path / "gpu.faiss"))  # a CPU index: readable without a GPU
    cpu_built = load_index(str(tmp_path / "cpu.faiss"))
    assert not [t for t in cpu_types(saved) if t.startswith("Gpu")]
    assert cpu_types(saved) == cpu_types(cpu_built)
    # the same k-means and codes as the CPU build (the fake GPU is CPU Faiss): the same answers, the same recall
    assert saved.ntotal == IVF_N and info.recall_at_10 == cpu_info.recall_at_10
    assert info.search_params == cpu_info.search_params
    np.testing.assert_array_equal(saved.search(x[:200], 10)[1], cpu_built.search(x[:200], 10)[1])
    del saved, cpu_built
    gc.collect()  # the wrappers own their CPU clone: freeing them must not crash


def test_hnsw_flat_and_unsupported_pq_build_on_the_cpu_and_say_why(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    rec = install(monkeypatch)
    emb = write_embeddings(tmp_path / "e.parquet", clustered(3000))
    hnsw = build_index_file(emb, str(tmp_path / "h.faiss"), IndexConfig("hnsw"), progress=False)
    assert hnsw.devices == {"truth": "gpu:0", "add": "cpu", "tune": "cpu"}
    assert "HNSW builds on the CPU" in hnsw.device_notes["add"]
    flat = build_index_file(emb, str(tmp_path / "f.faiss"), IndexConfig("flat"), progress=False)
    assert flat.devices["add"] == "cpu" and "no IVF part" in flat.device_notes["add"]
    pq6 = build_index_file(emb, str(tmp_path / "p.faiss"), IndexConfig("ivfpq"), IndexOverrides(pq_bits=6),
                           progress=False)
    assert pq6.devices["train"] == "cpu" and "8-bit codes" in pq6.device_notes["train"]
    assert rec.count("to_gpu") == 0


@pytest.mark.parametrize("failing", ["to_gpu", "to_cpu"])
def test_gpu_build_failure_rebuilds_on_the_cpu_with_one_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture,
                                                                failing: str) -> None:
    x = clustered(IVF_N)
    emb = write_embeddings(tmp_path / "e.parquet", x)
    cpu_info = build_index_file(emb, str(tmp_path / "cpu.faiss"), IndexConfig("ivfpq", device="cpu"), progress=False)
    install(monkeypatch, fail={failing: 1})
    info = build_index_file(emb, str(tmp_path / "i.faiss"), IndexConfig("ivfpq"), progress=False)
    assert info.devices == {"truth": "gpu:0", "train": "cpu", "add": "cpu", "tune": "cpu"}
    (note,) = info.fallbacks
    assert note.startswith("train+add failed on the GPU (RuntimeError: fake GPU failure in " + failing)
    (warning,) = warnings_of(caplog)
    assert "train+add failed on the GPU" in warning
    assert info.recall_at_10 == cpu_info.recall_at_10
    saved = load_index(str(tmp_path / "i.faiss"))
    assert saved.ntotal == IVF_N and not [t for t in cpu_types(saved) if t.startswith("Gpu")]
    gc.collect()


def test_real_faiss_gpu_clone_without_a_device_falls_back(pretend_one_gpu: None,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    x = clustered(IVF_N)
    plan = plan_index(len(x), D, IndexConfig("ivfpq"))
    placement = Placement("auto")
    index, info = build_index(x, np.arange(len(x)), plan, progress=False, placement=placement)
    assert index.ntotal == IVF_N and placement.steps == {"train": "cpu", "add": "cpu"}
    assert len(placement.fallbacks) == 1 and len(warnings_of(caplog)) == 1


# ------------------------------------------------------------------------------------------ real GPU


@pytest.mark.gpu
@needs_gpu
def test_gpu_exact_search_equals_the_cpu() -> None:
    x = clustered(50_000, 128, seed=5)
    want_rows, want_sims = exact_search(x[:3000], x, 10, device="cpu")
    with ExactSearcher(x, device="cuda") as s:
        assert s.on_gpu
        rows, sims = s.search(x[:3000], 10)
    assert (rows == want_rows).mean() > 0.999
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_gpu_ivf_build_saves_a_cpu_index(tmp_path: Path) -> None:
    x = clustered(60_000, 96, seed=6)
    emb = write_embeddings(tmp_path / "e.parquet", x)
    info = build_index_file(emb, str(tmp_path / "i.faiss"), IndexConfig("ivfpq", device="cuda"), progress=False)
    assert info.devices == {"truth": "gpu:0", "train": "gpu:0", "add": "gpu:0", "tune": "cpu"}, info.fallbacks
    saved = load_index(str(tmp_path / "i.faiss"))
    assert not [t for t in cpu_types(saved) if t.startswith("Gpu")] and saved.ntotal == 60_000
    assert info.recall_at_10 is not None and info.recall_at_10 >= 0.9


@pytest.mark.gpu
@needs_gpu
def test_gpu_knn_graph_uploads_once_and_keeps_setup_out_of_the_per_query_estimate() -> None:
    from job.curate import exact_knn, knn_graph

    x = clustered(100_000, 128, seed=7)
    g = knn_graph(x, np.arange(len(x)), 10, progress=False, device="cuda")
    assert g.method == "exact" and g.device == "gpu:0" and "fallbacks" not in g.params
    t = g.timings
    assert 0 < t["exact_setup_s"] < t["exact_estimate_s"]
    sample = np.arange(0, len(x), 97)
    want_rows, want_cos = exact_knn(x, 10, device="cpu")
    assert (g.rows[sample] == want_rows[sample]).mean() > 0.999
    np.testing.assert_allclose(g.cosines, want_cos, atol=1e-5)
