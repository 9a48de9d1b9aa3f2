"""Curation's section of the config (``JobConfig.curate``): its choices and defaults (``job.curate`` reads them from
here; the reasons are in the modules named). Standard library and ``job.values`` only, like the rest of ``job.config``."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..values import (
    at_least,
    check_choice,
    parse_cosine,
    parse_near_threshold,
    parse_positive,
    parse_subset,
    parse_weights,
)
from ._keep import keep as _keep
from .model import DEVICES

CURATE_METHODS: tuple[str, ...] = ("auto", "exact", "partition", "index")  # how the k-NN graph is made (curate.graph)
CURATE_K = 10  # neighbours per image in the k-NN graph
CURATE_MIN_K = 4  # uniqueness reads 3 neighbours, FiftyOne's variant skips the nearest: 4
CURATE_PAIR_RECALL = 0.99  # an approximate graph is searched deeper until it holds this share of the near pairs
STILL_METRES = 0.5  # standing still: the ego moved less than this from the standstill's first frame (curate.still)
STILL_COSINE = 0.9  # standing still: and the frame's vector is within this cosine of that frame's (curate.still)
STILL_GAP_S = 1.5  # standing still: and follows the previous frame by at most this many seconds (curate.still)
UNIQUENESS_METHODS: tuple[str, ...] = ("kept", "fiftyone")  # among the kept images, or fiftyone-brain's (curate.scores)
UNIQUENESS_WEIGHTS: tuple[float, ...] = (0.6, 0.3, 0.1)  # FiftyOne Brain's, for the 1st, 2nd, 3rd neighbour


@dataclass(frozen=True)
class CurateConfig:
    """``job curate`` and the curation step of ``job run --curate`` / ``job merge --curate``."""

    enabled: bool = False  # the step in job run / job merge; ``job curate`` runs it regardless
    k: int = CURATE_K
    method: str = "auto"  # how the k-NN graph is made (exact when affordable, else from the run's index)
    near_threshold: str | float = "auto"  # "auto" or a cosine in (0, 1]
    still_metres: float = STILL_METRES
    still_cosine: float = STILL_COSINE
    still_gap_s: float = STILL_GAP_S
    uniqueness: str = "kept"  # among the kept images, or "fiftyone": today's fiftyone-brain on all images
    uniqueness_weights: tuple[float, ...] = UNIQUENESS_WEIGHTS  # one per neighbour, nearest first
    select: int | None = None  # a diverse subset of this many images
    balance: tuple[str, ...] = ()  # metadata columns whose values each get their share of the subset
    shares: str | tuple[tuple[str, str, float], ...] = "proportional"  # or "equal", or given per value (parse_shares)
    labelled: str | None = None  # images labelled already (tokens, paths or ids; a file, local or s3://)
    min_gap_s: float | None = None  # picks of one scene and camera at least this many seconds apart
    export: str | None = None  # the subset as one sample_data_token (or path) a line, for labelling tools
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        at_least("--k", self.k, CURATE_MIN_K)
        check_choice("k-NN method", self.method, CURATE_METHODS)
        _keep(self, near_threshold=parse_near_threshold(self.near_threshold, "--near-threshold"))
        balance, shares, min_gap_s = parse_subset(self.select, self.balance, self.shares, self.labelled,
                                                  self.min_gap_s, self.export)
        _keep(self, still_metres=parse_positive(self.still_metres, "--still-metres", "distance in metres"),
              still_gap_s=parse_positive(self.still_gap_s, "--still-gap-s", "time in seconds"),
              still_cosine=parse_cosine(self.still_cosine, "--still-cosine"),
              uniqueness_weights=parse_weights(self.uniqueness_weights, "--uniqueness-weights"),
              balance=balance, shares=shares, min_gap_s=min_gap_s)
        check_choice("uniqueness", self.uniqueness, UNIQUENESS_METHODS)
        need = len(self.uniqueness_weights) + (1 if self.uniqueness == "fiftyone" else 0)
        if need > self.k:
            raise UsageError(f"--uniqueness {self.uniqueness} with {len(self.uniqueness_weights)} weights reads "
                             f"{need} neighbours; --k {self.k} is too few (use --k {need} or more)")
        at_least("--select", self.select, 1)
        check_choice("device", self.device, DEVICES)
