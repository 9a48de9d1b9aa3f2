"""The records of the later steps, stored in the manifest and beside their files: what ``job curate`` did
(:class:`Curation`: its graph, threshold, uniqueness and subset) and what ``job eval`` scored (:class:`Evaluation`).
Same rules as :mod:`job.runfolder.documents`: typed attributes for the code, key names from ``JSON_KEYS``."""
from __future__ import annotations

from typing import Any

from .documents import Doc


class GraphTrial(Doc):
    """One search effort an approximate k-NN graph was built at, and what it held."""

    effort: str = ""  # partition: lists searched per row; index: its search parameters
    pair_recall: float | None = None  # share of the sampled pairs at cosine >= threshold the graph held
    pairs: int = 0
    threshold: float | None = None  # the near threshold read off the graph at that effort
    recall: float | None = None  # recall@k (measured at the effort kept)


class GraphInfo(Doc):
    """How the k-NN graph of a curation was made (``job.curate.graph``) and how good it is."""

    method: str  # exact | partition | index
    k: int
    n: int
    recall: float  # recall@k against exact search (1.0 for exact): information
    recall_queries: int = 0  # uniformly drawn rows it was measured on (0: exact)
    device: str = "cpu"
    pair_recall: float | None = None  # the gate: share of the pairs at cosine >= pair_threshold the graph holds
    pair_threshold: float | None = None
    pairs: int = 0  # pairs exact search found among the sampled rows
    pair_rows: int = 0  # rows sampled (uniform + those with a neighbour above the threshold)
    target_met: bool = True  # pair recall reached the target
    lists: int | None = None  # partition: its lists and the largest
    largest_list: int | None = None
    partitions: int | None = None  # partition: independent partitions searched, their results merged
    probe: int | None = None  # partition: lists searched per row in each
    search_params: str | None = None  # index: the parameters the graph was searched with
    truth_device: str | None = None  # where the exact search of the recall sample ran
    fallbacks: list[str] = []  # GPU steps that failed and were redone on the CPU
    tuning: list[GraphTrial] = []
    timings: dict[str, float] = {}


class BulkFlankInfo(Doc):
    """The bulk of the graph's edge distances as the ``auto`` rule read it (``job.curate.threshold``)."""

    peak_distance: float  # 1 - cos at the bulk's densest point
    sigma: float  # width of its left flank, decades of 1 - cos
    edges: int  # graph edges read


class ThresholdInfo(Doc):
    """The near-duplicate threshold of a curation and why (``job.curate.threshold``). Entries written by the
    two-Gaussian rule before it read the same (their fit details are not read back)."""

    cosine: float  # pairs at or above this cosine are near duplicates
    rule: str  # one line a person can check
    source: str  # auto | given
    found_mode: bool = False  # auto: at least two images lie below the bulk's reach
    rows_below: int = 0  # images with a graph neighbour at or above the threshold
    edges_below: int = 0
    identical_pairs: int = 0  # graph edges at 1 - cos < 1e-6 (duplicates whatever the rule)
    flank: BulkFlankInfo | None = None


class UniquenessInfo(Doc):
    """How ``scores.parquet``'s uniqueness was computed (``job.curate.scores``)."""

    method: str  # kept | fiftyone
    weights: list[float]
    kept: int | None = None  # kept: the images it was computed among
    researched: int = 0  # kept: images searched again, deeper, for kept neighbours
    short: int = 0  # kept: images still short of kept neighbours after the deepest search
    commit: str | None = None  # fiftyone: the fiftyone-brain commit it follows
    neighbours: str | None = None  # fiftyone: how the centred neighbours were found


class LabelledInfo(Doc):
    """The images labelled before a subset (``--labelled FILE``, ``job.curate.subset``)."""

    file: str
    entries: int  # lines (or rows) of the file
    matched: int  # images of the run they name
    unmatched: int = 0  # entries that name no image of the run (ignored)
    duplicates_avoided: int = 0  # images not picked because they repeat a labelled one


