"""Projection stage (``job project``) and the notebook helpers in ``job.viz``, on small synthetic runs."""
from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from job import fsutil, viz
from job.cli import main
from job.config import JobConfig, OutputConfig, ProjectConfig
from job.errors import UsageError
from job.project import UMAP_SCHEMA, UmapParams, compute_umap, pick_backend, project_run
from job.runfolder import Counts, Manifest, ModelInfo, Outputs, RunLayout, read_manifest, write_manifest
from job.search import THUMB_PX
from job.embed.parts import PartWriter
from job.runfolder import embedding_schema, path_id
from job.runfolder import read_table

CAMS = ("CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT")
DESCRIPTIONS = ("Night, after rain, peds", "Rain, bus stop", "Construction zone", "Night, big street")


def clustered(n: int, dim: int = 32, clusters: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in ``clusters`` well separated groups, and each row's group."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % clusters
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    x = centres[labels] + rng.standard_normal((n, dim)).astype(np.float32) * 0.3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def make_run(run_dir: str, n: int = 48, dim: int = 32, *, thumbnails: bool = True, status: str = "succeeded",
             manifest: bool = True) -> list[str]:
    """A run folder as the job writes it (embeddings with nuScenes metadata, thumbnails, manifest); returns paths."""
    vectors, labels = clustered(n, dim)
    meta_fields = [pa.field(name, pa.string()) for name in ("scene_name", "scene_description", "channel", "location")]
    layout = RunLayout(run_dir)
    writer = PartWriter(layout, embedding_schema(dim, meta_fields), part_size=20, thumbnails=thumbnails)
    paths = []
    for i in range(n):
        cam = CAMS[i % len(CAMS)]
        path = f"samples/{cam}/log{labels[i]}__{cam}__{1000 + i}.jpg"
        buf = io.BytesIO()
        Image.new("RGB", (64, 36), (40 * labels[i], 200 - 30 * labels[i], 90)).save(buf, "JPEG")
        meta = {"scene_name": f"scene-{labels[i]:04d}", "scene_description": DESCRIPTIONS[labels[i] % 4],
                "channel": cam, "location": ("boston-seaport", "singapore-onenorth")[labels[i] % 2]}
        writer.add(path, vectors[i], 1600, 900, meta, thumbnail=buf.getvalue())
        paths.append(path)
    writer.close()
    if manifest:
        cfg = JobConfig(output=OutputConfig(out=run_dir))
        write_manifest(layout, Manifest(
            status=status, started="", finished="", host="test", run_dir=run_dir, config=cfg.to_dict(),
            counts=Counts(seen=n, embedded=n, failed=0),
            model=ModelInfo(name="ViT-B-32", pretrained="random init (seeded)", weights_sha256="", pool="mean",
                            image_size=224, embed_dim=dim),
            outputs=Outputs(embeddings="embeddings.parquet", failures="failures.parquet", state="_run.json")))
    return paths


def _cfg(run_dir: str, fit_sample: int = 100_000) -> JobConfig:
    return JobConfig(output=OutputConfig(out=run_dir), project=ProjectConfig(fit_sample=fit_sample))


# ------------------------------------------------------------------------------------------------ compute


def _neighbourhood_kept(coords: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose nearest 2-D neighbour is in the same cluster."""
    d = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


def test_umap_keeps_clusters_apart() -> None:
    x, labels = clustered(120)
    coords, info = compute_umap(x, UmapParams(n_epochs=60))
    assert coords.shape == (120, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    assert info["method"] == "umap" and info["backend"] == "umap-learn" and info["fit_sample"] == 120
    assert _neighbourhood_kept(coords, labels) > 0.95


def test_umap_fits_a_sample_and_transforms_the_rest() -> None:
    x, labels = clustered(150)
    coords, info = compute_umap(x, UmapParams(fit_sample=90, n_epochs=60))
    assert info["method"] == "umap fit on a sample + transform" and info["fit_sample"] == 90
    assert "transform_seconds" in info and np.isfinite(coords).all()
    assert _neighbourhood_kept(coords, labels) > 0.9  # transformed points land next to their cluster


@pytest.mark.parametrize("n", [0, 1, 3])
def test_tiny_runs_get_a_pca_layout(n: int) -> None:
    coords, info = compute_umap(clustered(max(n, 1))[0][:n])
    assert coords.shape == (n, 2) and info["method"] == "pca" and np.isfinite(coords).all()


def test_backend_choice() -> None:
    assert pick_backend("umap-learn") == "umap-learn"
    with pytest.raises(UsageError, match="valid choices"):
        pick_backend("tsne")


def test_cuml_is_used_when_present_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict] = []

    class FakeUMAP:
        def __init__(self, **kw):
            made.append(kw)

        def fit_transform(self, x):
            return np.zeros((len(x), 2), np.float32)

        def transform(self, x):
            return np.ones((len(x), 2), np.float32)

    cuml = types.ModuleType("cuml")
    manifold = types.ModuleType("cuml.manifold")
    manifold.UMAP = FakeUMAP
    cuml.manifold = manifold
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.manifold", manifold)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    coords, info = compute_umap(clustered(30)[0], UmapParams(fit_sample=20))
    assert info["backend"] == "cuml" and made[0]["metric"] == "cosine" and made[0]["n_components"] == 2
    assert (coords == 0).all(1).sum() == 20 and (coords == 1).all(1).sum() == 10


def test_asking_for_cuml_without_it_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuml", None)  # import fails
    with pytest.raises(UsageError, match="cuML"):
        pick_backend("cuml")


# ------------------------------------------------------------------------------------------------ job project


def test_project_run_writes_umap2d_and_reports(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    paths = make_run(run)
    info = project_run(_cfg(run), RunLayout(run), UmapParams(n_epochs=30))
    table = pq.read_table(RunLayout(run).umap)
    assert table.schema.equals(UMAP_SCHEMA)
    assert sorted(table.column("id").to_pylist()) == sorted(path_id(p) for p in paths)
    assert info.method.startswith("umap") and info.backend == "umap-learn" and info.fit_sample == 48
    assert info.n == 48 and info.peak_memory_mb > 10 and info.seconds > 0
    assert not [p for p in Path(run).iterdir() if ".tmp-" in p.name]


def test_project_command_updates_the_manifest(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    make_run(run)
    assert main(["project", "--run", run, "--fit-sample", "30", "--n-epochs", "20", "--no-progress"]) == 0
    manifest = json.loads((Path(run) / "manifest.json").read_text())
    assert manifest["projection"]["fit_sample"] == 30 and manifest["projection"]["n"] == 48
    assert manifest["status"] == "succeeded"
    assert read_table(RunLayout(run).umap).num_rows == 48


def test_project_command_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["project", "--run", str(tmp_path / "nothing")]) == 2
    assert "no embeddings.parquet" in capsys.readouterr().err
    assert main(["project", "--run", str(tmp_path), "--fit-sample", "0"]) == 2
    assert "--fit-sample 0 must be 2 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["project", "--run", str(tmp_path), "--backend", "tsne"])


@pytest.mark.s3
def test_project_on_s3(s3_bucket: str) -> None:
    run = f"s3://{s3_bucket}/runs/r1"
    make_run(run, n=24, thumbnails=False)
    assert main(["project", "--run", run, "--n-epochs", "20", "--no-progress"]) == 0
    assert read_table(RunLayout(run).umap).num_rows == 24
    assert "projection" in fsutil.read_json(RunLayout(run).manifest)


# ------------------------------------------------------------------------------------------------ viz helpers


def test_load_run_refuses_unfinished_and_failed_runs(tmp_path: Path) -> None:
    make_run(str(tmp_path / "unfinished"), n=8, manifest=False)
    with pytest.raises(viz.RunNotReady, match="no manifest.json"):
        viz.load_run(str(tmp_path / "unfinished"))
    make_run(str(tmp_path / "failed"), n=8, status="failed")
    with pytest.raises(viz.RunNotReady, match="status='failed'"):
        viz.load_run(str(tmp_path / "failed"))
    with pytest.raises(viz.RunNotReady, match="RUN_URI"):
        viz.load_run("")


def test_weather_labels() -> None:
    got = viz.weather_labels(["Night, after rain", "night", "Rain, bus", "Parked cars, sunny", None, "", "Brainstorm"])
    assert got == ["night + rain", "night", "rain", "day, no rain", "no description", "no description", "day, no rain"]


def test_gallery_finds_the_query_first_and_reads_thumbnails(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    paths = make_run(run_dir)
    run = viz.load_run(run_dir)
    assert run.n == 48 and set(run.meta.weather) == {"night + rain", "rain", "day, no rain", "night"}
    hits = viz.similar_images(run, paths[5], k=4)
    assert hits.id.iat[0] == path_id(paths[5]) and hits.score.iat[0] == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 5 and (np.diff(hits.score) <= 1e-6).all()
    assert run.row(path_id(paths[5])) == run.row(paths[5].rsplit("/", 1)[-1]) == run.row("#5") == 5
    with pytest.raises(KeyError):
        run.row("nope.jpg")
    thumbs = viz.thumbnails(run, hits.id.tolist())
    assert all(im.size == (64, 36) for im in thumbs.values())
    fig = viz.gallery_figure(run, hits, "query", query_first=True)
    assert viz.save_figure(fig, str(tmp_path / "figs"), "g") and (tmp_path / "figs" / "g.png").stat().st_size > 5000


def test_thumbnails_fall_back_to_source_images(tmp_path: Path) -> None:
    src = tmp_path / "src"
    run_dir = str(tmp_path / "run")
    paths = make_run(run_dir, n=6, thumbnails=False)
    (src / paths[0]).parent.mkdir(parents=True)
    Image.new("RGB", (1600, 900), (10, 200, 10)).save(src / paths[0])
    manifest = read_manifest(RunLayout(run_dir))
    manifest.config["source"]["sources"] = ["s3://not-here.tgz", str(src)]
    write_manifest(RunLayout(run_dir), manifest)
    run = viz.load_run(run_dir)
    ims = viz.thumbnails(run, [path_id(paths[0]), path_id(paths[1])])
    assert ims[path_id(paths[0])].getpixel((5, 5))[1] > 150  # the green source image, shrunk
    assert ims[path_id(paths[0])].width <= 2 * viz.THUMB_WIDTH
    missing = ims[path_id(paths[1])]  # missing everywhere: the placeholder the search page shows too
    assert missing.size[0] == THUMB_PX and missing.getpixel((2, 2)) == missing.getpixel((THUMB_PX - 3, 2))


def test_projection_is_computed_when_missing(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    make_run(run_dir, n=40)
    run = viz.load_run(run_dir)
    df, note = viz.projection(run, max_points=30, n_epochs=20)
    assert len(df) == 30 and "computed here on a random sample of 30 of 40" in note
    project_run(_cfg(run_dir), RunLayout(run_dir), UmapParams(n_epochs=20))
    df, note = viz.projection(run)
    assert len(df) == 40 and "precomputed" in note and {"x", "y", "channel", "weather"} <= set(df.columns)


@pytest.mark.parametrize("n", [60, 12_000])
def test_scatter_map_small_and_shaded(tmp_path: Path, n: int) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    scenes = np.arange(n) % 40
    df = pd.DataFrame({"x": rng.normal(size=n) + scenes % 5, "y": rng.normal(size=n) + scenes // 8,
                       "scene_name": [f"scene-{s:04d}" for s in scenes]})
    fig = viz.scatter_map(df, "scene_name", top=8)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 9 and labels[-1].startswith("32 other scenes")
    assert bool(ax.images) == (n > viz.SHADE_ABOVE)
    path = viz.save_figure(fig, str(tmp_path), f"map{n}")
    assert Path(path).stat().st_size > 10_000


def test_shade_mixes_class_colours() -> None:
    img = viz.shade(np.array([0.1, 0.1, 0.9]), np.array([0.1, 0.1, 0.9]), np.array([0, 1, 1]),
                    np.array([[1, 0, 0, 1], [0, 0, 1, 1]], float), extent=(0, 1, 0, 1), shape=(2, 2))
    assert img.shape == (2, 2, 4)
    np.testing.assert_allclose(img[1, 0, :3], [0.5, 0, 0.5])  # bottom-left pixel: one red, one blue point
    np.testing.assert_allclose(img[0, 1, :3], [0, 0, 1])
    assert img[1, 0, 3] == pytest.approx(1.0) and 0 < img[0, 1, 3] < 1 and img[0, 0, 3] == 0


def test_index_search_is_used_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = str(tmp_path / "run")
    paths = make_run(run_dir, n=10)
    run = viz.load_run(run_dir)

    class FakeSearcher:
        def by_vector(self, q, k):
            return [{"id": path_id(paths[3]), "score": 0.9, "rank": 1},
                    {"id": path_id(paths[1]), "score": 0.5, "rank": 2}]

    monkeypatch.setattr(viz.gallery, "_searcher", lambda r: FakeSearcher())
    rows, scores, how = viz.neighbours(run, run.vectors[0], 2, use_index=True)
    assert how == "faiss index" and rows.tolist() == [3, 1] and scores.tolist() == pytest.approx([0.9, 0.5])
    rows, _, how = viz.neighbours(run, run.vectors[0], 2)
    assert how == "exact cosine" and rows[0] == 0
