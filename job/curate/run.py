"""The curation step of a run (``job curate``, ``job run --curate``, ``job merge --curate``): read the run's vectors and
metadata (``load``), build the k-NN graph, find the duplicates (exact, standing still, near), score rarity, pick a
diverse subset (``job.curate``, array-level), and write ``curation/`` through the run folder (``write``). The
manifest entry (``record``) is returned; the step (``job.steps.curate_step``) records it.

Files (``RunLayout.curation``), each written atomically, the manifest last; ``results.CurationResults`` reads them:

* ``neighbours.parquet``: ``id``, ``neighbours`` (list of int64 ids, nearest first), ``cosines`` (list of float32);
* ``duplicates.parquet``: one row per image that repeats another: ``id``, ``keep_id`` (the image kept for the whole
  group), ``kind`` (exact | still | near), ``cosine`` (to ``keep_id``); images not in it are unique;
* ``scores.parquet``: ``id``, ``uniqueness`` (FiftyOne Brain's definition, 0–1, higher = rarer), ``nn_cosine``,
  ``kth_cosine``;
* ``selection.parquet`` (``--select N``, ``subset``): ``rank``, ``id``, ``path``, ``sample_data_token``,
  ``coverage_cosine``, ``stratum``;
* ``nn_cosines.png``: the nearest-neighbour distances with the near threshold marked.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from ..config import CurateConfig
from ..errors import UsageError
from ..runfolder import Curation, RunLayout
from .duplicates import Duplicates, to_roots
from .find import find_duplicates
from .graph import knn_graph
from .knn import KnnGraph
from .load import RunVectors, load_run, run_index
from .order import keep_rank
from .record import graph_info, selection_info, summary_lines, threshold_info
from .scores import scores as score_table
from .select import Selection
from .subset import SubsetPlan
from .write import write_curation

log = logging.getLogger(__name__)


def curate_run(layout: RunLayout, cfg: CurateConfig, *, progress: bool = True,
               build_index: Callable[[], object] | None = None) -> Curation:
    """Curate one output of a run (see the module docstring); bad options end before anything is written.
    ``build_index``: called, once the options are checked, when the run has no index and the graph may need one
    (``job curate`` on an imported run)."""
    t0 = time.perf_counter()
    run = load_run(layout, cfg)
    n = len(run.ids)
    if cfg.select is not None and cfg.select > n:
        raise UsageError(f"--select {cfg.select} is out of range; use 1 to {n} (the run has {n} images)")
    plan = SubsetPlan.prepare(cfg, run.ids, run.meta) if cfg.select is not None else None  # bad input: before work
    index = run_index(layout, run.ids, cfg.method)
    if index is None and build_index is not None and cfg.method != "exact":
        log.info("%s has no index: building it first (as job index does), for the k-NN graph and for search",
                 layout.run_dir)
        build_index()
        index = run_index(layout, run.ids, cfg.method)
    timings = {"read_s": time.perf_counter() - t0}
    if cfg.device == "cuda":  # CUDA means CUDA: without a usable GPU this is a one-line error, not a quiet CPU run
        from ..model.device import pick_device

        pick_device("cuda")
    graph = knn_graph(run.x, run.ids, cfg.k, index=index, method=cfg.method, seed=cfg.seed, progress=progress,
                      device=cfg.device)
    del index  # the run's index is not needed after the graph: its memory is the selection's
    timings["graph_s"] = time.perf_counter() - t0 - timings["read_s"]
    t1 = time.perf_counter()
    rank = keep_rank(run.ids, run.column("timestamp"), run.column("path"))
    still = run.still_columns()
    dups = find_duplicates(graph, run.x, rank, near_threshold=cfg.near_threshold, hashes=run.column("content_hash"),
                           still=still, still_metres=cfg.still_metres, device=cfg.device)
    timings["duplicates_s"] = time.perf_counter() - t1
    scores = score_table(graph)
    selection = _select(run, graph, dups, plan, timings, progress)
    assert dups.threshold is not None
    to_roots(dups, run.x)
    files = write_curation(layout, run, graph, dups, scores, selection, cfg.export)
    timings["write_s"] = time.perf_counter() - t0 - sum(timings.values())
    counts = dups.counts()
    info = Curation(
        n=n, k=graph.k, graph=graph_info(graph), threshold=threshold_info(dups.threshold),
        still_metres=cfg.still_metres if still is not None else None, duplicates=counts,
        unique=n - int(sum(counts.values())),
        selection=selection_info(selection, cfg) if selection is not None else None,
        files=files, timings={k: round(v, 3) for k, v in timings.items()})
    log.info("%s", "\n".join(summary_lines(info)))
    return info


def _select(run: RunVectors, graph: KnnGraph, dups: Duplicates, plan: SubsetPlan | None, timings: dict[str, float],
            progress: bool) -> Selection | None:
    """The diverse subset (``--select N``, ``subset``) among the images that repeat no other, continuing from the
    labelled ones; None without ``--select``."""
    if plan is None:
        return None
    t0 = time.perf_counter()
    assert dups.threshold is not None
    selection = plan.select(run.x, run.ids, dups.rows, dups.keep_rows, graph.rows, graph.cosines,
                            dups.threshold.cosine, progress=progress)
    timings["select_s"] = time.perf_counter() - t0
    return selection


