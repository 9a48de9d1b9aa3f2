"""Config: the one frozen object every stage reads, parsed once from the command line (``model``: the model's section,
its choices and defaults; ``curate``: curation's; ``evaluation``: the eval step's; ``compare``: ``job compare``'s
variants).

Every section checks itself when it is built (``__post_init__``), so an invalid one cannot exist: the CLI builds a
``JobConfig`` before anything is read or written, and a bad value stops the command there with one line (exit 2).
The values' grammars (sizes, channels, ``I/N``, search parameters) live in :mod:`job.values`, one parser each.

May import: ``job.errors`` and ``job.values`` only, and the standard library (the CDK app imports this package).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..values import (
    CAMERA_CHANNELS,
    at_least,
    check_choice,
    check_where,
    in_range,
    parse_channels,
    parse_search_params,
    parse_shard,
    parse_size,
    split_list,
)
from ._keep import keep as _keep
from .compare import VARIANT_KEYS, CompareConfig, Variant  # noqa: F401  (re-exported: job.config's face)
from .curate import (  # noqa: F401  (re-exported: job.config's face)
    CURATE_K,
    CURATE_METHODS,
    CURATE_MIN_K,
    CURATE_PAIR_RECALL,
    STILL_COSINE,
    STILL_GAP_S,
    STILL_METRES,
    UNIQUENESS_METHODS,
    UNIQUENESS_WEIGHTS,
    CurateConfig,
)
from .evaluation import MIN_VISIBILITY, VISIBILITY_LEVELS, EvalConfig  # noqa: F401  (re-exported: job.config's face)
from .model import (  # noqa: F401  (re-exported: job.config's face)
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_RESIZE_MODE,
    DEVICES,
    POOLS,
    PRECISIONS,
    RESIZE_MODES,
    TEXT_VECTORS,
    TOKENIZER_ENV,
    TRAINED_POOLS,
    ModelConfig,
)

DECODERS: tuple[str, ...] = ("auto", "cpu", "gpu")
INDEX_TYPES: tuple[str, ...] = ("auto", "flat", "ivfpq", "hnsw")
REFINE_CHOICES: tuple[str, ...] = ("SQ8", "SQfp16", "Flat", "none")
UMAP_BACKENDS: tuple[str, ...] = ("auto", "umap-learn", "cuml")
N_NEIGHBORS = 15  # umap-learn's defaults
MIN_DIST = 0.1
EVAL_QUERIES = 1_000  # held-out queries: half tune the search parameters, half measure recall

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")

DEFAULT_SOURCE = "s3://motional-nuscenes/public/v1.0/v1.0-mini.tgz"
# --lease-timeout: a writer's lease without a heartbeat this long is stale (job.runfolder.lease); the instance script's
# LEASE_TIMEOUT_S default is the same number (tests/test_cdk_lint.py)
LEASE_TIMEOUT_S = 600.0


def _canonical_params(text: str | None) -> str | None:
    """``--search-params`` checked and written one way (``" efSearch = 64"`` → ``"efSearch=64"``); None stays None."""
    if text is None:
        return None
    return ",".join(f"{k}={v}" for k, v in parse_search_params(text).items())


@dataclass(frozen=True)
class DecodeConfig:
    """How JPEG bytes become uint8 model inputs."""

    resize_mode: str = DEFAULT_RESIZE_MODE
    workers: int | None = None  # None: one per CPU core; 0: decode in the main process
    decoder: str = "auto"
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_choice("resize mode", self.resize_mode, RESIZE_MODES)
        check_choice("decoder", self.decoder, DECODERS)
        at_least("--batch-size", self.batch_size, 1)
        at_least("--workers", self.workers, 0)


@dataclass(frozen=True)
class SourceConfig:
    """Where the images come from and which of them to embed."""

    sources: tuple[str, ...] = (DEFAULT_SOURCE,)
    anon: bool | None = None  # None: anonymous only for known public buckets
    nuscenes_meta: str | None = None
    channels: tuple[str, ...] = CAMERA_CHANNELS
    keyframes_only: bool = True
    scenes: tuple[str, ...] = ()
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (I, N): embed the I-th of N deterministic parts (``--shard I/N``)

    def __post_init__(self) -> None:
        channels = parse_channels(self.channels, "channel")
        if not channels:
            raise UsageError(f"no camera channel selected; valid choices: {', '.join(CAMERA_CHANNELS)}")
        _keep(self, sources=tuple(self.sources), channels=channels, scenes=split_list(self.scenes),
              shard=None if self.shard is None else parse_shard(self.shard))
        at_least("--limit", self.limit, 1)


@dataclass(frozen=True)
class OutputConfig:
    """Where results go and how they are committed (a *part*: one parquet file of each table, written atomically)."""

    out: str = "runs/latest"  # a run folder, or an embeddings path ending in .parquet (runfolder.RunLayout)
    part_size: int = 4096  # ``--shard-size``: images per committed part
    part_seconds: float = 120.0  # ``--shard-seconds``: commit a part at least this often
    npy: bool = False
    overwrite: bool = False
    publish: str | None = None
    lease_timeout: float = LEASE_TIMEOUT_S  # seconds without a heartbeat after which an output's lease is stale (job.runfolder.lease)

    def __post_init__(self) -> None:
        at_least("--shard-size", self.part_size, 1)
        in_range("--shard-seconds", self.part_seconds, 0.0, 7 * 86400.0, low_open=True)
        in_range("--lease-timeout", self.lease_timeout, 0.0, 7 * 86400.0, low_open=True)


@dataclass(frozen=True)
class IndexOverrides:
    """Parameters ``job index`` can set by hand; None means derived from n and d."""

    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    refine: str | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None
    train_size: int | None = None
    search_params: str | None = None  # fixed search parameters instead of tuning, e.g. "efSearch=128"
    queries: int = EVAL_QUERIES
    seed: int = 0

    def __post_init__(self) -> None:
        for option, value in (("--nlist", self.nlist), ("--pq-m", self.pq_m), ("--pq-bits", self.pq_bits),
                              ("--hnsw-m", self.hnsw_m), ("--ef-construction", self.ef_construction),
                              ("--train-size", self.train_size), ("--queries", self.queries)):
            at_least(option, value, 1)
        if self.pq_bits is not None and self.pq_bits > 16:
            raise UsageError(f"--pq-bits {self.pq_bits} must be in 1..16")
        if self.refine is not None:
            check_choice("--refine", self.refine, REFINE_CHOICES)
        _keep(self, search_params=_canonical_params(self.search_params))


@dataclass(frozen=True)
class IndexConfig:
    """Faiss index options (``job index`` and the index step of ``job run``)."""

    index_type: str = "auto"
    factory: str | None = None
    max_memory: int | None = None  # bytes (``--max-memory 4G``: ``values.parse_size``); None: half the free memory
    target_recall: float = 0.95
    enabled: bool = True
    overrides: IndexOverrides = field(default_factory=IndexOverrides)
    embeddings: str | None = None  # ``job index --embeddings``
    index_out: str | None = None  # ``job index --index-out``
    device: str = "auto"  # Faiss on the GPU: auto (when faiss.get_num_gpus() > 0), cpu (never), cuda (required)

    def __post_init__(self) -> None:
        check_choice("index type", self.index_type, INDEX_TYPES)
        check_choice("device", self.device, DEVICES)
        in_range("--target-recall", self.target_recall, 0.0, 1.0, low_open=True)
        _keep(self, max_memory=parse_size(self.max_memory))  # "4G" from Python callers too


@dataclass(frozen=True)
class SearchConfig:
    """``job search``: where to search and what (one of text, image, id)."""

    run: str | None = None
    index: str | None = None
    embeddings: str | None = None
    text: str | None = None
    image: str | None = None
    id: int | None = None
    k: int = 10
    device: str = "auto"
    search_params: str | None = None
    json: bool = False
    where: str | None = None  # SQL over the metadata columns (``--where``), ANDed with the shorthands below
    channels: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()  # prefixes: "singapore" keeps every singapore-* location
    scenes: tuple[str, ...] = ()
    night: bool | None = None  # None: either; True/False: the scene description says night / does not
    rain: bool | None = None

    def __post_init__(self) -> None:
        at_least("-k", self.k, 1)
        check_choice("device", self.device, DEVICES)
        _keep(self, search_params=_canonical_params(self.search_params), channels=parse_channels(self.channels, "--channel"),
              locations=split_list(self.locations), scenes=split_list(self.scenes),
              # DuckDB's parser: the columns are checked at search time
              where=None if self.where is None else check_where(self.where))


@dataclass(frozen=True)
class ServeConfig:
    """``job serve``: the search page for one run, on this address."""

    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        in_range("--port", self.port, 1, 65535)


@dataclass(frozen=True)
class StatusConfig:
    """``job status``: which run, how often to refresh, how much of the instance's log."""

    run: str | None = None
    watch: float | None = None  # seconds between refreshes; None: print once
    lines: int = 10
    json: bool = False

    def __post_init__(self) -> None:
        if self.watch is not None:
            in_range("--watch", self.watch, 0.0, 86400.0, low_open=True)
        at_least("--lines", self.lines, 1)


