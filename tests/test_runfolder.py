"""The run-folder contract: layouts, the typed manifest, outputs side by side, and key names owned by one module."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEST_MODEL
from job.cli import main
from job.errors import DataError, UsageError
from job.runfolder import SCHEMA_VERSION, Counts, Manifest, ModelInfo, Outputs, RunLayout, manifest_from_json, open_run, read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]


def _manifest(**kw: object) -> Manifest:
    fields: dict = dict(
        status="succeeded", started="s", finished="f", host="h", run_dir="r",
        outputs=Outputs(embeddings="embeddings.parquet", failures="failures.parquet", state="_run.json"),
        config={"model": {"model": "ViT-B-32", "pretrained": "none", "pool": "cls", "bogus": 1},
                "decode": {"resize_mode": "crop"}, "source": {"sources": ["a", "b"]}},
        model=ModelInfo(name="ViT-B-32", pretrained="none", weights_sha256="ab", pool="cls", image_size=224,
                        embed_dim=512),
        counts=Counts(seen=3, embedded=2, failed=1),
    )
    fields.update(kw)
    return Manifest(**fields)


def test_layout_default_and_named_outputs() -> None:
    d = RunLayout.for_output("s3://b/runs/x/")
    assert (d.run_dir, d.embeddings, d.manifest, d.failures, d.state, d.index) == (
        "s3://b/runs/x", "s3://b/runs/x/embeddings.parquet", "s3://b/runs/x/manifest.json",
        "s3://b/runs/x/failures.parquet", "s3://b/runs/x/_run.json", "s3://b/runs/x/index/index.faiss")
    a = RunLayout.for_output("vectors/a.parquet")
    assert (a.run_dir, a.embeddings, a.manifest, a.failures, a.state, a.thumbnails, a.npy, a.umap) == (
        "vectors", "vectors/a.parquet", "vectors/a.manifest.json", "vectors/a.failures.parquet",
        "vectors/a._run.json", "vectors/a.thumbnails.parquet", "vectors/a.npy", "vectors/a.umap2d.parquet")
    # the brief's --out vectors/embeddings.parquet is the default output of the folder
    assert RunLayout.for_output("vectors/embeddings.parquet") == RunLayout("vectors")
    assert RunLayout.locate("vectors/a.manifest.json") == a
    assert RunLayout.locate("vectors/manifest.json") == RunLayout("vectors")
    assert not set(a.owned()) & set(RunLayout("vectors").owned())


def test_manifest_round_trip_and_typed_access(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path))
    m = _manifest()
    write_manifest(layout, m)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["failure_reasons_this_attempt"] == {}
    back = read_manifest(layout)
    assert back == m
    assert back.model_config().pool == "cls" and back.resize_mode == "crop" and back.sources == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"schema_version": 1, "status": "succeeded"}', "schema version 1"),
        (json.dumps({"schema_version": SCHEMA_VERSION, "status": "succeeded"}), "is not a valid manifest"),
    ],
)
def test_bad_manifest_is_a_data_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        manifest_from_json(text.encode(), str(tmp_path / "manifest.json"))


def test_open_run_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="holds no embeddings.parquet"):
        open_run(str(tmp_path))
    with pytest.raises(UsageError, match="has no manifest.json"):
        read_manifest(RunLayout(str(tmp_path)))


def _digest(folder: Path, stem: str) -> dict[str, str]:
    """sha256 of every file that belongs to output ``stem`` of ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and (rel.startswith(f"{stem}.") or rel.startswith(f"{stem}/")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_two_outputs_in_one_folder_coexist(image_dir: Path, tmp_path: Path) -> None:
    vectors = tmp_path / "vectors"
    base = ["embed", *TEST_MODEL, "--image-dir", str(image_dir), "--no-progress", "--log-level", "WARNING"]
    assert main([*base, "--out", str(vectors / "a.parquet")]) == 0
    assert main([*base, "--out", str(vectors / "b.parquet"), "--pool", "cls"]) == 0
    names = {p.name for p in vectors.iterdir()}
    assert {"a.parquet", "a.failures.parquet", "a.manifest.json", "a._run.json",
            "b.parquet", "b.failures.parquet", "b.manifest.json", "b._run.json"} <= names
    assert "manifest.json" not in names
    assert json.loads((vectors / "a.manifest.json").read_text())["model"]["pool"] == "mean"
    assert json.loads((vectors / "b.manifest.json").read_text())["model"]["pool"] == "cls"
    before = _digest(vectors, "a")
    assert len(before) >= 4
    assert main([*base, "--out", str(vectors / "b.parquet"), "--pool", "mean", "--overwrite"]) == 0
    assert _digest(vectors, "a") == before
    assert json.loads((vectors / "b.manifest.json").read_text())["model"]["pool"] == "mean"


_RENAMED = {"embed_dim": "vector_size", "embeddings": "vectors_at", "weights_sha256": "weights_digest",
            "status": "state_of_run", "outputs": "files"}

_READERS = r"""
import json, sys
from job import viz
from job.cli import main
run = sys.argv[1]
for argv in (["index", "--run", run, "--type", "flat"], ["project", "--run", run, "--n-epochs", "20"],
             ["search", "--run", run, "--text", "a road at night", "-k", "3", "--json"],
             ["publish", "--run", run, "--to", run + "-published"]):
    rc = main(argv + ["--no-progress", "--log-level", "WARNING"])
    assert rc == 0, (argv, rc)
r = viz.load_run(run)
assert r.n == 12 and r.manifest.model.embed_dim == 384, r.summary()
assert len(viz.text_search(r, viz.load_text_model(r, "cpu"), ["night"], k=2)["night"]) == 2
print(json.dumps(sorted(json.load(open(run + "/manifest.json")))))
"""


@pytest.mark.slow
def test_manifest_keys_are_owned_by_one_module(image_dir: Path, tmp_path: Path) -> None:
    """Rename manifest keys in job/runfolder/documents.py only: embed, index --run, project --run, search, notebook helpers
    and publish all keep working, because nothing else spells a key."""
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "job", pkg / "job", ignore=shutil.ignore_patterns("__pycache__"))
    docs = pkg / "job" / "runfolder" / "documents.py"
    text = docs.read_text()
    marker = "JSON_KEYS: dict[str, str] = {"
    assert text.count(marker) == 1
    docs.write_text(text.replace(marker, f"JSON_KEYS: dict[str, str] = {{**{_RENAMED!r}, "))
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "job", "embed", *TEST_MODEL, "--image-dir", str(image_dir), "--out", str(run),
           "--no-progress", "--log-level", "WARNING"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-c", _READERS, str(run)], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    keys = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"state_of_run", "files"} <= set(keys) and not {"status", "outputs"} & set(keys)
    raw = json.loads((run / "manifest.json").read_text())
    assert raw["model"]["vector_size"] == 384 and "weights_digest" in raw["model"]
    assert raw["files"]["vectors_at"] == "embeddings.parquet" and raw["projection"] and raw["index"]
    assert (tmp_path / "run-published" / "manifest.json").exists()
