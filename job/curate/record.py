"""The curation's entry in the manifest (``runfolder.Curation``, typed parts) from what the step computed, and the
lines ``job curate`` prints from it."""
from __future__ import annotations

from typing import Any

from ..config import CurateConfig
from ..runfolder import Curation, GraphInfo, GraphTrial, SelectionInfo, ThresholdInfo
from ..runfolder.documents import MixtureFit
from .knn import KnnGraph
from .select import Selection
from .threshold import NearThreshold


def _search_params(value: Any) -> str | None:
    """Search parameters as one string (``efSearch=64``) whether given as a dict or a string."""
    if not value:
        return None
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def graph_info(graph: KnnGraph) -> GraphInfo:
    """The graph's part of the record: method, recall and how it was measured, search effort, timings."""
    p = graph.params
    trials = [GraphTrial(recall=float(t.get("recall", t.get("recall@10", 0.0))), probe_lists=t.get("probe_lists"),
                         search_params=_search_params(t.get("params"))) for t in p.get("tuning", [])]
    return GraphInfo(method=graph.method, k=graph.k, n=int(len(graph.ids)), recall=round(float(graph.recall), 4),
                     recall_queries=int(graph.recall_queries), device=graph.device, probe_lists=p.get("probe_lists"),
                     nlist=p.get("nlist"), search_params=_search_params(p.get("search_params")),
                     target_met=bool(p.get("target_met", True)), tuning=trials,
                     timings={k: round(float(v), 3) for k, v in graph.timings.items()})


def threshold_info(t: NearThreshold) -> ThresholdInfo:
    """The threshold's part of the record: the cosine, its rule in one line, and what the rule read."""
    d = t.details
    fit = d.get("mixture")
    return ThresholdInfo(cosine=float(t.cosine), rule=t.rule, source=t.source, found_mode=bool(t.found_mode),
                         rows=d.get("rows"), median_nn_cosine=_float(d.get("median_nn_cosine")),
                         flagged_rows=d.get("flagged_rows"), bulk_tail_rows=_float(d.get("bulk_tail_rows")),
                         mixture=MixtureFit(loglik=float(fit["loglik"]), weights=[float(v) for v in fit["weights"]],
                                            means=[float(v) for v in fit["means"]],
                                            sigmas=[float(v) for v in fit["sigmas"]],
                                            separation=float(fit["separation"])) if fit else None)


def selection_info(selection: Selection, cfg: CurateConfig) -> SelectionInfo:
    """The subset's part of the record."""
    return SelectionInfo(n=int(len(selection.ids)), balance=list(cfg.balance), quotas=dict(selection.quotas),
                         radius_cosine=round(float(selection.radius_cosine), 5), export=cfg.export,
                         candidates=selection.info.get("candidates"), dims=selection.info.get("dims"))


def summary_lines(c: Curation) -> list[str]:
    """What ``job curate`` prints: images, duplicates by kind, the threshold and why, the subset and its coverage."""
    d = c.duplicates
    g = c.graph
    lines = [f"images {c.n:,}: {c.n - c.unique:,} repeat another (exact {d.get('exact', 0):,}, "
             f"still {d.get('still', 0):,}, near {d.get('near', 0):,}), {c.unique:,} unique",
             f"near threshold: cosine >= {c.threshold.cosine:.4f} ({c.threshold.rule})",
             f"k-NN graph: {g.method}, k={c.k}, recall@{c.k} {g.recall:.3f}"
             + (f" on {g.recall_queries} queries" if g.recall_queries else "")]
    if c.still_metres is None:
        lines.append("standing still: not looked for (the run has no ego pose: not nuScenes)")
    if c.selection is not None:
        s = c.selection
        bal = f", balanced over {', '.join(s.balance)}" if s.balance else ""
        radius = f"; every unique image has a pick at cosine >= {s.radius_cosine:.3f}" \
            if s.radius_cosine is not None else ""
        lines.append(f"subset: {s.n:,} of {c.unique:,} unique images{bal}{radius}"
                     + (f"; exported to {s.export}" if s.export else ""))
    return lines
