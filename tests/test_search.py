"""Search end to end: a real ``job run`` with the small model, then text / image / id queries (CLI and API)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_MODEL, jpeg_bytes
from job import fsutil
from job.cli import main
from job.errors import DataError, UsageError
from job.search import Searcher, format_hits, hits_table

N_IMAGES = 10


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i in range(N_IMAGES):
        sub = root / ("CAM_FRONT" if i % 2 == 0 else "CAM_BACK")
        sub.mkdir(exist_ok=True)
        (sub / f"frame_{i:03d}.jpg").write_bytes(jpeg_bytes(320, 180, seed=100 + i))
    return root


@pytest.fixture(scope="module")
def run_dir(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["run", "--source", str(images), "--out", str(out), *TEST_MODEL, "--no-project", "--no-progress",
               "--workers", "0", "--log-level", "WARNING"])
    assert rc == 0
    assert (out / "index" / "index.faiss").exists() and (out / "manifest.json").exists()
    return out


def _ids(run_dir: Path) -> list[int]:
    import pyarrow.parquet as pq

    return pq.read_table(run_dir / "embeddings.parquet", columns=["id"]).column("id").to_pylist()


def test_manifest_carries_the_index(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["index"]["n"] == N_IMAGES and manifest["index"]["type"] == "flat"
    assert manifest["index"]["recall@10"] == 1.0 and manifest["index"]["column"] == "embedding"
    text = manifest["text_index"]  # the text-query index: chosen, tuned and measured like the image index
    assert text["column"] == "embedding_trained" and text["n"] == N_IMAGES and text["recall@10"] == 1.0
    assert manifest["outputs"]["text_index"] == "index/text.faiss" and (run_dir / "index" / "text.json").exists()


def _exact_text_ranking(run_dir: Path, text: str, column: str) -> list[int]:
    import pyarrow.parquet as pq

    from job.model.load import encode_text

    s = Searcher.open(str(run_dir), device="cpu")
    q = encode_text(s.model(), [text])[0]
    t = pq.read_table(run_dir / "embeddings.parquet", columns=["id", column])
    x = np.stack(t.column(column).to_pylist())
    return [t.column("id")[int(i)].as_py() for i in np.argsort(-(x @ q))]


def test_text_queries_search_the_trained_outputs(run_dir: Path, tmp_path: Path) -> None:
    """Text search ranks by the trained outputs (embedding_trained), image and id search by the mean-pooled ones."""
    s = Searcher.open(str(run_dir), device="cpu")
    assert s.text_space().source.endswith("text.faiss") and s.text_space().column == "embedding_trained"
    text = "night, rain, intersection"
    want = _exact_text_ranking(run_dir, text, "embedding_trained")
    assert [h["id"] for h in s.by_text(text, N_IMAGES)] == want
    assert want != _exact_text_ranking(run_dir, text, "embedding")  # the two spaces rank differently
    # without text.faiss (e.g. an index built elsewhere): exact search over embedding_trained, same answer
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    (other / "index" / "text.faiss").unlink()
    s2 = Searcher.open(str(other), device="cpu")
    assert [h["id"] for h in s2.by_text(text, N_IMAGES)] == want and s2.text_space().column == "embedding_trained"
    # `job index --run` rebuilds both indexes and records both in the manifest
    assert main(["index", "--run", str(other), "--no-progress", "--log-level", "WARNING"]) == 0
    assert (other / "index" / "text.faiss").exists()
    assert json.loads((other / "manifest.json").read_text())["text_index"]["column"] == "embedding_trained"


def test_notebook_text_galleries_use_the_trained_outputs(run_dir: Path) -> None:
    from job import viz

    run = viz.load_run(str(run_dir))
    assert run.text_vectors is not None and run.text_vectors.shape == run.vectors.shape
    assert "embedding_trained" not in run.meta.columns
    text = "night, rain, intersection"
    want = _exact_text_ranking(run_dir, text, "embedding_trained")
    lm = viz.load_text_model(run, "cpu")
    for use_index in (False, True):
        table = viz.text_search(run, lm, [text], k=N_IMAGES, use_index=use_index)[text]
        assert table.id.tolist() == want, use_index
        assert table.attrs["search"] == ("faiss index" if use_index else "exact cosine")


def _as_old_run(run_dir: Path, old: Path) -> None:
    """``run_dir`` as a run made before the trained output's column was renamed: ``embedding_cls`` in every part, the
    text index's description and the manifest naming it, the config's ``--text-vectors cls``, table layout 3."""
    import pyarrow.parquet as pq

    shutil.copytree(run_dir, old)
    for part in (old / "embeddings.parquet").glob("*.parquet"):
        t = pq.read_table(part)
        pq.write_table(t.rename_columns(["embedding_cls" if c == "embedding_trained" else c for c in t.column_names]),
                       part)
    for doc in (old / "index" / "text.json", old / "manifest.json", old / "_run.json"):
        text = doc.read_text().replace("embedding_trained", "embedding_cls")
        text = text.replace('"text_vectors": "trained"', '"text_vectors": "cls"').replace('"table": 4', '"table": 3')
        doc.write_text(text)


def test_an_old_run_with_embedding_cls_still_searches_by_text(run_dir: Path, tmp_path: Path, capsys) -> None:
    """Runs made before SigLIP named the trained output ``embedding_cls``: search (index, exact, CLI), the notebook
    helpers and ``job index --run`` read it the same way."""
    text = "night, rain, intersection"
    want = _exact_text_ranking(run_dir, text, "embedding_trained")
    old = tmp_path / "old"
    _as_old_run(run_dir, old)
    assert '"text_vectors": "cls"' in (old / "manifest.json").read_text()
    s = Searcher.open(str(old), device="cpu")
    assert [h["id"] for h in s.by_text(text, N_IMAGES)] == want and s.text_space().column == "embedding_cls"
    assert main(["search", "--run", str(old), "--text", text, "-k", "3", "--json", "--device", "cpu",
                 "--log-level", "WARNING"]) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]] == want[:3]
    (old / "index" / "text.faiss").unlink()  # exact search over the old column
    s2 = Searcher.open(str(old), device="cpu")
    assert [h["id"] for h in s2.by_text(text, N_IMAGES)] == want and s2.text_space().column == "embedding_cls"
    from job import viz

    run = viz.load_run(str(old))
    assert run.text_vectors is not None and "embedding_cls" not in run.meta.columns
    assert main(["index", "--run", str(old), "--no-progress", "--log-level", "WARNING"]) == 0
    assert json.loads((old / "manifest.json").read_text())["text_index"]["column"] == "embedding_cls"
    assert [h["id"] for h in Searcher.open(str(old), device="cpu").by_text(text, N_IMAGES)] == want


def test_a_run_without_text_vectors_falls_back_to_its_image_vectors(images: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "plain"
    assert main(["run", "--source", str(images), "--out", str(out), *TEST_MODEL, "--text-vectors", "none",
                 "--no-project", "--no-progress", "--workers", "0", "--log-level", "WARNING"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_index"] is None and not (out / "index" / "text.faiss").exists()
    s = Searcher.open(str(out), device="cpu")
    logging.getLogger().addHandler(caplog.handler)  # main() reset the root logger's handlers
    try:
        with caplog.at_level("WARNING", logger="job.search"):
            hits = s.by_text("a road", 3)
    finally:
        logging.getLogger().removeHandler(caplog.handler)
    assert len(hits) == 3 and s.text_space() is s.image and "no trained-output column" in caplog.text


def test_image_search_finds_the_same_image_first(run_dir: Path, images: Path) -> None:
    s = Searcher.open(str(run_dir), device="cpu")
    hits = s.by_image(str(images / "CAM_BACK" / "frame_003.jpg"), k=3)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"].endswith("CAM_BACK/frame_003.jpg")
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)  # decoded and preprocessed exactly as the run did
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    table = hits_table(hits)
    assert table.num_rows == 3 and {"score", "path", "id"} <= set(table.column_names)


def test_text_search_cli_table_and_json(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["search", "--run", str(run_dir), "--text", "night, rain, intersection", "-k", "4", "--json",
               "--device", "cpu", "--log-level", "WARNING"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["query"] == {"text": "night, rain, intersection"} and len(doc["hits"]) == 4
    assert all({"rank", "score", "path", "id", "time"} <= set(h) for h in doc["hits"])
    scores = [h["score"] for h in doc["hits"]]
    assert scores == sorted(scores, reverse=True)
    # the same query through the API gives the same ranking
    api = Searcher.open(str(run_dir), device="cpu").by_text("night, rain, intersection", 4)
    assert [h["id"] for h in api] == [h["id"] for h in doc["hits"]]
    rc = main(["search", "--run", str(run_dir), "--text", "night, rain", "-k", "2", "--log-level", "WARNING"])
    out = capsys.readouterr().out
    assert rc == 0 and "score" in out.splitlines()[0] and len(out.strip().splitlines()) == 3


def test_search_by_id(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = _ids(run_dir)[4]
    rc = main(["search", "--run", str(run_dir), "--id", str(target), "-k", str(N_IMAGES), "--json",
               "--log-level", "WARNING"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert rc == 0 and hits[0]["id"] == target and len(hits) == N_IMAGES
    assert sorted(h["id"] for h in hits) == sorted(_ids(run_dir))


def test_hits_show_nuscenes_metadata() -> None:
    hit = {"rank": 1, "score": 0.5, "id": 7, "path": "samples/CAM_FRONT/x.jpg", "scene_name": "scene-0061",
           "channel": "CAM_FRONT", "location": "singapore-onenorth", "time": "2018-07-24 03:28:47.000"}
    text = format_hits([hit])
    for value in ("scene-0061", "CAM_FRONT", "singapore-onenorth", "2018-07-24 03:28:47", "x.jpg", "0.5000"):
        assert value in text


@pytest.mark.parametrize("argv,message", [
    (["--id", "1", "-k", "11"], "larger than the index"),
    (["--id", "12345"], "is not in"),
    (["--text", "  "], "empty"),
    (["--image", "/nonexistent.jpg"], "does not exist"),
])
def test_bad_queries_exit_2(run_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    rc = main(["search", "--run", str(run_dir), *argv, "--log-level", "ERROR"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_not_an_image_exits_2(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    rc = main(["search", "--run", str(run_dir), "--image", str(bad), "--log-level", "ERROR"])
    assert rc == 2 and "x.jpg" in capsys.readouterr().err


def test_index_not_matching_embeddings_is_refused(run_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    parts = sorted((other / "embeddings.parquet").glob("part-*.parquet"))
    import pyarrow.parquet as pq

    t = pq.read_table(parts[0])
    pq.write_table(t.slice(0, t.num_rows - 1), parts[0])  # one vector fewer than the index holds
    rc = main(["search", "--run", str(other), "--id", str(t.column("id")[0].as_py()), "--log-level", "ERROR"])
    err = capsys.readouterr().err
    assert rc == 1 and "holds 10 vectors" in err and "rebuild" in err  # a data fault, not a usage error

    shutil.rmtree(other / "index")
    rc = main(["search", "--run", str(other), "--id", "1", "--log-level", "ERROR"])
    assert rc == 2 and "python -m job index" in capsys.readouterr().err


def test_other_weights_are_refused(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["weights_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    s = Searcher.open(str(other), device="cpu")
    with pytest.raises(DataError, match="weights are not available"):
        s.by_text("a road", 3)
    # the notebook helpers load the run's model through the same function, with the same check
    from job import viz

    with pytest.raises(DataError, match="weights are not available"):
        viz.load_text_model(viz.load_run(str(other)), "cpu")
    assert s.by_id(_ids(run_dir)[0], 2)[0]["id"] == _ids(run_dir)[0]  # id queries need no model


def test_by_vector_checks_dimension(run_dir: Path) -> None:
    s = Searcher.open(str(run_dir))
    with pytest.raises(UsageError, match="dimension 3"):
        s.by_vector(np.ones(3, np.float32), 2)
    with pytest.raises(UsageError, match="NaN"):
        s.by_vector(np.full(s.d, np.nan, np.float32), 2)


@pytest.mark.s3
def test_search_an_s3_run_folder(run_dir: Path, s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    fs, _ = fsutil.url_to_fs(f"s3://{s3_bucket}/")
    fs.put(str(run_dir), f"{s3_bucket}/runs/r1", recursive=True)
    target = _ids(run_dir)[2]
    rc = main(["search", "--run", f"s3://{s3_bucket}/runs/r1", "--id", str(target), "-k", "3", "--json",
               "--log-level", "WARNING"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert rc == 0 and hits[0]["id"] == target
    s = Searcher.open(f"s3://{s3_bucket}/runs/r1", device="cpu")
    assert s.by_text("a street", 2)[0]["path"]
