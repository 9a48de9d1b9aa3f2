"""The curation step of a run (``job curate``, ``job run --curate``, ``job merge --curate``): read the run's vectors and
metadata (``load``), build the k-NN graph (its pair recall gated on the near threshold), find the duplicates (exact,
standing still, near), score rarity, pick a diverse subset (``job.curate``, array-level), and write ``curation/``
through the run folder (``write``). The manifest entry (``record``) is returned; the step
(``job.steps.curate_step``) records it.

Files (``RunLayout.curation``), each written atomically, the manifest last; ``results.CurationResults`` reads them:

* ``neighbours.parquet``: ``id``, ``neighbours`` (list of int64 ids, nearest first), ``cosines`` (list of float32);
* ``duplicates.parquet``: one row per image that repeats another: ``id``, ``keep_id`` (the image kept for the whole
  group), ``kind`` (exact | still | near), ``cosine`` (to ``keep_id``), ``repeats_id`` (the image it directly
  repeats: byte-identical for exact, within the near threshold for near, the standstill's first frame for still),
  ``repeats_cosine``; images not in it are unique;
* ``scores.parquet``: ``id``, ``uniqueness`` (0–1, higher = rarer; among the kept images, or fiftyone-brain's),
  ``nn_cosine``, ``kth_cosine``;
* ``selection.parquet`` (``--select N``, ``subset``): ``rank``, ``id``, ``path``, ``sample_data_token``,
  ``coverage_cosine``, ``stratum``;
* ``nn_cosines.png``: the graph's neighbour distances with the near threshold marked.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from ..config import CurateConfig
from ..errors import UsageError
from ..runfolder import Curation, RunLayout
from .duplicates import Duplicates, to_roots
from .find import find_duplicates, near_threshold
from .graph import knn_graph
from .knn import KnnGraph
from .load import RunVectors, has_index, load_run, run_index
from .order import hash_groups, keep_rank
from .record import graph_info, selection_info, summary_lines, threshold_info, uniqueness_info
from .scores import scores as score_table
from .scores import uniqueness_fiftyone, uniqueness_kept
from .select import Selection
from .subset import SubsetPlan
from .write import write_curation

log = logging.getLogger(__name__)


def curate_run(layout: RunLayout, cfg: CurateConfig, *, progress: bool = True,
               build_index: Callable[[], object] | None = None) -> Curation:
    """Curate one output of a run (see the module docstring); bad options end before anything is written.
    ``build_index``: called, once the options are checked, when the run has no index and the graph is not exact
    (``job curate`` on an imported run); a run that has one keeps it."""
    t0 = time.perf_counter()
    run = load_run(layout, cfg)
    n = len(run.ids)
    if cfg.select is not None and cfg.select > n:
        raise UsageError(f"--select {cfg.select} is out of range; use 1 to {n} (the run has {n} images)")
    if cfg.k >= n:
        raise UsageError(f"--k {cfg.k} is out of range for a run of {n} images; use {n - 1} or fewer")
    plan = SubsetPlan.prepare(cfg, run.ids, run.meta) if cfg.select is not None else None  # bad input: before work
    if build_index is not None and cfg.method != "exact" and not has_index(layout):
        log.info("%s has no index: building it first (as job index does), for search and the k-NN graph",
                 layout.run_dir)
        build_index()
    index = run_index(layout, run.ids, cfg.method)
    timings = {"read_s": time.perf_counter() - t0}
    if cfg.device == "cuda":  # CUDA means CUDA: without a usable GPU this is a one-line error, not a quiet CPU run
        from ..model.device import pick_device

        pick_device("cuda")
    hashes = run.column("content_hash")
    groups = hash_groups(hashes) if hashes is not None else None
    graph = knn_graph(run.x, run.ids, cfg.k, index=index, method=cfg.method, seed=cfg.seed, progress=progress,
                      device=cfg.device,
                      gate=lambda rows, cos: near_threshold(rows, cos, groups, cfg.near_threshold).cosine)
    del index  # the run's index is not needed after the graph: its memory is the selection's
    timings["graph_s"] = time.perf_counter() - t0 - timings["read_s"]
    t1 = time.perf_counter()
    rank = keep_rank(run.ids, run.column("timestamp"), run.column("path"))
    still = run.still_columns()
    dups = find_duplicates(graph, run.x, rank, near_threshold_value=cfg.near_threshold, hashes=hashes, still=still,
                           still_metres=cfg.still_metres, still_cosine=cfg.still_cosine,
                           still_gap_s=cfg.still_gap_s, device=cfg.device)
    to_roots(dups, run.x)
    timings["duplicates_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    uniq, uinfo = _uniqueness(graph, run, dups, cfg)
    timings["uniqueness_s"] = time.perf_counter() - t2
    selection = _select(run, graph, dups, plan, timings, progress)
    assert dups.threshold is not None
    files = write_curation(layout, run, graph, dups, score_table(graph, uniq), selection, cfg.export)
    timings["write_s"] = time.perf_counter() - t0 - sum(timings.values())
    counts = dups.counts()
    info = Curation(
        n=n, k=graph.k, graph=graph_info(graph), threshold=threshold_info(dups.threshold),
        still_metres=cfg.still_metres if still is not None else None, duplicates=counts,
        unique=n - int(sum(counts.values())), still_cosine=cfg.still_cosine if still is not None else None,
        still_gap_s=cfg.still_gap_s if still is not None else None, uniqueness=uniqueness_info(uinfo),
        selection=selection_info(selection, cfg) if selection is not None else None,
        files=files, timings={k: round(v, 3) for k, v in timings.items()})
    log.info("%s", "\n".join(summary_lines(info)))
    return info


def _uniqueness(graph: KnnGraph, run: RunVectors, dups: Duplicates,
                cfg: CurateConfig) -> tuple[np.ndarray, dict[str, object]]:
    """``--uniqueness kept`` (among the kept images) or ``fiftyone`` (fiftyone-brain's, all images)."""
    weights = tuple(cfg.uniqueness_weights)
    if cfg.uniqueness == "fiftyone":
        return uniqueness_fiftyone(run.x, graph, weights, device=cfg.device)
    return uniqueness_kept(graph, run.x, dups, weights, extra=dups.info.get("extra"), device=cfg.device)


def _select(run: RunVectors, graph: KnnGraph, dups: Duplicates, plan: SubsetPlan | None, timings: dict[str, float],
            progress: bool) -> Selection | None:
    """The diverse subset (``--select N``, ``subset``) among the images that repeat no other, continuing from the
    labelled ones; None without ``--select``."""
    if plan is None:
        return None
    t0 = time.perf_counter()
    assert dups.threshold is not None
    selection = plan.select(run.x, run.ids, dups.rows, dups.roots()[0], graph.rows, graph.cosines,
                            dups.threshold.cosine, progress=progress)
    timings["select_s"] = time.perf_counter() - t0
    return selection
