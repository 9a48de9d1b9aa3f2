"""Faiss index: planning, every type builds/round-trips/finds in-index vectors, recall target, s3, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from job import fsutil
from job.cli import main
from job.config import IndexConfig, IndexOverrides, JobConfig
from job.errors import DataError, UsageError
from job.index import (
    build_index_file,
    build_run_index,
    default_nlist,
    default_pq_bits,
    default_pq_m,
    exact_search,
    load_index,
    load_vectors,
    open_dataset,
    plan_index,
    recall_at,
)
from job.embed.parts import PartWriter
from job.runfolder import RunLayout, embedding_schema
from job.values import parse_size

N, D = 3000, 32
META_FIELDS = [pa.field("scene_name", pa.string()), pa.field("channel", pa.string()),
               pa.field("location", pa.string()), pa.field("timestamp", pa.int64())]


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in Gaussian clusters on the sphere around a shared direction (CLIP-like)."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(d)
    centres = rng.standard_normal((max(1, n // 100), d))
    lab = rng.integers(0, len(centres), n)
    x = (0.7 * mu / np.linalg.norm(mu) + 0.6 * centres[lab] / np.linalg.norm(centres[lab], axis=1, keepdims=True)
         + 0.35 * rng.standard_normal((n, d)) / np.sqrt(d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_run(run_dir: str, x: np.ndarray, *, shard_size: int = 1000) -> RunLayout:
    layout = RunLayout(run_dir)
    w = PartWriter(layout, embedding_schema(x.shape[1], META_FIELDS), part_size=shard_size)
    for i, v in enumerate(x):
        w.add(f"samples/CAM_FRONT/frame_{i:05d}.jpg", v, 1600, 900,
              {"scene_name": f"scene-{i // 100:04d}", "channel": "CAM_FRONT", "location": "boston-seaport",
               "timestamp": 1_532_402_927_000_000 + i * 500_000})
    w.close()
    return layout


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(N, D)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, vectors: np.ndarray) -> RunLayout:
    return write_run(str(tmp_path_factory.mktemp("run")), vectors)


def _ids(layout: RunLayout) -> np.ndarray:
    return pq.read_table(layout.embeddings, columns=["id"]).column("id").to_numpy()


# ------------------------------------------------------------------------------------------ planning


def test_derived_parameters() -> None:
    assert default_nlist(1_400_000) == 4096
    assert default_nlist(200_000) == 2048
    assert default_nlist(1000) == 16 and 1000 >= 39 * 16
    assert default_nlist(10) == 1
    assert default_pq_m(768) == 96 and default_pq_m(512) == 64 and 100 % default_pq_m(100) == 0
    assert default_pq_bits(200_000) == 8 and default_pq_bits(2000) == 5
    assert parse_size("4G") == 4 * 2**30 and parse_size("512MB") == 512 * 2**20
    assert parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("1000") == 1000
    for bad in ("lots", "4Gi", "0", "-1G", "4 G B"):
        with pytest.raises(UsageError, match="--max-memory"):
            parse_size(bad)
    # the one grammar: the config section parses it too, so the index step sees bytes
    assert IndexConfig("auto", max_memory="16G").max_memory == 16 * 2**30


def test_auto_reasons_like_autofaiss() -> None:
    small = plan_index(2424, 768, IndexConfig("auto"))
    assert small.kind == "flat" and "exact" in small.reason
    mid = plan_index(200_000, 768, IndexConfig("auto", max_memory="16G"))
    assert mid.kind == "hnsw" and mid.factory == "IDMap,HNSW32,Flat" and "budget" in mid.reason
    no_room = plan_index(200_000, 768, IndexConfig("auto", max_memory="400M"))
    assert no_room.factory == "IDMap,IVF2048,PQ96x8,Refine(SQ8)" and "> budget" in no_room.reason
    big = plan_index(1_400_000, 768, IndexConfig("auto", max_memory="16G"))
    assert big.kind == "ivfpq" and big.factory == "IDMap,IVF4096,PQ96x8,Refine(SQ8)" and "> 1000000" in big.reason
    tight = plan_index(1_400_000, 768, IndexConfig("auto", max_memory="1.1G"))
    assert tight.factory == "IDMap,IVF4096,PQ48x8,Refine(SQ8)" and tight.estimated_bytes <= 1.1 * 2**30
    tighter = plan_index(1_400_000, 768, IndexConfig("auto", max_memory="300M"))
    assert tighter.factory == "IVF4096,PQ192x8" and tighter.params["refine"] == "none"
    with pytest.raises(UsageError, match="raise --max-memory"):
        plan_index(1_400_000, 768, IndexConfig("auto", max_memory="10M"))
    assert plan_index(200_000, 768, IndexConfig("hnsw"), IndexOverrides(hnsw_m=16)).factory == "IDMap,HNSW16,Flat"
    ivf = plan_index(200_000, 768, IndexConfig("ivfpq"), IndexOverrides(nlist=1024, pq_m=48, refine="none"))
    assert ivf.factory == "IVF1024,PQ48x8"
    with pytest.raises(UsageError, match="does not divide"):
        plan_index(200_000, 768, IndexConfig("ivfpq"), IndexOverrides(pq_m=100))


# ------------------------------------------------------------------------------------------ every type


@pytest.mark.parametrize("kind,factory", [("flat", None), ("hnsw", None), ("ivfpq", None), ("auto", None),
                                          ("flat", "IVF16,Flat")])
def test_every_type_builds_roundtrips_and_finds_itself(run: RunLayout, vectors: np.ndarray, tmp_path: Path,
                                                        kind: str, factory: str | None) -> None:
    out = str(tmp_path / "idx" / "nuscenes.faiss")
    meta = build_index_file(run.embeddings, out, IndexConfig(kind, factory=factory), progress=False)
    side = json.loads((tmp_path / "idx" / "nuscenes.json").read_text())
    assert side == meta.to_dict()
    for key in ("type", "factory", "params", "n", "d", "build_seconds", "bytes", "recall@1", "recall@10",
                "search_params"):
        assert key in side
    assert side["n"] == N and side["d"] == D and side["bytes"] == os.path.getsize(out)
    assert not [p for p in os.listdir(tmp_path / "idx") if ".tmp-" in p]
    if factory:
        assert "IVF16,Flat" in side["factory"] and side["search_params"].startswith("nprobe=")

    index = load_index(out)  # round trip from disk; the tuned search parameters travel with it
    assert index.ntotal == N
    ids = _ids(run)
    rows = np.random.default_rng(1).choice(N, 200, replace=False)
    scores, labels = index.search(vectors[rows], 10)  # the operating point the parameters were tuned for
    assert set(labels.ravel().tolist()) <= set(ids.tolist())  # faiss ids are the embeddings' ids
    assert (labels[:, 0] == ids[rows]).all(), "an in-index vector must be its own nearest neighbour"
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=0.02)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_recall_on_clustered_data_meets_target(tmp_path: Path, kind: str) -> None:
    x = clustered(6000, D, seed=3)
    layout = write_run(str(tmp_path / "run"), x, shard_size=4000)
    meta = build_index_file(layout.embeddings, str(tmp_path / "i.faiss"), IndexConfig(kind, target_recall=0.95),
                            progress=False)
    # tuned on one half of the held-out queries, measured on the other half
    assert meta.target_met and meta.recall_at_10 >= 0.95
    # Independent check on fresh queries near the data (not in the index), against exact search.
    index = load_index(str(tmp_path / "i.faiss"))
    rng = np.random.default_rng(9)
    xq = x[rng.choice(len(x), 300, replace=False)] + 0.05 * rng.standard_normal((300, D)).astype(np.float32) / np.sqrt(D)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    ids = _ids(layout)
    truth = ids[exact_search(xq, x, 10, device="cpu")[0]]
    _, found = index.search(xq, 10)
    assert recall_at(found, truth, 10) >= 0.94  # other queries than those tuned on: allow a little slack


def test_fixed_search_params_and_overrides(run: RunLayout, tmp_path: Path) -> None:
    ov = IndexOverrides(hnsw_m=8, ef_construction=20, search_params="efSearch=40")
    meta = build_index_file(run.embeddings, str(tmp_path / "h.faiss"), IndexConfig("hnsw"), ov, progress=False)
    assert meta.factory == "IDMap,HNSW8,Flat" and meta.search_params == "efSearch=40"
    assert meta.params == {"hnsw_m": 8, "ef_construction": 20} and meta.tuning == []


def test_build_run_index_for_the_runner(run: RunLayout) -> None:
    cfg = JobConfig(index=IndexConfig("auto"), progress=False)
    meta = build_run_index(cfg, run)
    assert meta.type == "flat" and meta.recall_at_10 == 1.0
    assert os.path.exists(os.path.join(run.index_dir, "index.faiss"))
    assert json.loads(Path(run.index_dir, "index.json").read_text())["n"] == N


@pytest.mark.s3
def test_s3_run_folder(s3_bucket: str, vectors: np.ndarray) -> None:
    from job.search import Searcher

    layout = write_run(f"s3://{s3_bucket}/runs/a", vectors[:500], shard_size=200)
    meta = build_run_index(JobConfig(index=IndexConfig("hnsw"), progress=False), layout)
    assert fsutil.exists(f"s3://{s3_bucket}/runs/a/index/index.faiss")
    assert fsutil.read_json(f"s3://{s3_bucket}/runs/a/index/index.json")["n"] == 500 == meta.n
    s = Searcher.open(f"s3://{s3_bucket}/runs/a")
    target = int(_ids_s3(layout)[7])
    hits = s.by_id(target, 3)
    assert hits[0]["id"] == target and hits[0]["path"] == "samples/CAM_FRONT/frame_00007.jpg"
    assert hits[0]["scene_name"] == "scene-0000" and hits[0]["time"].startswith("2018-07-24")


def _ids_s3(layout: RunLayout) -> np.ndarray:
    return open_dataset(layout.embeddings).to_table(columns=["id"]).column("id").to_numpy()


# ------------------------------------------------------------------------------------------ bad input


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        rc = main(argv + ["--no-progress", "--log-level", "ERROR"])
    except SystemExit as exc:  # argparse rejects bad choices itself, also with code 2
        rc = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    return rc, err


def _manifest(*, embed_dim: int) -> dict[str, object]:
    """A finished run's manifest.json, as the embed step writes it (only model.embed_dim matters here)."""
    return {
        "schema_version": 2, "status": "complete", "started": "2024-01-01T00:00:00+00:00",
        "finished": "2024-01-01T00:01:00+00:00", "host": "test", "run_dir": ".", "config": {},
        "outputs": {"embeddings": "embeddings.parquet", "failures": "failures.parquet", "state": "_run.json"},
        "model": {"name": "ViT-L-14", "pretrained": "openclip", "weights_sha256": "0" * 64, "pool": "mean",
                  "image_size": 224, "embed_dim": embed_dim},
        "counts": {"seen": 300, "embedded": 300, "failed": 0},
    }


