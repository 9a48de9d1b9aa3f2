"""What the search page shows of a run's scores (``job eval``'s ``eval/``, read through ``job.eval.stored``): the
small "quality" panel (per task and vector column, MAP@100 against what chance scores) and the per-category figure.

A run without ``eval/`` keeps working: ``QualityView.available`` is False and ``hint`` is the command that scores it;
``/api/quality`` answers 404 with that command.
"""
from __future__ import annotations

from typing import Any

from ..errors import NotFound
from ..eval import eval_png, not_evaluated_note, read_evaluation, score_rows
from ..runfolder import RunLayout


class QualityView:
    """The run's stored evaluation, read once when the page opens the run."""

    def __init__(self, layout: RunLayout, run: str) -> None:
        self.layout = layout
        self.evaluation = read_evaluation(layout)
        self.hint = None if self.evaluation is not None else not_evaluated_note(run)

    @property
    def available(self) -> bool:
        return self.evaluation is not None

    def quality(self) -> dict[str, Any]:
        """The panel: what was scored (images, the tables, visibility) and one row per task and vector column."""
        ev = self.evaluation
        if ev is None:
            raise NotFound(self.hint or "no scores")
        labels = ev.labels or {}
        out: dict[str, Any] = {
            "images": ev.images, "images_with_a_box": labels.get("images_with_a_box"), "version": labels.get("version"),
            "min_visibility": labels.get("min_visibility"), "scores": score_rows(ev),
            "figure": "/api/quality.png" if eval_png(self.layout) is not None else None}
        if ev.selection is not None:
            s = ev.selection
            out["selection"] = {k: s.get(k) for k in ("subset", "rare_categories", "rare_images_in_subset",
                                                      "random_rare_images_mean", "random_rare_images_sd", "p_value")}
        if ev.searchad is not None:
            out["searchad"] = [{k: r.get(k) for k in ("task", "column", "labels", "MAP", "R-Precision", "P@5")}
                               for r in ev.searchad.get("scores", [])]
        return out

    def figure(self) -> bytes:
        """``eval/per_category.png``."""
        png = eval_png(self.layout) if self.evaluation is not None else None
        if png is None:
            raise NotFound(self.hint or f"{self.layout.run_dir} has no per-category figure")
        return png
