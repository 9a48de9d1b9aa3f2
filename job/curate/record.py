"""The curation's entry in the manifest (``runfolder.Curation``, typed parts) from what the step computed, and the
lines ``job curate`` prints from it."""
from __future__ import annotations

from typing import Any

from ..config import CURATE_PAIR_RECALL, CurateConfig
from ..runfolder import Curation, GraphInfo, GraphTrial, SelectionInfo, ThresholdInfo
from ..runfolder.documents import BulkFlankInfo, UniquenessInfo
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


def selection_info(selection: Selection, cfg: CurateConfig) -> SelectionInfo:
    """The subset's part of the record."""
    return SelectionInfo(n=int(len(selection.ids)), balance=list(cfg.balance), quotas=dict(selection.quotas),
                         radius_cosine=round(float(selection.radius_cosine), 5), export=cfg.export,
                         candidates=selection.info.get("candidates"), dims=selection.info.get("dims"))


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
        s = c.selection
        bal = f", balanced over {', '.join(s.balance)}" if s.balance else ""
        radius = f"; every unique image has a pick at cosine >= {s.radius_cosine:.3f}" \
            if s.radius_cosine is not None else ""
        lines.append(f"subset: {s.n:,} of {c.unique:,} unique images{bal}{radius}"
                     + (f"; exported to {s.export}" if s.export else ""))
    return lines
