"""``job eval --searchad DIR``: a small SearchAD folder written here in their format (never their data) from the test
nuScenes data; every label's MAP, R-Precision and P@k equal what SearchAD's devkit computes (its image-level
annotations and its evaluation loop, ``tests/searchad_reference.py``) on the ranking our vectors make; a path that is
not a SearchAD folder is one line, exit 2, nothing written."""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from eval_helpers import columns_of
from searchad_reference import evaluate_label, image_level_annotations

from job.cli import main
from job.config import EvalConfig, JobConfig
from job.eval import SEARCHAD, evaluate_run
from job.eval.searchad import label_prompt
from job.runfolder import RunLayout, read_manifest, read_table, read_vectors

LABELS = ("Object-Traffic-Cone", "Vehicle-Duty-Police", "Human-Construction-Worker", "Animal-Real-Dog")


def write_searchad(root: Path, keyframes: list[str], seed: int = 0) -> dict:
    """A SearchAD folder in the devkit's layout: ``searchad_annotations_val.json`` (nuScenes CAM_FRONT / CAM_BACK
    keyframes and a few images of other sub-datasets; boxes of several labels, some under the 50 px² minimum), and
    ``default_queries/<label>.json`` with vision support sets. Returns the annotation dict."""
    rng = np.random.default_rng(seed)
    frames = [p for p in keyframes if "/CAM_FRONT/" in p or "/CAM_BACK/" in p]
    ann: dict[str, list[dict]] = {}
    for p in frames:
        boxes = []
        for lb in LABELS:
            if rng.random() < {"Object-Traffic-Cone": 0.5, "Vehicle-Duty-Police": 0.15}.get(lb, 0.25):
                for _ in range(int(rng.integers(1, 3))):
                    x, y = rng.uniform(0, 140), rng.uniform(0, 80)
                    w, h = rng.choice([3.0, 6.0, 12.0]), rng.choice([4.0, 9.0, 15.0])  # areas 12 .. 180 px²
                    boxes.append({"label": lb, "bbox": [x, y, x + w, y + h]})
        ann[f"nuscenes/{p}"] = boxes
    ann["kitti/training/image_2/000001.png"] = [{"label": "Object-Traffic-Cone", "bbox": [0, 0, 50, 50]}]
    ann["cityscapes/leftImg8bit/val/x.png"] = [{"label": "Animal-Real-Dog", "bbox": [0, 0, 40, 40]}]
    root.mkdir(parents=True)
    (root / "searchad_annotations_val.json").write_text(json.dumps(ann))
    (root / "default_queries").mkdir()
    gt, _ = image_level_annotations(ann)
    for lb in LABELS:
        ns = [p for p in gt.get(lb, []) if p.startswith("nuscenes/")]
        support = {p: [{"bbox": {"min_x": 1, "min_y": 1, "max_x": 20, "max_y": 20}}] for p in ns[:2]}
        support["kitti/training/image_2/000001.png"] = [{"bbox": {"min_x": 0, "min_y": 0, "max_x": 9, "max_y": 9}}]
        (root / "default_queries" / f"{lb}.json").write_text(json.dumps({"supportsets": {"vision": support}}))
    return ann


