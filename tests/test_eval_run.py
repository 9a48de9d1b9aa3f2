"""``job eval`` and the eval step end to end: ``job run`` on the test nuScenes data writes ``eval/`` and the manifest
records it; an oracle (vectors made from the labels, plus noise) scores MAP@100 >= 0.9 image→image and random vectors
score what chance says, both through the same ``job eval``; bad input is one line, exit 2, nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eval_helpers import columns_of

from conftest import TEST_MODEL
from job.cli import main
from job.eval import EVAL_JSON, LABELS, PER_CATEGORY, PER_QUERY
from job.runfolder import RunLayout, read_manifest
from nuscenes_fixture import make_nuscenes_fixture

RUN = [*TEST_MODEL, "--image-size", "64", "--no-project", "--workers", "0", "--no-progress", "--log-level", "WARNING"]


def _run(source: Path, out: Path, *extra: str) -> None:
    assert main(["run", "--source", str(source), "--out", str(out), *RUN, *extra]) == 0


@pytest.fixture(scope="module")
def evaluated_run(nuscenes_dataroot, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalrun") / "run"
    _run(nuscenes_dataroot.root, out, "--no-index", "--min-positives", "3")
    return out


def test_job_run_writes_eval_and_the_manifest_records_it(evaluated_run, nuscenes_dataroot):
    layout = RunLayout(str(evaluated_run))
    m = read_manifest(layout)
    assert m.eval is not None and m.outputs.eval == "eval"
    assert m.timings["eval_s"] > 0
    for name in (EVAL_JSON, LABELS, PER_QUERY, PER_CATEGORY):
        assert (evaluated_run / "eval" / name).stat().st_size > 0
    stored = json.loads((evaluated_run / "eval" / EVAL_JSON).read_text())
    assert stored == json.loads(m.to_json())["eval"]
    assert m.eval.images == len(nuscenes_dataroot.keyframes) == m.eval.rows
    assert m.eval.labels["version"] == "v1.0-mini" and m.eval.labels["min_visibility"] == 2
    # both vectors of the run, every task the fixture can ask
    assert {(s.task, s.column) for s in m.eval.scores} == {
        (t, c) for t in ("text", "image", "scene", "ego") for c in columns_of(evaluated_run)}
    per_query = pq.read_table(evaluated_run / "eval" / PER_QUERY)
    for s in m.eval.scores:
        rows = per_query.filter(pa.compute.and_(pa.compute.equal(per_query["task"], s.task),
                                                pa.compute.equal(per_query["column"], s.column)))
        assert rows.num_rows == s.queries
        if s.task != "image":
            assert s.map_at_100 == pytest.approx(np.mean(rows["map_at_100"].to_numpy()), abs=1e-5)
    img = per_query.filter(pa.compute.equal(per_query["task"], "image"))
    labels = pq.read_table(evaluated_run / "eval" / LABELS)
    scene_of = dict(zip(labels["id"].to_pylist(), labels["scene_token"].to_pylist()))
    counts = {}
    for cats, scene in zip(labels["categories"].to_pylist(), labels["scene_token"].to_pylist()):
        for c in cats:
            counts.setdefault(c, []).append(scene)
    for qid, cat, rel in zip(img["query_id"].to_pylist(), img["query"].to_pylist(), img["relevant"].to_pylist()):
        assert rel == sum(s != scene_of[qid] for s in counts[cat])  # other scenes only


def test_job_eval_prints_the_table_and_reuses_the_labels(evaluated_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    labels_before = (run / "eval" / LABELS).read_bytes()
    assert main(["eval", "--run", str(run), "--min-positives", "3", "--no-progress", "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "MAP@100" in out and all(c in out for c in columns_of(run)) and "image" in out
    assert (run / "eval" / LABELS).read_bytes() == labels_before
    m = read_manifest(RunLayout(str(run)))
    assert m.eval is not None and m.eval.labels["reused"] is True
    # another visibility: labels made again
    assert main(["eval", "--run", str(run), "--min-visibility", "1", "--min-positives", "3", "--no-progress",
                 "--log-level", "WARNING"]) == 0
    m = read_manifest(RunLayout(str(run)))
    assert m.eval.labels["reused"] is False and m.eval.labels["min_visibility"] == 1


def _replace_vectors(run: Path, make: callable) -> None:
    """Rewrite every part of the run's embeddings with vectors ``make(ids)`` in both vector columns."""
    for part in sorted((run / "embeddings.parquet").glob("part-*.parquet")):
        t = pq.read_table(part)
        x = make(t["id"].to_numpy()).astype(np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
        for name in columns_of(run):
            t = t.set_column(t.schema.get_field_index(name), t.schema.field(name), col)
        pq.write_table(t, part)


@pytest.fixture(scope="module")
def oracle_source(tmp_path_factory):
    """Test data where every camera image shows exactly one object (its category unambiguous per image)."""
    return make_nuscenes_fixture(tmp_path_factory.mktemp("oracle") / "nuscenes", boxes_layout="one_per_camera")


def test_oracle_scores_high_and_random_vectors_score_chance(oracle_source, tmp_path):
    base = tmp_path / "base"
    _run(oracle_source.root, base, "--no-index", "--no-eval")
    dim = int(pq.read_schema(next((base / "embeddings.parquet").glob("part-*.parquet"))).field("embedding")
              .type.list_size)
    rng = np.random.default_rng(0)
    # the labels, derived by the same job eval on the untouched run first
    assert main(["eval", "--run", str(base), "--no-progress", "--log-level", "WARNING"]) == 0
    labels = pq.read_table(base / "eval" / LABELS)
    cats = sorted({c for cs in labels["categories"].to_pylist() for c in cs})
    code = {i: cats.index(cs[0]) for i, cs in zip(labels["id"].to_pylist(), labels["categories"].to_pylist())}

    def oracle(ids):
        x = np.zeros((len(ids), dim))
        x[np.arange(len(ids)), [code[int(i)] for i in ids]] = 1.0
        x += 0.1 * rng.standard_normal(x.shape)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def random(ids):
        x = rng.standard_normal((len(ids), dim))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    results = {}
    for name, make in (("oracle", oracle), ("random", random)):
        run = tmp_path / name
        shutil.copytree(base, run)
        _replace_vectors(run, make)
        assert main(["eval", "--run", str(run), "--no-progress", "--log-level", "WARNING"]) == 0
        results[name] = read_manifest(RunLayout(str(run))).eval
    for column in columns_of(base):
        s = results["oracle"].score("image", column)
        assert s is not None and s.queries >= 5 * 7
        assert s.map_at_100 >= 0.9 and s.r_precision >= 0.9 and s.p_at_5 >= 0.9
        # random vectors: within 4 standard errors of what a random ranking scores (the spread taken over the
        # categories' mean differences, queries of one category sharing their relevant set)
        r = results["random"].score("image", column)
        pq_ = pq.read_table(tmp_path / "random" / "eval" / PER_QUERY).to_pandas()
        d = pq_[(pq_.task == "image") & (pq_.column == column)]
        diffs = (d.map_at_100 - d.chance_map_at_100).groupby(d["query"]).mean()
        se = diffs.std(ddof=1) / np.sqrt(len(diffs))
        assert abs(r.map_at_100 - r.chance_map_at_100) <= max(4 * se, 0.02)
        assert s.map_at_100 > r.map_at_100 + 0.5


def test_a_run_without_nuscenes_metadata_is_refused(image_dir, tmp_path, capsys):
    out = tmp_path / "plain"
    assert main(["embed", "--source", str(image_dir), "--out", str(out), *TEST_MODEL, "--image-size", "64",
                 "--workers", "0", "--no-progress", "--log-level", "WARNING"]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    manifest = (out / "manifest.json").read_bytes()
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no nuScenes metadata" in err[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "manifest.json").read_bytes() == manifest


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code, argparse's own refusals (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(("args", "message"), [
    (["--prompts", "/nonexistent/prompts.toml"], "does not exist"),
    (["--min-positives", "0"], "positive integer"),
    (["--min-visibility", "5"], "invalid choice"),
])
def test_bad_options_are_one_line_and_write_nothing(evaluated_run, tmp_path, capsys, args, message):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    shutil.rmtree(run / "eval")
    manifest = (run / "manifest.json").read_bytes()
    capsys.readouterr()
    assert _exit_code(["eval", "--run", str(run), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and len([line for line in err if "error" in line]) == 1
    assert not (run / "eval").exists() and (run / "manifest.json").read_bytes() == manifest


def test_bad_prompt_table_is_refused(evaluated_run, tmp_path, capsys):
    bad = tmp_path / "p.toml"
    bad.write_text('[category]\n"vehicle.car" = []\n')
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    shutil.rmtree(run / "eval")
    assert main(["eval", "--run", str(run), "--prompts", str(bad), "--no-progress"]) == 2
    assert "non-empty list of prompts" in capsys.readouterr().err
    assert not (run / "eval").exists()


def test_tables_without_annotations_mean_no_eval_step(tmp_path):
    """The test split has no annotations: job run finishes without eval/, job eval says why (exit 2)."""
    info = make_nuscenes_fixture(tmp_path / "nuscenes", n_logs=1, scenes_per_log=2, boxes_per_scene=0)
    out = tmp_path / "run"
    _run(info.root, out, "--no-index")
    m = read_manifest(RunLayout(str(out)))
    assert m.eval is None and not (out / "eval").exists()
    assert main(["eval", "--run", str(out), "--no-progress"]) == 2
    assert not (out / "eval" / EVAL_JSON).exists()


def test_edited_prompt_table_is_used(evaluated_run, tmp_path):
    table = tmp_path / "prompts.toml"
    table.write_text('[category]\n"vehicle.car" = ["a red sedan."]\n[scene]\n"night" = ["darkness."]\n')
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    assert main(["eval", "--run", str(run), "--prompts", str(table), "--min-positives", "3", "--no-progress",
                 "--log-level", "WARNING"]) == 0
    m = read_manifest(RunLayout(str(run)))
    assert m.eval.settings["prompts"]["source"] == str(table)
    per_query = pq.read_table(run / "eval" / PER_QUERY).to_pandas()
    assert set(per_query[per_query.task == "scene"]["query"]) == {"night"}
    assert "ego" not in set(per_query.task)
    car = per_query[(per_query.task == "text") & (per_query["query"] == "vehicle.car")]
    assert set(car.prompts) == {"a red sedan."}
    bike = per_query[(per_query.task == "text") & (per_query["query"] == "vehicle.bicycle")]
    assert set(bike.prompts) == {"a photo of a bicycle."}  # not in the table: the plain prompt


def test_job_merge_scores_the_merged_run(nuscenes_dataroot, tmp_path):
    """A run split in two shards: each shard records where its tables came from, the merge carries that into its
    manifest, and the eval step of job merge scores the whole run."""
    out = tmp_path / "split"
    for i in range(2):
        _run(nuscenes_dataroot.root, out, "--shard", f"{i}/2", "--min-positives", "3")
        assert not (out / "shards" / str(i) / "eval").exists()  # a shard is not scored: the merged run is
    assert main(["merge", "--run", str(out), "--no-index", "--no-project", "--min-positives", "3", "--no-progress",
                 "--log-level", "WARNING"]) == 0
    m = read_manifest(RunLayout(str(out)))
    assert m.source["kind"] == "nuscenes" and m.source["metadata"]["from"]
    assert m.eval is not None and m.eval.images == len(nuscenes_dataroot.keyframes) and m.eval.scores


def test_broken_annotation_tables_do_not_fail_the_run(tmp_path, capsys):
    """After hours of embedding a run is not failed for its annotation tables: job run ends with its manifest and a
    warning naming the command; job eval then says what is broken (exit 1, a fault of the data)."""
    info = make_nuscenes_fixture(tmp_path / "nuscenes", n_logs=1, scenes_per_log=2)
    table = info.root / info.version / "sample_annotation.json"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    out = tmp_path / "run"
    assert main(["run", "--source", str(info.root), "--out", str(out), *RUN, "--no-index"]) == 0
    assert read_manifest(RunLayout(str(out))).eval is None
    err = capsys.readouterr().err
    assert "sample_annotation.json" in err and f"python -m job eval --run {out}" in err
    assert main(["eval", "--run", str(out), "--no-progress"]) == 1
    assert "sample_annotation.json" in capsys.readouterr().err.strip().splitlines()[-1]


def test_labels_of_other_rows_are_refused(evaluated_run, tmp_path):
    from job.config import JobConfig
    from job.errors import UsageError
    from job.eval import evaluate_run

    labels = pq.read_table(evaluated_run / "eval" / LABELS)
    other = labels.set_column(0, "id", pa.array(labels["id"].to_numpy() + 1))
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    with pytest.raises(UsageError, match="not rows of this run"):
        evaluate_run(RunLayout(str(run)), JobConfig(), labels=other, encode_text=lambda t: np.ones((len(t), 384)))


@pytest.mark.s3
def test_tables_read_again_from_an_s3_prefix_and_from_an_archive(nuscenes_dataroot, s3_server, s3_bucket, tmp_path):
    """The eval step reads the annotation tables where the run read its own: an s3:// dataroot (recorded as its URL),
    and an archive that carries its tables after its images (streamed again up to the last table)."""
    from nuscenes_fixture import pack_mini_archive, upload_tree

    prefix = upload_tree(nuscenes_dataroot.root, s3_bucket, "nuscenes", endpoint_url=s3_server)
    out = tmp_path / "from_s3"
    _run(prefix, out, "--no-index", "--min-positives", "3")
    m = read_manifest(RunLayout(str(out)))
    assert m.eval is not None and m.eval.labels["tables"].startswith(f"s3://{s3_bucket}/nuscenes/")
    archive = pack_mini_archive(nuscenes_dataroot, tmp_path / "v1.0-mini.tgz")  # tables after the images
    out2 = tmp_path / "from_archive"
    _run(archive, out2, "--no-index", "--min-positives", "3")
    m2 = read_manifest(RunLayout(str(out2)))
    assert m2.eval is not None and m2.eval.labels["tables"] == str(archive)
    same = [pq.read_table(o / "eval" / LABELS).sort_by("id") for o in (out, out2)]
    assert same[0].equals(same[1])


def test_without_the_runs_text_tower_the_image_task_still_runs(evaluated_run, tmp_path):
    """Text queries need the run's own model; where it cannot be loaded (other weights here, no manifest), the image
    task is scored and eval.json says why the text tasks were not."""
    from job.config import EvalConfig, JobConfig
    from job.errors import DataError
    from job.eval import evaluate_run

    def no_model(texts):
        raise DataError("the run was embedded with weights abc…, but ViT-S-32 loads def… here")

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    result = evaluate_run(RunLayout(str(run)), JobConfig(eval=EvalConfig(min_positives=3)), encode_text=no_model)
    assert {s.task for s in result.scores} == {"image"}
    assert result.settings["text_queries"].startswith("skipped: the run was embedded with weights")
