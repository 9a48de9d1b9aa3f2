"""The curation's entry in the manifest (``runfolder.Curation``, typed parts) from what the step computed, and the
lines ``job curate`` prints from it."""
from __future__ import annotations

import math
from typing import Any

from ..config import CurateConfig
from ..runfolder import (
    Curation,
    GivenShare,
    GraphInfo,
    GraphTrial,
    LabelledInfo,
    SelectionInfo,
    StratumInfo,
    ThresholdInfo,
)
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


STRATA_SHOWN = 24  # coverage lines printed per stratum at most (the least covered half of them above that)


def _cos(v: float) -> float | None:
    return round(float(v), 5) if math.isfinite(v) else None


def selection_info(selection: Selection, cfg: CurateConfig) -> SelectionInfo:
    """The subset's part of the record: picks, shares and quotas, the images labelled before, coverage per stratum."""
    s, info = selection, selection.info
    given = [] if isinstance(cfg.shares, str) else [GivenShare(column=c, value=v, share=f) for c, v, f in cfg.shares]
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
        lines.extend(selection_lines(c.selection, c.unique))
    return lines
