"""The typed documents a run folder stores: ``manifest.json`` (:class:`Manifest`), each index's ``.json``
(:class:`IndexInfo`), the projection summary (:class:`Projection`) and ``_STATUS`` (:class:`StatusDoc`).

They are msgspec structs: typed attributes for the code, JSON for the files. JSON key names that differ from the
attribute live only in :data:`JSON_KEYS` (``_STATUS`` excepted: its keys are shared with the instance script); files are read and written only through :mod:`job.runfolder` (the
manifest, the index descriptions) and :mod:`job.status` (``_STATUS``), so a key renamed here is renamed everywhere
(``tests/test_runfolder.py`` proves it). Unknown keys are ignored on reading, so an older reader keeps working on a
newer file of the same schema version.
"""
from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from ..config import ModelConfig
from ..errors import DataError

# 3: parts named after the attempt that wrote them (part-NNNNN-ATTEMPT), the content_hash column, typed index
# descriptions. Version 2 folders read the same (their parts have no attempt id, their rows no hash).
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)

# Attribute name -> JSON key, for the keys whose JSON spelling differs from the attribute. Readers use attributes
# only, so a key can be renamed here alone.
JSON_KEYS: dict[str, str] = {
    "failure_reasons": "failure_reasons_this_attempt",
    "recall_at_1": "recall@1",
    "recall_at_10": "recall@10",
    "size_bytes": "bytes",
}