def _write_table(path: Path, x: np.ndarray, ids: np.ndarray | None = None) -> None:
    ids = np.arange(len(x), dtype=np.int64) if ids is None else ids
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "path": [f"{i}.jpg" for i in range(len(x))], "embedding": emb}), path)


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("empty", "no vectors"),
    ("dimension", "dimension 32"),
    ("not-embeddings", "no embedding column"),
    ("factory", "Faiss cannot build"),
    ("pq-m", "does not divide"),
    ("memory", "--max-memory"),
    ("params", "is not NAME=INT"),
    ("type", "unknown index type"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], vectors: np.ndarray,
                                              case: str, message: str) -> None:
    emb = tmp_path / "vectors" / "embeddings.parquet"
    x = vectors[:300].copy()
    extra: list[str] = []
    if case == "empty":
        _write_table(emb, x[:0])
    elif case == "dimension":
        _write_table(emb, x)
        (emb.parent / "manifest.json").write_text(json.dumps(_manifest(embed_dim=768)))
    elif case == "not-embeddings":
        emb.parent.mkdir(parents=True)
        pq.write_table(pa.table({"id": [1, 2], "path": ["a", "b"]}), emb)
    elif case != "missing":
        _write_table(emb, x)
        extra = {"factory": ["--factory", "IVF16,PQ7"], "pq-m": ["--type", "ivfpq", "--pq-m", "5"],
                 "memory": ["--max-memory", "lots"], "params": ["--search-params", "nprobes=3"],
                 "type": ["--type", "annoy"]}[case]
    out = tmp_path / "indexes" / "nuscenes_vitl14.faiss"
    rc, err = _cli(["index", "--embeddings", str(emb), "--index-out", str(out), *extra], capsys)
    assert rc == 2, err
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.parent.exists() or not list(out.parent.iterdir()), "nothing may be half-written"


