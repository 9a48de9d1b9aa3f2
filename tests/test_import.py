"""``job import``: a parquet and clip-retrieval's output folder become run folders that ``job index``, ``job curate``
(which builds the missing index itself), ``job search`` and ``job serve`` read; bad input is one line, exit 2, and
nothing written."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TEST_MODEL, exit_code
from curate_data import clustered, plant

from job.cli import main
from job.runfolder import path_id

QUIET = ["--no-progress", "--log-level", "WARNING"]



def _vectors(n: int = 240, d: int = 64, seed: int = 3) -> np.ndarray:
    base = clustered(n - 20, d=d, seed=seed)
    return np.concatenate([base, plant(base, np.arange(20), 0.01, seed=seed)])  # 20 near copies


def _parquet(path: Path, x: np.ndarray, paths: list[str], **extra: list) -> Path:
    cols = {"path": paths, "embedding": pa.array(list(x.astype(np.float32)), pa.list_(pa.float32())), **extra}
    pq.write_table(pa.table(cols), path)
    return path


def _clip_retrieval(folder: Path, x: np.ndarray, paths: list[str], parts: int = 2) -> Path:
    """clip-retrieval's layout (writer.py's OutputSink): img_emb/img_emb_N.npy (float16) + metadata/metadata_N.parquet."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    (folder / "text_emb").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(x)), parts)):
        buf = io.BytesIO()
        np.save(buf, x[rows].astype(np.float16))
        (folder / "img_emb" / f"img_emb_{i}.npy").write_bytes(buf.getvalue())
        pq.write_table(pa.table({"image_path": [paths[r] for r in rows], "caption": [f"frame {r}" for r in rows],
                                 "url": [None] * len(rows)}), folder / "metadata" / f"metadata_{i}.parquet")
    return folder


def test_a_parquet_becomes_a_run_that_indexes_curates_searches_and_serves(tmp_path: Path, capsys) -> None:
    from serve_helpers import get, running

    from job.serve import SearchService

    x = _vectors() * np.linspace(0.5, 3.0, 240)[:, None].astype(np.float32)  # not unit length
    paths = [f"/data/pictures/{'day' if i % 2 else 'night'}/img_{i:04d}.jpg" for i in range(240)]
    paths.append(paths[5])  # a path given twice: its first vector is kept
    x = np.concatenate([x, x[:1]])
    src = _parquet(tmp_path / "vecs.parquet", x, paths, location=["boston" if i < 120 else "singapore" for i in
                                                                   range(241)], id=list(range(241)))
    run = tmp_path / "run"
    assert main(["import", "--from", str(src), "--out", str(run), *QUIET]) == 0
    out = capsys.readouterr().out
    assert "240 vectors (64-d)" in out and "241 normalised" in out and "1 repeated paths skipped" in out
    m = json.loads((run / "manifest.json").read_text())
    assert m["counts"]["embedded"] == 240 and m["counts"]["duplicate_paths_skipped"] == 1
    assert m["source"]["imported"]["format"] == "parquet" and m["config"]["source"]["sources"] == ["/data/pictures"]
    assert m["model"]["embed_dim"] == 64 and m["model"]["name"] == "" and m["outputs"]["embeddings"] == "embeddings.parquet"
    t = pq.read_table(run / "embeddings.parquet")
    assert {"id", "path", "embedding", "location", "source_id"} <= set(t.column_names)  # the input's id kept aside
    rel = t.column("path").to_pylist()
    assert rel[0] == "night/img_0000.jpg" and t.column("id").to_pylist() == [path_id(p) for p in rel]
    v = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # curate builds the index the run lacks, finds the planted copies, and selects
    assert main(["curate", "--run", str(run), "--select", "12", "--balance", "location", *QUIET]) == 0
    assert (run / "index" / "index.json").exists()
    m = json.loads((run / "manifest.json").read_text())
    assert m["index"]["n"] == 240 and m["curation"]["duplicates"]["near"] >= 19 and m["curation"]["selection"]["n"] == 12
    built = (run / "index" / "index.faiss").stat().st_mtime_ns
    assert main(["curate", "--run", str(run), "--select", "12", "--balance", "location", *QUIET]) == 0
    assert (run / "index" / "index.faiss").stat().st_mtime_ns == built  # a run that has its index keeps it
    capsys.readouterr()
    first = path_id("night/img_0000.jpg")
    assert main(["search", "--run", str(run), "--id", str(first), "-k", "3", "--json", "--log-level", "WARNING"]) == 0
    hits = json.loads(capsys.readouterr().out)
    hits = hits["hits"] if isinstance(hits, dict) else hits
    assert str(hits[0]["id"]) == str(first) and len(hits) == 3
    assert exit_code(["search", "--run", str(run), "--text", "a car", *QUIET]) == 2
    assert "imported (job import) without --model" in capsys.readouterr().err
    with running(SearchService(str(run))) as url:
        status, _, body = get(f"{url}/api/info")
        assert status == 200 and json.loads(body)["images"] == 240
        status, _, body = get(f"{url}/api/search?id={first}&k=4")
        assert status == 200 and json.loads(body)["hits"][0]["id"] == str(first)
        status, _, body = get(f"{url}/api/search?text=car")
        assert status == 400 and b"without --model" in body
        assert get(f"{url}/api/duplicates?id={first}")[0] == 200
        status, _, body = get(f"{url}/api/selection")  # the subset with its coverage per stratum
        sel = json.loads(body)
        assert status == 200 and sel["n"] == 12 and {s["stratum"] for s in sel["strata"]} == {
            "location=boston", "location=singapore"} and sum(s["picks"] for s in sel["strata"]) == 12