class StratumInfo(Doc):
    """One stratum of a subset: images, labelled, target and quota (``curate.strata``), picks, coverage."""

    stratum: str  # "location=boston-seaport, channel=CAM_FRONT" ("all" without --balance)
    images: int  # unique images (and labelled ones) in it
    labelled: int = 0
    candidates: int = 0  # images it could pick from
    target: float = 0.0  # its share of the picks, before rounding
    quota: int = 0
    picks: int = 0
    radius_cosine: float | None = None  # every image of it has a labelled image or a pick at cosine >= this


class SelectionInfo(Doc):
    """The diverse subset of a curation (``job.curate.select``, ``job.curate.subset``)."""

    n: int
    balance: list[str] = []
    quotas: dict[str, int] = {}  # picks per stratum (with balance)
    radius_cosine: float | None = None  # every candidate has a pick (or a labelled image) at cosine >= this
    export: str | None = None
    candidates: int | None = None  # the images it was picked among (not duplicates, not labelled)
    dims: int | None = None  # dimensions of the greedy passes (a random projection above a budget)
    asked: int | None = None  # --select N (more than n when --min-gap-s left too few images)
    shares: str = "proportional"  # proportional | equal | given
    given_shares: dict[str, dict[str, float]] = {}  # --shares COLUMN=VALUE:SHARE: column -> value -> share
    radius_exact: bool = True  # False: the radius is a bound (measured against the projection's nearest pick)
    labelled: LabelledInfo | None = None
    min_gap_s: float | None = None
    shortfall: int = 0  # picks that no image was left for (--min-gap-s)
    strata: list[StratumInfo] = []  # coverage per stratum
    timings: dict[str, float] = {}


class Curation(Doc):
    """What ``job curate`` did (``curation/``): the k-NN graph, the near threshold and why, duplicates by kind, the
    subset, timings. Entries written before these parts were typed (plain dicts with the same keys) read the same;
    their graph's ``params`` (search effort) is not read back."""

    n: int
    k: int
    graph: GraphInfo
    threshold: ThresholdInfo
    still_metres: float | None  # None: the run has no ego pose (not nuScenes): no `still` step
    duplicates: dict[str, int]  # per kind: exact, still, near
    unique: int  # images that repeat no other
    still_cosine: float | None = None  # the still rule's own cosine and time gap (None: no `still` step)
    still_gap_s: float | None = None
    uniqueness: UniquenessInfo | None = None
    selection: SelectionInfo | None = None
    files: dict[str, str] = {}  # name -> path relative to the run folder
    timings: dict[str, float] = {}


class Score(Doc):
    """One task over one vector column, averaged over its queries (``job.eval``): MAP@100, R-Precision and P@5 with
    SearchAD's semantics (``job.eval.metrics``), and what a random ranking scores on the same queries."""

    task: str  # text | image | scene | ego (text queries of scene words / ego motion) | searchad-text | searchad-image
    column: str  # the embeddings column the queries searched
    queries: int
    map_at_100: float
    r_precision: float
    p_at_5: float
    chance_map_at_100: float = 0.0
    chance_r_precision: float = 0.0
    chance_p_at_5: float = 0.0


class Evaluation(Doc):
    """``eval/eval.json`` and the manifest's ``eval``: how well the run's vectors retrieve what nuScenes' own
    annotations say an image shows (``job eval``, the eval step of ``job run`` / ``job merge``)."""

    images: int  # images scored: the run's keyframe camera images found in the annotation tables
    rows: int  # the run's rows
    labels: dict[str, Any]  # version, tables read from, min_visibility, images with a box, images per category
    scores: list[Score]
    settings: dict[str, Any] = {}  # min_positives, image_queries, seed, the prompt table (where from, sha256)
    selection: dict[str, Any] | None = None  # a curated run's subset: rare categories captured vs random subsets
    searchad: dict[str, Any] | None = None  # ``job eval --searchad``: SearchAD's protocol on its nuScenes part
    files: dict[str, str] = {}  # name -> path relative to the run folder
    timings: dict[str, float] = {}

    def score(self, task: str, column: str) -> Score | None:
        """The averaged score of ``task`` over ``column``, if it was asked."""
        return next((s for s in self.scores if s.task == task and s.column == column), None)
