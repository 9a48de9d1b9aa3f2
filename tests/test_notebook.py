"""``notebooks/umap_visualize.ipynb`` executed headless (nbclient) against a real small run of the job.

The run is made once per module by ``python -m job run`` from a generated nuScenes fixture (72 keyframes,
ViT-B-32 with seeded random weights at 64 px so it is quick), curated in the same command (``--curate --select 12
--balance location,channel``: the fixture's two repeated scenes give 12 duplicate groups of 3). The notebook is
executed from the local run folder and from a copy on ``s3://`` (moto in server mode, without umap2d.parquet so the
notebook computes the map itself, and without its curation, so the curation cells are skipped with their note).
The curation helpers of ``job.viz`` are checked against the run's tables without a notebook. Every figure is also
saved as PNG under ``test-artifacts/notebook/<mode>/`` (git-ignored) together with the executed notebook, so a
person can look at them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from job.runfolder import path_id

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "umap_visualize.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "notebook"
FIGURES = ("umap_by_channel", "umap_by_location", "umap_by_scene", "umap_by_weather", "gallery_neighbours",
           "text_night__rain", "text_construction_zone", "text_bus")
CURATION_FIGURES = {"curation_threshold": "curation_threshold", "curation_groups": "curation_groups",
                    "curation_rarest": "curation_rarest", "curation_selection": "curation_selection_map",
                    "curation_coverage": "curation_coverage"}  # results key -> PNG name

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder made by the job itself (embed + thumbnails + UMAP projection)."""
    from nuscenes_fixture import make_nuscenes_fixture

    base = tmp_path_factory.mktemp("nbrun")
    info = make_nuscenes_fixture(base / "nuscenes", n_logs=2, scenes_per_log=2, samples_per_scene=3,
                                 sweeps_per_sample=0)
    out = base / "run"
    cmd = [sys.executable, "-m", "job", "run", "--source", str(info.root), "--out", str(out),
           "--model", "ViT-B-32", "--pretrained", "none", "--image-size", "64", "--no-index", "--thumbnails",
           "--curate", "--select", "12", "--balance", "location,channel", "--min-positives", "3",
           "--workers", "0", "--no-progress", "--log-level", "WARNING"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["counts"]["embedded"] == len(info.keyframes)
    assert (out / "umap2d.parquet").exists() and (out / "thumbnails.parquet").exists()
    assert manifest["curation"]["selection"]["n"] == 12
    assert manifest["eval"]["scores"]  # the nuScenes fixture carries annotations: job run scored itself
    return out


def execute(run_uri: str, mode: str, **params: str) -> tuple[nbformat.NotebookNode, dict, Path]:
    """Run the notebook with RUN_URI etc. in the kernel's environment; returns (notebook, results, figures dir)."""
    figures = ARTIFACTS / mode
    shutil.rmtree(figures, ignore_errors=True)
    figures.mkdir(parents=True)
    env = dict(os.environ, RUN_URI=run_uri, FIGURES_DIR=str(figures), RESULTS_JSON=str(figures / "results.json"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               **params)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute(env=env)
    finally:
        nbformat.write(nb, figures / "executed.ipynb")
    results = json.loads((figures / "results.json").read_text()) if (figures / "results.json").exists() else {}
    return nb, results, figures


def _image_outputs(nb: nbformat.NotebookNode) -> list[bytes]:
    import base64

    return [base64.b64decode(o["data"]["image/png"]) for cell in nb.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def _check_figures(nb: nbformat.NotebookNode, results: dict, figures: Path) -> None:
    images = _image_outputs(nb)
    assert len(images) >= len(FIGURES)
    assert all(img.startswith(b"\x89PNG") and len(img) > 5_000 for img in images)
    for name in FIGURES:
        png = figures / f"{name}.png"
        assert png.exists() and png.stat().st_size > 5_000, name
        assert results["figures"][name.replace("umap_by_", "").replace("gallery_neighbours", "gallery")] == str(png)
    first = nb.cells[1]
    assert "parameters" in first.metadata.get("tags", []) and "run_uri" in first.source


def test_notebook_from_local_run(job_run: Path) -> None:
    nb, results, figures = execute(str(job_run), "local")
    _check_figures(nb, results, figures)
    assert results["n"] == 72 and results["projection"]["precomputed"] is True
    gallery = results["gallery"]
    assert gallery["hit_ids"][0] == gallery["query_id"]  # the query is its own nearest neighbour
    assert gallery["scores"][0] == pytest.approx(1.0, abs=1e-3) and len(gallery["hit_ids"]) == 9
    assert set(results["text"]) == {"night, rain", "construction zone", "bus"}
    _check_curation(job_run, results, figures)
    _check_eval(job_run, results, figures)


def _check_eval(run: Path, results: dict, figures: Path) -> None:
    """The scores cells showed the run's eval/: its table and its per-category figure."""
    stored = json.loads((run / "eval" / "eval.json").read_text())
    e = results["eval"]
    assert e["scored"] is True and "MAP@100" in e["note"]
    assert [(r["column"], r["MAP@100"], r["chance MAP@100"]) for r in e["scores"]] == \
        [(s["column"], round(s["map_at_100"], 3), round(s["chance_map_at_100"], 3)) for s in stored["scores"]]
    png = figures / "eval_per_category.png"
    assert results["figures"]["eval_per_category"] == str(png)
    assert png.read_bytes() == (run / "eval" / "per_category.png").read_bytes()


def test_eval_helpers_without_a_notebook(job_run: Path, tmp_path: Path) -> None:
    """job.viz's eval helpers against the run's eval/, and a run never scored (the note names the command)."""
    from job import viz

    run = viz.load_run(str(job_run))
    ev, note = viz.load_eval(run)
    assert ev is not None and note.splitlines()[0].startswith(f"{ev.images} images scored")
    table = viz.scores_table(ev)
    assert list(table["column"]) == [s.column for s in ev.scores] and (table["queries"] > 0).all()
    pq_ = viz.per_query(run)
    assert pq_ is not None and len(pq_) == sum(s.queries for s in ev.scores)
    assert viz.figure_png(run) == (job_run / "eval" / "per_category.png").read_bytes()
    copy = tmp_path / "run"
    shutil.copytree(job_run, copy)
    shutil.rmtree(copy / "eval")
    other = viz.load_run(str(copy))
    none, note = viz.load_eval(other)
    assert none is None and f"python -m job eval --run {copy}" in note
    assert viz.per_query(other) is None and viz.figure_png(other) is None


def _table(run: Path, name: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(run / "curation" / name).to_pylist()


def _check_curation(run: Path, results: dict, figures: Path) -> None:
    """The curation cells showed what the run's curation/ holds."""
    for key, name in CURATION_FIGURES.items():
        png = figures / f"{name}.png"
        assert png.exists() and png.stat().st_size > 5_000 and results["figures"][key] == str(png), name
    assert (figures / "curation_threshold.png").read_bytes() == (run / "curation" / "nn_cosines.png").read_bytes()
    c = results["curation"]
    assert c["curated"] is True and "repeat another" in c["note"] and "near threshold: cosine >=" in c["note"]
    dups = _table(run, "duplicates.parquet")
    sizes: dict[int, int] = {}
    for d in dups:
        sizes[d["keep_id"]] = sizes.get(d["keep_id"], 1) + 1
    shown = c["groups"]
    assert len(shown) == 4 and [g["size"] for g in shown] == sorted(sizes.values(), reverse=True)[:4]
    assert all(sizes[g["root"]] == g["size"] == 1 + g["exact"] + g["still"] + g["near"] for g in shown)
    scores = sorted(_table(run, "scores.parquet"), key=lambda r: (-r["uniqueness"], r["id"]))
    assert c["rarest"]["ids"] == [r["id"] for r in scores[:12]]
    assert c["rarest"]["uniqueness"] == pytest.approx([r["uniqueness"] for r in scores[:12]], abs=1e-4)
    picks = _table(run, "selection.parquet")
    assert sum(c["coverage"]["location"].values()) == sum(c["coverage"]["channel"].values()) == len(picks) == 12
    assert set(c["coverage"]["channel"].values()) == {2}  # balanced: 6 cameras, 12 picks


def test_curation_helpers_without_a_notebook(job_run: Path, tmp_path: Path) -> None:
    """job.viz's curation helpers against the run's tables: groups, members, rarest, coverage, the map's picks,
    the threshold figure (redrawn when the run's PNG is gone), and a run that is not curated."""
    from job import viz

    run = viz.load_run(str(job_run))
    cur, note = viz.load_curation(run)
    assert cur is not None and viz.skip_reason(cur, note) is None and viz.skip_reason(cur, note, selection=True) is None
    dups = _table(job_run, "duplicates.parquet")
    groups = viz.duplicate_groups(run, cur)
    assert len(groups) == len({d["keep_id"] for d in dups}) and int(groups["size"].sum()) == len(dups) + len(groups)
    members = viz.group_members(run, cur, int(groups["root"].iat[0]))
    assert members["kind"].iat[0] == "kept" and len(members) == groups["size"].iat[0]
    assert list(members["timestamp"].iloc[1:]) == sorted(members["timestamp"].iloc[1:])
    assert (members["cosine"].iloc[1:] >= run.manifest.curation.threshold.cosine - 1e-6).all()
    rare = viz.rarest(run, cur, k=5)
    assert list(rare["score"]) == sorted(rare["score"], reverse=True) and rare["score"].iat[0] == pytest.approx(1.0)
    cov = viz.coverage(run, cur, "location")
    assert int(cov["images"].sum()) == run.n and int(cov["unique"].sum()) == run.n - len(dups)
    assert int(cov["picks"].sum()) == 12 and cov["picks_%"].sum() == pytest.approx(100, abs=0.5)
    df, _ = viz.projection(run)
    picks = viz.selected_points(df, cur)
    assert list(picks["rank"]) == list(range(12)) and set(picks["id"]) == {r["id"] for r in _table(job_run, "selection.parquet")}
    for fig in (viz.groups_figure(run, cur, groups=2, per_group=3), viz.selection_map(df, cur),
                viz.coverage_figure({"location": cov})):
        assert viz.save_figure(fig, str(tmp_path), "f") and (tmp_path / "f.png").stat().st_size > 5_000
    copy = tmp_path / "run"
    shutil.copytree(job_run, copy)
    (copy / "curation" / "nn_cosines.png").unlink()
    png = viz.threshold_png(viz.load_run(str(copy)), cur)
    assert png[:4] == b"\x89PNG" and png != (job_run / "curation" / "nn_cosines.png").read_bytes()
    shutil.rmtree(copy / "curation")
    none, note = viz.load_curation(viz.load_run(str(copy)))
    assert none is None and f"python -m job curate --run {copy} --select N" in note
    assert viz.skip_reason(none, note) == f"skipped: {note}"


@pytest.mark.s3
def test_notebook_from_s3_run(job_run: Path, s3_bucket: str) -> None:
    import fsspec

    from job import fsutil

    uri = f"s3://{s3_bucket}/runs/nb-test/"
    fs, root = fsutil.url_to_fs(uri)
    for p in job_run.rglob("*"):
        rel = p.relative_to(job_run).as_posix()
        if p.is_file() and not rel.startswith(("umap2d", "curation", "manifest.json")):
            fs.put_file(str(p), f"{root.rstrip('/')}/{rel}")
    manifest = json.loads((job_run / "manifest.json").read_text())  # a run that was never curated
    manifest.pop("curation")
    manifest["outputs"].pop("curation")
    fs.pipe_file(f"{root.rstrip('/')}/manifest.json", json.dumps(manifest).encode())
    fsspec.get_filesystem_class("s3").clear_instance_cache()
    embeddings = sorted((job_run / "embeddings.parquet").iterdir())[0]
    import pyarrow.parquet as pq

    query_path = pq.read_table(embeddings, columns=["path"]).column("path")[7].as_py()
    nb, results, figures = execute(uri, "s3", QUERY=query_path.rsplit("/", 1)[-1], K="5", UMAP_EPOCHS="50")
    _check_figures(nb, results, figures)
    assert results["projection"]["precomputed"] is False
    assert "umap2d.parquet is missing" in results["projection"]["note"]
    gallery = results["gallery"]
    assert gallery["query_id"] == path_id(query_path) and gallery["hit_ids"][0] == path_id(query_path)
    assert len(gallery["hit_ids"]) == 6
    assert results["curation"]["curated"] is False and f"python -m job curate --run {uri.rstrip('/')}" in \
        results["curation"]["note"]
    assert not set(CURATION_FIGURES) & set(results["figures"])
    assert results["eval"]["scored"] is True and "eval_per_category" in results["figures"]  # eval/ was copied
    skipped = [o.get("text", "") for cell in nb.cells if cell.cell_type == "code" and "skip_reason" in cell.source
               for o in cell.get("outputs", [])]
    assert len(skipped) == 5 and all(t.startswith("skipped: ") and "is not curated" in t for t in skipped)


def test_notebook_refuses_a_failed_run(tmp_path: Path, job_run: Path) -> None:
    run = tmp_path / "failed"
    shutil.copytree(job_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    with pytest.raises(CellExecutionError, match="refusing .*status='failed'"):
        execute(str(run), "refused-failed")
    (run / "manifest.json").unlink()
    with pytest.raises(CellExecutionError, match="no manifest.json"):
        execute(str(run), "refused-unfinished")