@dataclass(frozen=True)
class ProjectConfig:
    """UMAP projection options (``job project`` and the projection step of ``job run``)."""

    enabled: bool = True
    fit_sample: int = 100_000
    thumbnails: bool = False
    seed: int = 0
    n_neighbors: int = N_NEIGHBORS
    min_dist: float = MIN_DIST
    n_epochs: int | None = None  # None: umap-learn's default (200 above 10k points, 500 below)
    backend: str = "auto"

    def __post_init__(self) -> None:
        at_least("--fit-sample", self.fit_sample, 2)
        at_least("--n-neighbors", self.n_neighbors, 2)
        at_least("--min-dist", self.min_dist, 0.0)
        at_least("--n-epochs", self.n_epochs, 1)
        check_choice("UMAP backend", self.backend, UMAP_BACKENDS)


@dataclass(frozen=True)
class JobConfig:
    """Everything one invocation needs; built once by the CLI and handed to the stages."""

    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    log_level: str = "INFO"
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("log level", self.log_level, LOG_LEVELS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def embedding_identity(self) -> dict[str, Any]:
        """The options that change the vectors; a resumed run must match them exactly."""
        m, d, s = self.model, self.decode, self.source
        return {
            # the embeddings' columns (content_hash since 3, embedding_cls renamed embedding_trained in 4): parts of
            # another layout do not mix
            "table": 4,
            "model": m.model,
            "pretrained": m.pretrained,
            "pool": m.pool,
            "text_vectors": m.text_vectors if m.pool == "mean" else None,  # "trained" adds a column
            "image_size": m.image_size,
            "resize_mode": d.resize_mode,
            "sources": list(s.sources),
            "channels": list(s.channels),
            "keyframes_only": s.keyframes_only,
            "scenes": list(s.scenes),
            "limit": s.limit,
            **({"shard": list(s.shard)} if s.shard else {}),
        }