class Typed(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Base of every stored document: keyword-only, unknown keys ignored on reading."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with the stored key names."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class Doc(Typed, rename=JSON_KEYS):
    """Base of the run folder's own documents and their sections (JSON keys from JSON_KEYS)."""


T = TypeVar("T", bound=Typed)


def encode(doc: Typed) -> bytes:
    """Indented, key-sorted JSON bytes of a document."""
    return msgspec.json.format(msgspec.json.encode(doc, order="sorted"), indent=2) + b"\n"


def decode(data: bytes | Any, kind: type[T], where: str, what: str) -> T:
    """A document of type ``kind`` from JSON bytes (or from what JSON gave); a DataError naming ``where`` and the
    fault otherwise (``what`` says what it should have been)."""
    try:
        raw = msgspec.json.decode(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    except msgspec.DecodeError as exc:
        raise DataError(f"{where} is not valid JSON ({exc})") from None
    try:
        return msgspec.convert(raw, type=kind, strict=False)
    except msgspec.ValidationError as exc:
        raise DataError(f"{where} is not a valid {what} ({exc})") from None


# ------------------------------------------------------------------------------------------------ the manifest


class Outputs(Doc):
    """File names of the output's parts, relative to the run folder (``RunLayout.rel``)."""

    embeddings: str
    failures: str
    state: str
    thumbnails: str | None = None
    npy: str | None = None
    index: str | None = None
    text_index: str | None = None
    umap: str | None = None
    curation: str | None = None


class ModelInfo(Doc):
    """The model that made the vectors, as loaded."""

    name: str
    pretrained: str
    weights_sha256: str
    pool: str
    image_size: int
    embed_dim: int
    mean: list[float] = []
    std: list[float] = []
    interpolation: str = "bicubic"
    device: str = "cpu"
    precision: str = "fp32"  # what the encoder ran in the end (after any fallback)
    compiled: bool = False
    fallbacks: list[str] = []  # fast paths that failed and what took over (job.embed.fallback)
    load_seconds: float = 0.0


class Counts(Doc):
    """Images seen, embedded and failed (all attempts), and this attempt's share."""

    seen: int
    embedded: int
    failed: int
    embedded_this_attempt: int = 0
    failed_this_attempt: int = 0
    resumed_from_earlier_attempts: int = 0
    duplicate_paths_skipped: int = 0


class IndexInfo(Doc):
    """An index's ``.json`` beside it (``index/index.json``, ``index/text.json``): what was built, why, and the recall
    measured on held-out queries."""

    index: str  # the index file's name
    embeddings: str = ""
    column: str = "embedding"
    type: str = "flat"  # flat | hnsw | ivfpq | factory
    factory: str = ""
    metric: str = "inner_product"
    params: dict[str, Any] = {}
    train_size: int = 0
    search_params: str = ""
    reason: str = ""
    n: int = 0
    d: int = 0
    ids_sha256: str = ""
    size_bytes: int = 0
    estimated_memory_bytes: int = 0
    build_seconds: float = 0.0
    timings: dict[str, float] = {}
    device: str = "cpu"  # each device with its steps: "gpu:0 (truth, train, add); cpu (tune)" (job.index._gpu)
    devices: dict[str, str] = {}  # step (truth, train, add, tune) -> gpu:0 | cpu
    device_notes: dict[str, str] = {}  # step -> why it ran on the CPU although a GPU was allowed
    fallbacks: list[str] = []  # GPU steps that failed and were redone on the CPU
    threads: int = 1
    recall_at_1: float | None = None
    recall_at_10: float | None = None
    recall_queries: int = 0
    recall_method: str = ""
    qps: float = 0.0
    target_recall: float = 0.95
    target_met: bool = True
    tuning: list[dict[str, Any]] = []
    faiss_version: str = ""
    created: str = ""


class Projection(Doc):
    """How the 2-D map (``umap2d.parquet``) was made."""

    n: int
    method: str  # umap | umap fit on a sample + transform | pca (fewer than 4 points)
    backend: str
    fit_sample: int
    metric: str = "cosine"
    n_neighbors: int = 15
    min_dist: float = 0.1
    n_epochs: int | None = None
    seed: int = 0
    fit_seconds: float | None = None
    transform_seconds: float | None = None
    path: str = ""
    seconds: float = 0.0
    peak_memory_mb: float = 0.0


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


class SelectionInfo(Doc):
    """The diverse subset of a curation (``job.curate.select``)."""

    n: int
    balance: list[str] = []
    quotas: dict[str, int] = {}  # picks per stratum (with balance)
    radius_cosine: float | None = None  # every candidate has a pick at cosine >= this
    export: str | None = None
    candidates: int | None = None  # the images it was picked among (not duplicates)
    dims: int | None = None  # dimensions of the greedy passes (a random projection above a budget)


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


class Manifest(Doc):
    """``manifest.json``: written last, and only when every image is accounted for, so its presence means the output
    is complete (``status`` is "succeeded"; how an attempt failed or stopped is ``_STATUS``'s to say)."""

    status: str
    started: str
    finished: str
    host: str
    run_dir: str
    outputs: Outputs
    config: dict[str, Any]
    model: ModelInfo
    counts: Counts
    source: dict[str, Any] = {}
    failure_reasons: dict[str, int] = {}
    timings: dict[str, float] = {}
    images_per_s: float = 0.0
    decoder: dict[str, Any] = {}
    versions: dict[str, str] = {}
    index: IndexInfo | None = None
    text_index: IndexInfo | None = None
    projection: Projection | None = None
    curation: Curation | None = None
    published: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def model_config(self) -> ModelConfig:
        """The ModelConfig that made the vectors (to load the same model again)."""
        fields = set(ModelConfig.__dataclass_fields__)
        return ModelConfig(**{k: v for k, v in (self.config.get("model") or {}).items() if k in fields})

    @property
    def resize_mode(self) -> str:
        return str((self.config.get("decode") or {}).get("resize_mode", "pad"))

    @property
    def sources(self) -> list[str]:
        return list((self.config.get("source") or {}).get("sources") or [])

    def to_json(self) -> bytes:
        """Indented, key-sorted JSON."""
        return encode(self)


# ------------------------------------------------------------------------------------------------ _STATUS


class PhaseMark(Typed):
    """A phase and when it began."""

    phase: str
    at: str


class Progress(Typed):
    """Embedding progress: done of total (exact, or ``total_estimated`` for a stream), images/s, ETA."""

    done: int = 0
    total: int | None = None
    failed: int = 0
    images_per_s: float = 0.0
    eta_s: int | None = None
    at: str = ""
    total_estimated: int | None = None


class Previous(Typed):
    """The outcome of the attempt before this one."""

    status: str | None = None
    reason: str | None = None
    phase: str | None = None
    updated_at: str | None = None


class Waiting(Typed):
    """A writer that found the output held by a live one and left (``status_rules`` rule 5)."""

    at: str
    host: str
    reason: str


class StatusDoc(Typed):
    """``_STATUS``: what a run is doing now and why it stopped (``job.status``; the merge rules: ``job.status.rules``).

    Its keys are a contract with the instance script (``cdk/scripts/user_data.sh`` via ``job/status/rules.py``), so
    they are spelled as stored and never renamed."""

    status: str
    reason: str = ""
    schema: int = 1
    started_at: str = ""
    attempt: str = ""
    phase: str | None = None
    phases: list[PhaseMark] = []
    progress: Progress | None = None
    previous: Previous | None = None
    shard: list[int] | None = None
    updated_at: str | None = None
    waiting: Waiting | None = None
    # written by the instance script (cdk/scripts/user_data.sh)
    run_id: str | None = None
    run_uri: str | None = None
    instance_id: str | None = None
    instance_type: str | None = None
    market: str | None = None
    data_source: str | None = None  # how the instance reached the dataset: the s3fs mount, or S3 directly and why
