"""The curation's entry in the manifest (``runfolder.Curation``, typed parts) from what the step computed, and the
lines ``job curate`` prints from it."""
from __future__ import annotations

import math
from typing import Any

from ..config import CURATE_PAIR_RECALL, CurateConfig
from ..runfolder import (
    Curation,
    GraphInfo,
    GraphTrial,
    LabelledInfo,
    SelectionInfo,
    StratumInfo,
    ThresholdInfo,
)
from ..runfolder.records import BulkFlankInfo, UniquenessInfo
from .knn import KnnGraph
from .select import Selection
from .threshold import NearThreshold


def _opt(value: Any, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def graph_info(graph: KnnGraph) -> GraphInfo:
    """The graph's part of the record: method, pair recall (the gate) and recall@k, search effort, timings."""
    trials = [GraphTrial(effort=str(t.get("effort", "")), pair_recall=_opt(t.get("pair_recall")),
                         pairs=int(t.get("pairs", 0)), threshold=_opt(t.get("threshold")), recall=_opt(t.get("recall")))
              for t in graph.tuning]
    met = graph.pair_recall is None or graph.pair_recall >= CURATE_PAIR_RECALL
    return GraphInfo(method=graph.method, k=graph.k, n=int(len(graph.ids)), recall=round(float(graph.recall), 4),
                     recall_queries=int(graph.recall_queries), device=graph.device,
                     pair_recall=_opt(graph.pair_recall, 5), pair_threshold=_opt(graph.pair_threshold),
                     pairs=int(graph.pairs), pair_rows=int(graph.pair_rows), target_met=bool(met), lists=graph.lists,
                     largest_list=graph.largest_list, partitions=graph.partitions, probe=graph.probe,
                     search_params=graph.search_params, truth_device=graph.truth_device,
                     fallbacks=list(graph.fallbacks), tuning=trials,
                     timings={k: round(float(v), 3) for k, v in graph.timings.items()})


def threshold_info(t: NearThreshold) -> ThresholdInfo:
    """The threshold's part of the record: the cosine, its rule in one line, and what the rule read."""
    flank = None if t.flank is None else BulkFlankInfo(peak_distance=round(10 ** t.flank.peak, 6),
                                                       sigma=round(t.flank.sigma, 4), edges=t.flank.edges)
    return ThresholdInfo(cosine=float(t.cosine), rule=t.rule, source=t.source, found_mode=bool(t.found_mode),
                         rows_below=int(t.rows_below), edges_below=int(t.edges_below),
                         identical_pairs=int(t.identical_pairs), flank=flank)


def uniqueness_info(info: dict[str, Any]) -> UniquenessInfo:
    """The uniqueness part of the record (``scores.uniqueness_kept`` / ``uniqueness_fiftyone``'s info)."""
    return UniquenessInfo(method=str(info["method"]), weights=[float(w) for w in info["weights"]],
                          kept=info.get("kept"), researched=int(info.get("researched", 0)),
                          short=int(info.get("short", 0)), commit=info.get("commit"), neighbours=info.get("neighbours"))


STRATA_SHOWN = 24  # coverage lines printed per stratum at most (the least covered half of them above that)


def _cos(v: float) -> float | None:
    return round(float(v), 5) if math.isfinite(v) else None


def selection_info(selection: Selection, cfg: CurateConfig) -> SelectionInfo:
    """The subset's part of the record: picks, shares and quotas, the images labelled before, coverage per stratum."""
    s, info = selection, selection.info
    given: dict[str, dict[str, float]] = {}
    for column, value, share in () if isinstance(cfg.shares, str) else cfg.shares:
        given.setdefault(column, {})[value] = share
    lab = info.get("labelled")
    return SelectionInfo(
        n=int(len(s.ids)), balance=list(cfg.balance), quotas=dict(s.quotas), radius_cosine=_cos(s.radius_cosine),
        export=cfg.export, candidates=info.get("candidates"), dims=info.get("dims"), asked=cfg.select,
        shares=cfg.shares if isinstance(cfg.shares, str) else "given", given_shares=given,
        radius_exact=bool(info.get("radius_exact", True)), labelled=LabelledInfo(**lab) if lab else None,
        min_gap_s=cfg.min_gap_s, shortfall=int(s.shortfall),
        strata=[StratumInfo(stratum=c.stratum, images=c.images, labelled=c.labelled, candidates=c.candidates,
                            target=c.target, quota=c.quota, picks=c.picks, radius_cosine=_cos(c.radius_cosine))
                for c in s.strata],
        timings={k: round(float(v), 3) for k, v in info.get("timings", {}).items()})


def selection_lines(s: SelectionInfo, unique: int) -> list[str]:
    """What ``job curate`` prints about the subset: picks, the images labelled before, shares, coverage per stratum."""
    lab = s.labelled
    before = (f", continuing from {lab.matched:,} labelled ({lab.duplicates_avoided:,} of their duplicates left "
              "out)") if lab else ""
    bal = f", {s.shares} shares over {', '.join(s.balance)}" if s.balance else ""
    gap = f", picks of a scene and camera >= {s.min_gap_s:g} s apart" if s.min_gap_s else ""
    radius = f"; every unique image has a {'labelled image or ' if lab else ''}pick at cosine >= " \
             f"{s.radius_cosine:.3f}" if s.radius_cosine is not None else ""
    lines = [f"subset: {s.n:,} of {unique:,} unique images{before}{bal}{gap}{radius}"
             + (f"; exported to {s.export}" if s.export else "")]
    if s.shortfall:
        lines.append(f"  {s.shortfall:,} picks short of {s.asked:,}: no image is left {s.min_gap_s:g} s from the "
                     "picks of its scene and camera")
    shown = s.strata if len(s.strata) <= STRATA_SHOWN else sorted(
        s.strata, key=lambda c: 2.0 if c.radius_cosine is None else c.radius_cosine)[: STRATA_SHOWN // 2]
    for c in shown if len(s.strata) > 1 else []:
        lines.append(f"  {c.stratum}: {c.picks:,} pick{'s' if c.picks != 1 else ''} (target {c.target:g}), "
                     f"{c.images:,} images" + (f", {c.labelled:,} labelled" if lab else "")
                     + ("" if c.radius_cosine is None else f", covered at cosine >= {c.radius_cosine:.3f}"))
    if len(shown) < len(s.strata):
        lines.append(f"  … the {len(shown)} least covered of {len(s.strata):,} strata shown; all in the manifest "
                     "(curation.selection.strata)")
    return lines


def summary_lines(c: Curation) -> list[str]:
    """What ``job curate`` prints: images, duplicates by kind, the threshold and why, the graph, the subset."""
    d = c.duplicates
    g = c.graph
    lines = [f"images {c.n:,}: {c.n - c.unique:,} repeat another (exact {d.get('exact', 0):,}, "
             f"still {d.get('still', 0):,}, near {d.get('near', 0):,}), {c.unique:,} unique",
             f"near threshold: cosine >= {c.threshold.cosine:.4f} ({c.threshold.rule})"]
    graph = f"k-NN graph: {g.method}, k={c.k}"
    if g.method != "exact" and g.pair_recall is not None:
        graph += (f", pair recall {g.pair_recall:.4f} at the threshold ({g.pairs:,} pairs in {g.pair_rows:,} "
                  f"sampled images{'' if g.target_met else ', BELOW the target'}), recall@{c.k} {g.recall:.3f}")
        graph += f", {g.partitions} partition{'s' if g.partitions != 1 else ''} of ~{g.lists:,} lists" \
            if g.partitions else ""
    else:
        graph += f", recall@{c.k} {g.recall:.3f}" + (f" on {g.recall_queries} queries" if g.recall_queries else "")
    lines.append(graph)
    if c.still_metres is None:
        lines.append("standing still: not looked for (the run has no ego pose: not nuScenes)")
    if c.uniqueness is not None and c.uniqueness.method == "fiftyone":
        lines.append("uniqueness: fiftyone-brain's (centred vectors, all images)")
    if c.selection is not None:
        lines.extend(selection_lines(c.selection, c.unique))
    return lines