def fake_text(dim: int):
    """A stand-in text tower: a fixed unit vector per text."""
    def encode(texts):
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)
    return encode


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_searchad_scores_equal_the_devkit(curated_run, nuscenes_dataroot, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(curated_run, run)
    sa_dir = tmp_path / "searchad"
    ann = write_searchad(sa_dir, nuscenes_dataroot.keyframes)
    layout = RunLayout(str(run))
    x, ids = read_vectors(layout.embeddings)
    encode = fake_text(x.shape[1])
    cfg = JobConfig(eval=EvalConfig(searchad=str(sa_dir), min_positives=3))
    result = evaluate_run(layout, cfg, encode_text=encode)
    rec = result.searchad
    assert rec is not None and rec["splits"] == ["val"]
    ns_paths = [p for p in ann if p.startswith("nuscenes/")]
    assert rec["nuscenes_images"] == len(ns_paths) == rec["images_in_run"]
    rows = pq.read_table(run / "eval" / SEARCHAD).to_pylist()
    gt, ignore = image_level_annotations(ann)
    table = read_table(layout.embeddings, ["id", "path"])
    path_of = dict(zip(table["id"].to_pylist(), table["path"].to_pylist()))
    checked = 0
    for column in columns_of(run):
        xc, idc = read_vectors(layout.embeddings, column)
        vec = {f"nuscenes/{path_of[int(i)]}": _unit(v) for i, v in zip(idc, xc)}
        for r in (r for r in rows if r["column"] == column):
            lb = r["label"]
            if r["task"] == "searchad-text":
                q = _unit(encode([label_prompt(lb)])[0]) if lb not in ("Vehicle-Duty-Police",
                                                                       "Human-Construction-Worker") else None
                if q is None:  # the shipped prompt table's ensemble
                    from job.eval import load_prompts

                    q = _unit(encode(list(load_prompts().searchad[lb])).mean(axis=0))
                support: list[str] = []
            else:
                support = [p for p in json.loads((sa_dir / "default_queries" / f"{lb}.json").read_text())
                           ["supportsets"]["vision"] if p in vec]
                q = _unit(np.mean([vec[p] for p in support], axis=0))
            candidates = [p for p in ns_paths if p not in support]
            scores = np.array([vec[p] @ q for p in candidates])
            predictions = [candidates[i] for i in np.argsort(-scores, kind="stable")]
            ref = evaluate_label(predictions, set(gt.get(lb, [])), set(ignore.get(lb, [])))
            for ours, theirs in (("MAP", "MAP"), ("R-Precision", "R-Precision"), ("P@5", "P@5"), ("P@25", "P@25"),
                                 ("P@100", "P@100")):
                assert r[ours] == pytest.approx(ref[theirs], abs=1e-6), (lb, r["task"], ours)
            checked += 1
    assert checked == 2 * 2 * len(LABELS)  # both tasks, both columns, every label (all have nuScenes positives)
    # every label has small boxes somewhere: the ignore lists are exercised
    assert all(ignore.get(lb) for lb in LABELS)
    means = {(s["task"], s["column"]): s for s in rec["scores"]}
    assert means[("searchad-image", "embedding")]["MAP"] == pytest.approx(
        np.mean([r["MAP"] for r in rows if r["task"] == "searchad-image" and r["column"] == "embedding"]), abs=1e-5)
    assert set(means[("searchad-text", "embedding")]["MAP_by_category"]) == {"Animal", "Human", "Object", "Vehicle"}
    m = read_manifest(layout)  # the Python API writes eval/ only; the step records it in the manifest
    assert m.eval is None or m.eval.searchad is None


def test_job_eval_searchad_prints_and_records(curated_run, nuscenes_dataroot, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(curated_run, run)
    write_searchad(tmp_path / "searchad", nuscenes_dataroot.keyframes)
    assert main(["eval", "--run", str(run), "--searchad", str(tmp_path / "searchad"), "--min-positives", "3",
                 "--no-progress", "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "SearchAD (val)" in out and "searchad-image" in out
    m = read_manifest(RunLayout(str(run)))
    assert m.eval.searchad["labels_scored"] == len(LABELS)
    assert m.eval.files[SEARCHAD] == f"eval/{SEARCHAD}"
    assert m.eval.scores  # the nuScenes labels are scored too


@pytest.mark.parametrize("kind", ["missing", "empty folder", "other json"])
def test_a_path_that_is_not_searchad_is_refused(curated_run, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(curated_run, run)
    shutil.rmtree(run / "eval")
    manifest = (run / "manifest.json").read_bytes()
    bad = tmp_path / "bad"
    if kind != "missing":
        bad.mkdir()
    if kind == "other json":
        (bad / "annotations.json").write_text("{}")
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--searchad", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--searchad" in err[0] and ("not a SearchAD folder" in err[0] or "does not exist" in err[0])
    assert not (run / "eval").exists() and (run / "manifest.json").read_bytes() == manifest
