"""The one reader of ``curation/`` (``job.curate.CurationResults``) and the typed curation record: groups and kinds
from the tables, the "not curated" words, and manifests written before the record was typed (plain dicts, the
``duplicates.parquet`` of that time) read the same."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from job.curate import KINDS, CurationResults, curate_command, kind_counts, no_subset, not_curated
from job.errors import NotFound
from job.runfolder import Curation, CurationFiles, GraphInfo, RunLayout, SelectionInfo, ThresholdInfo
from job.runfolder.documents import decode

# The curation entry as the code before the typed record wrote it (main at 7a784ca): graph / threshold / selection
# were plain dicts, the graph's search effort under "params".
OLD_ENTRY = {
    "n": 204894, "k": 10,
    "graph": {"method": "index", "k": 10, "n": 204894, "recall": 0.977, "recall_queries": 500, "device": "cpu",
              "params": {"search_params": {"efSearch": 128}, "index_search_params": "efSearch=64", "target_met": True},
              "timings": {"pilot_s": 4.0, "search_s": 61.9}},
    "threshold": {"cosine": 0.965469, "rule": "auto: the nearest-neighbour distances have a duplicate mode",
                  "source": "auto", "found_mode": True, "rows": 20000, "median_nn_cosine": 0.89,
                  "mixture": {"loglik": -1.0, "weights": [0.02, 0.98], "means": [-3.3, -0.96], "sigmas": [0.1, 0.1],
                              "separation": 13.7},
                  "flagged_rows": 504, "bulk_tail_rows": 0.001},
    "still_metres": 0.5, "duplicates": {"exact": 0, "near": 400, "still": 0}, "unique": 19600,
    "selection": {"n": 24, "balance": ["location"], "quotas": {"location=a": 24}, "radius_cosine": 0.93,
                  "export": None, "candidates": 19600, "dims": 768},
    "files": {"duplicates.parquet": "curation/duplicates.parquet"}, "timings": {"graph_s": 70.9},
}


def test_an_entry_written_before_the_record_was_typed_reads_into_the_typed_parts() -> None:
    c = decode(json.dumps(OLD_ENTRY).encode(), Curation, "manifest.json", "curation entry")
    assert isinstance(c.graph, GraphInfo) and isinstance(c.threshold, ThresholdInfo)
    assert isinstance(c.selection, SelectionInfo)
    assert (c.graph.method, c.graph.recall, c.graph.recall_queries) == ("index", 0.977, 500)
    assert c.graph.timings == {"pilot_s": 4.0, "search_s": 61.9}
    assert (c.threshold.cosine, c.threshold.source, c.threshold.found_mode) == (0.965469, "auto", True)
    assert c.threshold.flank is None and c.uniqueness is None and c.graph.pair_recall is None  # not recorded then
    assert c.selection.balance == ["location"] and c.selection.radius_cosine == 0.93
    again = decode(json.dumps(c.to_dict()).encode(), Curation, "manifest.json", "curation entry")
    assert again == c


def _write(folder: Path, dups: dict, scores: dict, selection: dict | None = None) -> RunLayout:
    layout = RunLayout(str(folder))
    files = layout.curation
    Path(files.dir).mkdir(parents=True)
    pq.write_table(pa.table(dups), files.duplicates)
    pq.write_table(pa.table(scores), files.scores)
    if selection is not None:
        pq.write_table(pa.table(selection), files.selection)
    return layout


def test_a_duplicates_table_without_the_direct_link_reads_keep_id_there(tmp_path: Path) -> None:
    """duplicates.parquet written before repeats_id existed: the reader gives keep_id as the direct link."""
    dups = {"id": pa.array([9, 5], pa.int64()), "keep_id": pa.array([3, 3], pa.int64()), "kind": ["near", "still"],
            "cosine": pa.array([0.97, 0.99], pa.float32())}
    r = CurationResults(_write(tmp_path / "run", dups, {"id": pa.array([3, 5, 9], pa.int64()),
                                                         "uniqueness": pa.array([1, 1, 1], pa.float32())}), None, "r")
    g = r.group(3)
    assert g.repeats_ids.tolist() == [3, 3] and g.repeats_cosines.tolist() == pytest.approx([0.99, 0.97])


def test_groups_kinds_rarity_and_badges_from_the_tables(tmp_path: Path) -> None:
    # 3 <- 5 (still), 3 <- 9 (near), 3 <- 11 (exact); 2 <- 7 (near); ids 1 and 4 repeat nothing
    dups = {"id": pa.array([9, 5, 11, 7], pa.int64()), "keep_id": pa.array([3, 3, 3, 2], pa.int64()),
            "kind": ["near", "still", "exact", "near"], "cosine": pa.array([0.97, 0.99, 0.99, 0.98], pa.float32()),
            "repeats_id": pa.array([3, 3, 5, 2], pa.int64()),  # 11 is byte-identical to 5, which stood still at 3
            "repeats_cosine": pa.array([0.97, 0.99, 1.0, 0.98], pa.float32())}
    ids = np.array([1, 2, 3, 4, 5, 7, 9, 11], np.int64)
    scores = {"id": ids, "uniqueness": pa.array([0.2, 0.9, 0.5, 1.0, 0.1, 0.1, 0.1, 0.1], pa.float32())}
    selection = {"rank": pa.array([0, 1], pa.int64()), "id": pa.array([4, 2], pa.int64()),
                 "coverage_cosine": pa.array([np.nan, 0.5], pa.float32())}
    r = CurationResults(_write(tmp_path / "run", dups, scores, selection), None, "runs/x")
    assert r.available and r.has_selection
    g = r.group(9)
    assert (g.root, g.size, g.ids.tolist(), g.kinds.tolist()) == (3, 4, [5, 9, 11], ["still", "near", "exact"])
    assert r.group(3).ids.tolist() == [5, 9, 11] and r.group(1).size == 1
    assert g.repeats_ids.tolist() == [3, 3, 5] and g.repeats_cosines.tolist() == pytest.approx([0.99, 0.97, 1.0])
    groups = r.groups()
    assert groups["root"].tolist() == [3, 2] and groups["size"].tolist() == [4, 2]
    assert [groups[k].tolist() for k in KINDS] == [[1, 0], [1, 0], [1, 1]]
    assert list(kind_counts(r.kinds)) == list(KINDS) == ["exact", "still", "near"]  # one order, the steps'
    ids_, uniq, total = r.rarest(2)
    assert ids_.tolist() == [4, 2] and total == 8 and uniq.tolist() == pytest.approx([1.0, 0.9])
    assert r.rarest(5, among=np.array([1, 3, 5], np.int64))[0].tolist() == [3, 1, 5]
    b = r.badges(np.array([5, 4], np.int64))
    assert b[0] == {"group": 4, "kind": "still", "keep_id": "3", "uniqueness": 0.1, "pick": None}
    assert b[1]["group"] == 1 and b[1]["kind"] is None and b[1]["pick"] == 0
    assert r.is_duplicate(np.array([1, 5, 7], np.int64)).tolist() == [False, True, True]
    assert r.text().startswith("8 images: 4 repeat another (exact 1, still 1, near 2)")
    assert r.info()["by_kind"] == {"exact": 1, "still": 1, "near": 2} and r.info()["groups"] == 2


def test_a_run_that_is_not_curated_says_so_with_the_command(tmp_path: Path) -> None:
    r = CurationResults(RunLayout(str(tmp_path)), None, "runs/plain")
    assert not r.available and r.info() is None
    assert curate_command("runs/plain") == "python -m job curate --run runs/plain --select N"
    with pytest.raises(NotFound, match="runs/plain is not curated .*python -m job curate --run runs/plain"):
        r.group(1)
    assert not_curated("runs/plain") in str(NotFound(not_curated("runs/plain")))
    r = CurationResults(_write(tmp_path / "c", {"id": pa.array([], pa.int64()), "keep_id": pa.array([], pa.int64()),
                                                 "kind": pa.array([], pa.string()),
                                                 "cosine": pa.array([], pa.float32())},
                               {"id": pa.array([1], pa.int64()), "uniqueness": pa.array([1.0], pa.float32())}),
                        None, "runs/c")
    assert r.available and not r.has_selection and r.groups()["root"].tolist() == []
    with pytest.raises(NotFound, match="picked no subset"):
        r.require("selection")
    assert no_subset("runs/c").endswith(curate_command("runs/c"))


def test_the_layout_names_every_file_of_a_curation() -> None:
    files = RunLayout("runs/x").curation
    assert isinstance(files, CurationFiles) and files.dir == "runs/x/curation"
    assert files.duplicates == "runs/x/curation/duplicates.parquet" and files.histogram.endswith("nn_cosines.png")
    assert RunLayout("runs/x", "a").curation.scores == "runs/x/a.curation/scores.parquet"
    assert set(files.tables()) == {"neighbours", "duplicates", "scores", "selection"}