def test_clip_retrieval_output_with_nuscenes_metadata_and_its_model(nuscenes_dataroot, tmp_path: Path,
                                                                    capsys) -> None:
    info = nuscenes_dataroot
    images = info.images
    x = clustered(len(images), d=384, seed=5)
    paths = [str(info.root / p) for p in images]  # clip-retrieval's files mode stores the files' paths
    src = _clip_retrieval(tmp_path / "clip_out", x, paths, parts=3)
    run = tmp_path / "run"
    assert main(["import", "--from", str(src), "--out", str(run), "--nuscenes-meta", str(info.root), *TEST_MODEL,
                 *QUIET]) == 0
    m = json.loads((run / "manifest.json").read_text())
    assert m["source"]["imported"]["format"] == "clip-retrieval" and m["counts"]["embedded"] == len(images)
    assert m["config"]["source"]["sources"] == [str(info.root)] and m["model"]["name"] == "ViT-S-32"
    assert len(m["model"]["weights_sha256"]) == 64 and m["model"]["pool"] == "cls"
    t = pq.read_table(run / "embeddings.parquet").to_pylist()
    assert sorted(r["path"] for r in t) == sorted(images)  # dataroot-relative: the ids an embedded run gives them
    for r in t[:20]:
        exp = info.expected[r["path"]]
        assert (r["sample_data_token"], r["channel"], r["timestamp"]) == (exp["sample_data_token"], exp["channel"],
                                                                           exp["timestamp"])
        assert r["caption"].startswith("frame ")
    assert main(["curate", "--run", str(run), "--select", "8", "--balance", "channel", "--min-gap-s", "1",
                 *QUIET]) == 0
    c = json.loads((run / "manifest.json").read_text())["curation"]
    assert c["still_metres"] is not None and c["selection"]["min_gap_s"] == 1.0  # nuScenes columns: still, gaps
    capsys.readouterr()
    assert main(["search", "--run", str(run), "--text", "a truck at night", "-k", "2", "--json",
                 "--log-level", "WARNING"]) == 0  # the recorded model loads, its weights hash checked
    assert "hits" in capsys.readouterr().out


def test_import_from_s3(s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    src = _parquet(tmp_path / "v.parquet", _vectors(60, 32), [f"s3://{s3_bucket}/pics/{i}.jpg" for i in range(60)])
    boto3.client("s3").upload_file(str(src), s3_bucket, "in/vecs.parquet")
    run = f"s3://{s3_bucket}/runs/imported"
    assert main(["import", "--from", f"s3://{s3_bucket}/in/vecs.parquet", "--out", run, *QUIET]) == 0
    assert main(["index", "--run", run, *QUIET]) == 0
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="runs/")["Contents"]}
    assert "runs/imported/manifest.json" in keys and "runs/imported/index/index.faiss" in keys