@pytest.mark.parametrize("case,message", [
    ("nan", "NaN"),
    ("zero", "zero vector"),
    ("duplicate", "more than once"),
])
def test_data_faults_are_data_errors_and_write_nothing(tmp_path: Path, vectors: np.ndarray, case: str,
                                                       message: str) -> None:
    emb = tmp_path / "vectors" / "embeddings.parquet"
    x = vectors[:300].copy()
    ids = None
    if case == "nan":
        x[17, 3] = np.nan
    elif case == "zero":
        x[5] = 0
    else:
        ids = np.r_[np.arange(299), 3].astype(np.int64)
    _write_table(emb, x, ids)
    out = tmp_path / "indexes" / "nuscenes_vitl14.faiss"
    with pytest.raises(DataError, match=message) as info:
        build_index_file(str(emb), str(out), IndexConfig("flat"), progress=False)
    assert len(str(info.value).splitlines()) == 1
    assert not out.parent.exists() or not list(out.parent.iterdir()), "nothing may be half-written"


def test_load_vectors_checks_the_expected_dimension(tmp_path: Path, vectors: np.ndarray) -> None:
    emb = tmp_path / "vectors" / "embeddings.parquet"
    _write_table(emb, vectors[:50])
    with pytest.raises(UsageError, match="dimension 32, but the run's model outputs 768-d vectors"):
        load_vectors(str(emb), expected_dim=768)
    x, ids = load_vectors(str(emb), expected_dim=D)
    assert x.shape == (50, D) and ids.tolist() == list(range(50))
    assert load_vectors(str(emb))[0].shape == (50, D)  # no expectation: any dimension


def test_seed_compatible_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], vectors: np.ndarray) -> None:
    emb = tmp_path / "vectors" / "embeddings.parquet"
    _write_table(emb, vectors[:500])
    out = tmp_path / "indexes" / "nuscenes_vitl14.faiss"
    rc = main(["index", "--embeddings", str(emb), "--index-out", str(out), "--type", "flat", "--no-progress"])
    assert rc == 0
    assert out.exists() and (tmp_path / "indexes" / "nuscenes_vitl14.json").exists()
    assert "IDMap,Flat" in capsys.readouterr().out
    # search finds the embeddings through the index's .json (no run folder, no manifest: ids only)
    rc = main(["search", "--index", str(out), "--id", "42", "-k", "3", "--json", "--log-level", "ERROR"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert rc == 0 and hits[0]["id"] == 42 and hits[0]["path"] == "42.jpg"
    rc = main(["search", "--index", str(out), "--text", "rain", "--log-level", "ERROR"])
    assert rc == 2 and "no manifest" in capsys.readouterr().err
