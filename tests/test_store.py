"""Write stage: shard commits, resume bookkeeping, orphan clean-up, readers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from job.errors import UsageError
from job.runfolder import RunLayout, read_manifest
from job.embed.resume import prepare_run
from job.embed.parts import PartWriter
from job.runfolder import embedding_schema, path_id
from job.runfolder import embedding_matrix, read_table, read_vectors

META = (pa.field("scene_name", pa.string()), pa.field("timestamp", pa.int64()))


def _vec(i: int, d: int = 8) -> np.ndarray:
    v = np.random.default_rng(i).normal(size=d).astype(np.float32)
    return v / np.linalg.norm(v)


def test_path_id_is_stable_and_non_negative() -> None:
    # pinned: ids are stored in every run folder, so the formula (BLAKE2b-64 of the path, little-endian, top bit
    # cleared) must never change; these values were computed once and are written here by hand
    assert path_id("samples/CAM_FRONT/a.jpg") == 2452810927838207642
    assert path_id("samples/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg") \
        == 395384243705805338
    assert path_id("samples/CAM_FRONT/a.jpg") != path_id("samples/CAM_FRONT/b.jpg")
    ids = {path_id(f"samples/CAM_FRONT/{i}.jpg") for i in range(20000)}
    assert len(ids) == 20000 and min(ids) >= 0 and max(ids) < 2**63


def test_shards_commit_by_size_with_metadata(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path / "run"))
    w = PartWriter(layout, embedding_schema(8, META), part_size=3, identity={"a": 1})
    for i in range(7):
        w.add(f"p{i}.jpg", _vec(i), 16, 9, {"scene_name": f"scene-{i}", "timestamp": i} if i % 2 else None)
    w.add_failure("bad.jpg", "empty file (0 bytes)")
    w.close()
    parts = sorted((tmp_path / "run" / "embeddings.parquet").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    t = read_table(RunLayout(str(tmp_path / "run")).embeddings)
    assert t.num_rows == 7 and t.schema.field("scene_name").type == pa.string()
    rows = {r["path"]: r for r in t.to_pylist()}
    assert rows["p1.jpg"]["scene_name"] == "scene-1" and rows["p2.jpg"]["scene_name"] is None
    m = embedding_matrix(t)
    assert m.shape == (7, 8) and m.dtype == np.float32
    np.testing.assert_allclose(m[0], _vec(0))
    assert pq.read_table(tmp_path / "run" / "failures.parquet").num_rows == 1
    assert (tmp_path / "run" / "_run.json").exists()


def test_prepare_run_removes_orphans_and_collects_done(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path / "run"))
    w = PartWriter(layout, embedding_schema(8), part_size=2, identity={"a": 1})
    for i in range(4):
        w.add(f"p{i}.jpg", _vec(i), 1, 1, None)
    w.add_failure("f.jpg", "broken")
    w.close()
    # a killed shard: its failures part made it, its embeddings part did not; plus a temp file
    orphan = tmp_path / "run" / "failures.parquet" / "part-00009.parquet"
    orphan.write_bytes((tmp_path / "run" / "failures.parquet" / "part-00002.parquet").read_bytes())
    (tmp_path / "run" / "embeddings.parquet" / "part-00003.parquet.tmp-abcd1234").write_bytes(b"partial")
    state = prepare_run(layout, {"a": 1})
    assert state.done_paths == {"p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "f.jpg"}
    assert state.next_part == 3 and state.rows == 4 and state.failures == 1
    assert not orphan.exists()
    assert not list((tmp_path / "run").rglob("*.tmp-*"))


def test_prepare_run_refuses_other_options(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path / "run"))
    w = PartWriter(layout, embedding_schema(8), identity={"pool": "mean", "model": "x"})
    w.add("a.jpg", _vec(0), 1, 1, None)
    w.close()
    with pytest.raises(UsageError, match=r"other options \(pool\); use another --out or pass --overwrite"):
        prepare_run(layout, {"pool": "cls", "model": "x"})
    state = prepare_run(layout, {"pool": "cls", "model": "x"}, overwrite=True)
    assert state.done_paths == set() and not (tmp_path / "run" / "embeddings.parquet").exists()


def test_read_manifest_missing_is_clear(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no manifest.json"):
        read_manifest(RunLayout(str(tmp_path)))


def test_read_vectors_streams_every_part_into_one_matrix(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path / "run"))
    w = PartWriter(layout, embedding_schema(8, META, text_vectors=True), part_size=3, identity={"a": 1})
    for i in range(8):
        w.add(f"p{i}.jpg", _vec(i), 16, 9, None, text_vector=_vec(100 + i))
    w.close()
    table = read_table(layout.embeddings, ["id", "embedding", "embedding_trained"])
    for column in ("embedding", "embedding_trained"):
        x, ids = read_vectors(layout.embeddings, column)
        order = np.argsort(ids)
        want = embedding_matrix(table, column)[np.argsort(table.column("id").to_numpy())]
        assert x.dtype == np.float32 and x.flags.c_contiguous and np.array_equal(x[order], want)
    assert sorted(ids.tolist()) == sorted(table.column("id").to_pylist()) and len(ids) == 8
    with pytest.raises(UsageError, match="has no nope column"):
        read_vectors(layout.embeddings, "nope")
    with pytest.raises(UsageError, match="column 'path' is string, expected fixed_size_list"):
        read_vectors(layout.embeddings, "path")
    with pytest.raises(UsageError, match="does not exist"):
        read_vectors(str(tmp_path / "none.parquet"))
