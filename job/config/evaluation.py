"""``job eval``'s section of the config (``JobConfig.eval``): which boxes count, which queries are asked, the prompt
table, SearchAD. Standard library and ``job.values`` only, like the rest of ``job.config`` (the CDK app imports it)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..values import at_least, in_range

MIN_VISIBILITY = 2  # nuScenes visibility level 2 = 40-60 % of the object visible: a box under 40 % is often a sliver
VISIBILITY_LEVELS: tuple[int, ...] = (1, 2, 3, 4)  # v0-40, v40-60, v60-80, v80-100


@dataclass(frozen=True)
class EvalConfig:
    """``job eval`` and the eval step at the end of ``job run`` / ``job merge`` (when the source has annotations):
    which labels count and which queries are asked (``job.eval``)."""

    enabled: bool = True  # the step in job run / job merge; ``job eval`` runs it regardless
    min_visibility: int = MIN_VISIBILITY  # a box counts when its nuScenes visibility level is at least this (1..4)
    min_positives: int = 10  # a category (or scene word) is asked as a query when this many images show it
    image_queries: int = 25  # image→image: query images sampled per category
    prompts: str | None = None  # an edited prompt table (TOML) instead of job/eval/prompts.toml
    nuscenes_meta: str | None = None  # where the annotation tables are, when not where the run's tables came from
    searchad: str | None = None  # a folder holding SearchAD's annotations (``job eval --searchad``)
    rare_share: float = 0.01  # curated runs: a category is rare when fewer than this share of images show it
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("--min-positives", self.min_positives, 1)
        at_least("--image-queries", self.image_queries, 1)
        if self.min_visibility not in VISIBILITY_LEVELS or isinstance(self.min_visibility, bool):
            raise UsageError(f"--min-visibility {self.min_visibility!r} must be one of "
                             f"{', '.join(map(str, VISIBILITY_LEVELS))} (nuScenes' visibility levels: "
                             "1 = 0-40 %, 2 = 40-60 %, 3 = 60-80 %, 4 = 80-100 % of the object visible)")
        in_range("--rare-share", self.rare_share, 0.0, 1.0, low_open=True)