def _bad(tmp: Path, case: str) -> list[str]:
    x = _vectors(40, 16)
    paths = [f"/p/{i}.jpg" for i in range(40)]
    if case == "ragged":
        rows = [list(v) for v in x]
        rows[7] = rows[7][:15]
        pq.write_table(pa.table({"path": paths, "embedding": pa.array(rows, pa.list_(pa.float32()))}), tmp / "v.parquet")
    elif case == "nan":
        x[11, 3] = np.nan
        _parquet(tmp / "v.parquet", x, paths)
    elif case == "zero":
        x[4] = 0
        _parquet(tmp / "v.parquet", x, paths)
    elif case == "no-column":
        pq.write_table(pa.table({"file": paths, "embedding": pa.array(list(x), pa.list_(pa.float32()))}),
                       tmp / "v.parquet")
    elif case == "not-vectors":
        pq.write_table(pa.table({"path": paths, "embedding": [str(i) for i in range(40)]}), tmp / "v.parquet")
    elif case == "no-path":
        _parquet(tmp / "v.parquet", x, [None if i == 9 else p for i, p in enumerate(paths)])
    elif case == "model-dim":
        _parquet(tmp / "v.parquet", x, paths)
        return ["--from", str(tmp / "v.parquet"), *TEST_MODEL]
    elif case in ("clip-lonely", "clip-rows"):
        folder = _clip_retrieval(tmp / "clip", x, paths)
        if case == "clip-lonely":
            (folder / "metadata" / "metadata_1.parquet").unlink()
        else:
            pq.write_table(pa.table({"image_path": paths[:3]}), folder / "metadata" / "metadata_0.parquet")
        return ["--from", str(folder)]
    elif case == "missing":
        return ["--from", str(tmp / "nothing.parquet")]
    elif case == "pretrained-alone":
        _parquet(tmp / "v.parquet", x, paths)
        return ["--from", str(tmp / "v.parquet"), "--pretrained", "openai"]
    elif case == "bad-format":
        return ["--from", str(tmp), "--format", "npz"]
    return ["--from", str(tmp / "v.parquet")]


@pytest.mark.parametrize(("case", "message"), [
    ("ragged", "row 7 has 15 values in 'embedding', row 0 has 16: every vector must have the same dimension"),
    ("nan", "row 11 (/p/11.jpg) has NaN or inf in its vector"),
    ("zero", "row 4 (/p/4.jpg) is a zero vector"),
    ("no-column", "has no 'path' column (its columns: file, embedding); name them with --path-column"),
    ("not-vectors", "column 'embedding' is string, not a list of numbers"),
    ("no-path", "row 9 has no path"),
    ("model-dim", "the vectors are 16-d, but ViT-S-32 makes 384-d vectors"),
    ("clip-lonely", "partition 1 has a img_emb file but no metadata file"),
    ("clip-rows", "has 3 rows but"),
    ("missing", "nothing.parquet does not exist"),
    ("pretrained-alone", "--pretrained names the weights of --model: give --model NAME too"),
    ("bad-format", "unknown --format 'npz'; valid choices: auto, parquet, clip-retrieval"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys, case: str, message: str) -> None:
    argv = _bad(tmp_path, case)
    out = tmp_path / "run"
    assert exit_code(["import", *argv, "--out", str(out), *QUIET]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_an_import_does_not_overwrite_another_run_and_resumes_its_own(tmp_path: Path, curated_run: Path,
                                                                      capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(curated_run, run)
    src = _parquet(tmp_path / "v.parquet", _vectors(40, 8), [f"/p/{i}.jpg" for i in range(40)])
    before = (run / "manifest.json").read_text()
    assert exit_code(["import", "--from", str(src), "--out", str(run), *QUIET]) == 2
    assert "holds a run made with other options" in capsys.readouterr().err
    assert (run / "manifest.json").read_text() == before
    fresh = tmp_path / "fresh"
    assert main(["import", "--from", str(src), "--out", str(fresh), "--shard-size", "8", *QUIET]) == 0
    parts = sorted((fresh / "embeddings.parquet").iterdir())
    assert len(parts) == 5
    parts[-1].unlink()  # as if killed before the last part: the same command writes only what is missing
    (fresh / "manifest.json").unlink()
    assert main(["import", "--from", str(src), "--out", str(fresh), "--shard-size", "8", *QUIET]) == 0
    m = json.loads((fresh / "manifest.json").read_text())
    assert m["counts"]["embedded"] == 40 and m["counts"]["embedded_this_attempt"] == 8
