"""The text-query index is tuned on text queries: the embedding step writes the text-tower vectors of the driving
prompts (``index/text_queries.npy``) when that index will be approximate, and the index step tunes and measures on
them. On vectors whose queries are less specific than the indexed points (as text is), tuning on in-index vectors
records a recall the queries never get."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_MODEL, jpeg_bytes
from job.cli import main
from job.config import IndexConfig, IndexOverrides
from job.index import build_from_arrays, evaluate, load_index, set_search_params
from job.index.tune import queries_eval_set
from job.model import prompts
from job.runfolder import RunLayout

QUIET = ["--no-project", "--no-progress", "--workers", "0", "--log-level", "WARNING"]


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _gap_data(n: int = 10_000, d: int = 64, clusters: int = 100, seed: int = 0):
    """Clustered vectors, and text-like queries: each a blend of three cluster centres (its neighbours lie in
    several clusters, none near it), so graph and IVF searches must look wider than for an in-index query."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, d)))
    x = _unit(centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)) / np.sqrt(d))

    def queries(m: int) -> np.ndarray:
        return _unit(centres[rng.integers(0, clusters, (m, 3))].sum(1) + 0.3 * rng.standard_normal((m, d)) / np.sqrt(d))

    return x, np.arange(n, dtype=np.int64), queries(96), queries(200)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_tuning_on_text_like_queries_delivers_the_recall_it_records(tmp_path: Path, kind: str) -> None:
    x, ids, tune_q, fresh_q = _gap_data()
    _, _, fresh = queries_eval_set(x, ids, fresh_q)  # other queries of the same kind, never seen while tuning
    got = {}
    for how, evaluation in (("in-index", None), ("text", queries_eval_set(x, ids, tune_q))):
        url = str(tmp_path / f"{how}.faiss")
        meta = build_from_arrays(x, ids, url, IndexConfig(kind, target_recall=0.95), IndexOverrides(),
                                 progress=False, evaluation=evaluation)
        index = load_index(url)
        set_search_params(index, meta.search_params)
        got[how] = (meta.recall_at_10, evaluate(index, fresh)["recall@10"], meta.search_params)
    recorded, delivered, _ = got["in-index"]
    assert recorded >= 0.9 and delivered < recorded - 0.1, got  # the in-index recall overstates what text gets
    recorded, delivered, _ = got["text"]
    assert delivered >= 0.9 and abs(recorded - delivered) <= 0.05, got  # tuned on text-like queries: it holds


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i in range(12):
        (root / f"frame_{i:03d}.jpg").write_bytes(jpeg_bytes(160, 90, seed=300 + i))
    return root


def test_an_approximate_run_tunes_its_text_index_on_the_prompts(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", "--source", str(images), "--out", str(out), *TEST_MODEL, "--index-type", "hnsw",
                 *QUIET]) == 0
    q = np.load(RunLayout(str(out)).text_queries)
    assert q.shape == (len(prompts()), 384) and q.dtype == np.float32
    from job.model.load import encode_text
    from job.search import Searcher

    want = encode_text(Searcher.open(str(out), device="cpu").model(), prompts())
    assert np.allclose(q, want, atol=1e-5)  # the run's own text tower, the prompts in order
    manifest = json.loads((out / "manifest.json").read_text())
    text, image = manifest["text_index"], manifest["index"]
    assert text["type"] == "hnsw" and text["recall_method"].startswith("text-tower vectors of 96 driving prompts")
    assert text["recall_queries"] == len(prompts()) // 2  # half tune, half measure
    assert image["recall_method"].startswith("held-out in-index vectors")  # image queries are image vectors

    # `job index --run` later finds them again; without them it says so and tunes on in-index vectors
    assert main(["index", "--run", str(out), "--type", "hnsw", "--no-progress", "--log-level", "WARNING"]) == 0
    assert json.loads((out / "manifest.json").read_text())["text_index"]["recall_method"].startswith("text-tower")
    Path(RunLayout(str(out)).text_queries).unlink()
    assert main(["index", "--run", str(out), "--type", "hnsw", "--no-progress", "--log-level", "WARNING"]) == 0
    assert json.loads((out / "manifest.json").read_text())["text_index"]["recall_method"].startswith("held-out")


def test_an_exact_run_encodes_no_prompts(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", "--source", str(images), "--out", str(out), *TEST_MODEL, *QUIET]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_index"]["type"] == "flat" and manifest["text_index"]["recall@10"] == 1.0
    assert not Path(RunLayout(str(out)).text_queries).exists()


def test_queries_of_another_model_are_ignored(images: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["run", "--source", str(images), "--out", str(out), *TEST_MODEL, "--index-type", "hnsw",
                 *QUIET]) == 0
    np.save(RunLayout(str(out)).text_queries, np.ones((96, 768), np.float32))  # 768-d: not this run's vectors
    assert main(["index", "--run", str(out), "--type", "hnsw", "--no-progress", "--log-level", "WARNING"]) == 0
    assert json.loads((out / "manifest.json").read_text())["text_index"]["recall_method"].startswith("held-out")
    assert "(shape (96, 768), the vectors are 384-d): the text index is tuned on in-index vectors" in capfd.readouterr().err


def test_merge_carries_the_shards_prompts(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    for i in range(2):
        assert main(["run", "--source", str(images), "--out", str(out), "--shard", f"{i}/2", *TEST_MODEL,
                     "--index-type", "hnsw", *QUIET]) == 0
    shard0 = RunLayout(str(out)).shard(0).text_queries
    assert Path(shard0).exists()
    assert main(["merge", "--run", str(out), "--index-type", "hnsw", "--no-project", "--no-progress"]) == 0
    merged = RunLayout(str(out)).text_queries
    assert np.array_equal(np.load(merged), np.load(shard0))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_index"]["recall_method"].startswith("text-tower vectors of 96")
    shutil.rmtree(out)
