"""Config: the one frozen object every stage reads, parsed once from the command line."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .errors import UsageError

CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
POOLS: tuple[str, ...] = ("mean", "cls")
TEXT_VECTORS: tuple[str, ...] = ("cls", "none")  # with --pool mean, also store the CLS output for text queries
RESIZE_MODES: tuple[str, ...] = ("pad", "crop", "squash")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
DECODERS: tuple[str, ...] = ("auto", "cpu", "gpu")
INDEX_TYPES: tuple[str, ...] = ("auto", "flat", "ivfpq", "hnsw")
REFINE_CHOICES: tuple[str, ...] = ("SQ8", "SQfp16", "Flat", "none")
UMAP_BACKENDS: tuple[str, ...] = ("auto", "umap-learn", "cuml")
N_NEIGHBORS = 15  # umap-learn's defaults
MIN_DIST = 0.1
EVAL_QUERIES = 1_000  # held-out queries: half tune the search parameters, half measure recall

LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openclip"
DEFAULT_RESIZE_MODE = "pad"
DEFAULT_SOURCE = "s3://motional-nuscenes/public/v1.0/v1.0-mini.tgz"


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a one-line UsageError listing them."""
    choices = list(choices)
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class ModelConfig:
    """Which network and weights embed the images, and how its output is pooled."""

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    pool: str = "mean"
    text_vectors: str = "cls"  # with pool mean: "cls" also stores the CLS-pooled vector (embedding_cls); "none" not
    image_size: int | None = None  # None: the model's own input size
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    compile: bool = False
    cache_dir: str | None = None
    weights_cache: str | None = None  # e.g. s3://bucket/cache/weights: tag weights fetched once per account


@dataclass(frozen=True)
class DecodeConfig:
    """How JPEG bytes become uint8 model inputs."""

    resize_mode: str = DEFAULT_RESIZE_MODE
    workers: int | None = None  # None: one per CPU core; 0: decode in the main process
    decoder: str = "auto"
    batch_size: int = 64


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


@dataclass(frozen=True)
class OutputConfig:
    """Where results go and how they are committed."""

    out: str = "runs/latest"  # a run folder, or an embeddings path ending in .parquet (runfolder.RunLayout)
    shard_size: int = 4096
    shard_seconds: float = 120.0
    npy: bool = False
    overwrite: bool = False
    publish: str | None = None


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


@dataclass(frozen=True)
class IndexConfig:
    """Faiss index options (``job index`` and the index step of ``job run``)."""

    index_type: str = "auto"
    factory: str | None = None
    max_memory: str | None = None
    target_recall: float = 0.95
    enabled: bool = True
    overrides: IndexOverrides = field(default_factory=IndexOverrides)
    embeddings: str | None = None  # ``job index --embeddings``
    index_out: str | None = None  # ``job index --index-out``


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


@dataclass(frozen=True)
class ServeConfig:
    """``job serve``: the search page for one run, on this address."""

    host: str = "127.0.0.1"
    port: int = 8000


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
    log_level: str = "INFO"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def embedding_identity(self) -> dict[str, Any]:
        """The options that change the vectors; a resumed run must match them exactly."""
        m, d, s = self.model, self.decode, self.source
        return {
            "model": m.model,
            "pretrained": m.pretrained,
            "pool": m.pool,
            "text_vectors": "cls" if m.pool == "mean" and m.text_vectors == "cls" else None,  # adds a column
            "image_size": m.image_size,
            "resize_mode": d.resize_mode,
            "sources": list(s.sources),
            "channels": list(s.channels),
            "keyframes_only": s.keyframes_only,
            "scenes": list(s.scenes),
            "limit": s.limit,
            **({"shard": list(s.shard)} if s.shard else {}),
        }


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N) with 0 <= I < N; a one-line UsageError otherwise.

    I may name an environment variable, ``$AWS_BATCH_JOB_ARRAY_INDEX/N``: read here, because AWS Batch (like
    Slurm's ``$SLURM_ARRAY_TASK_ID`` or a Kubernetes indexed job's ``$JOB_COMPLETION_INDEX``) hands each child of an
    array its index in the environment and runs the command without a shell to expand it.
    """
    i, sep, n = text.strip().partition("/")
    if i.startswith("$"):
        var = i[1:].strip("{}")
        if not var or os.environ.get(var) is None:
            raise UsageError(f"--shard {text!r}: the environment variable {var or '?'} is not set; valid: I/N, or $VAR/N "
                             "where VAR holds I (AWS Batch sets AWS_BATCH_JOB_ARRAY_INDEX in each array child)")
        i = os.environ[var]
    if not sep or not i.strip().isdigit() or not n.strip().isdigit():
        raise UsageError(f"--shard {text!r} is not I/N; valid: two integers with 0 <= I < N, e.g. 0/4")
    index, count = int(i), int(n)
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text!r} is out of range; valid: 0 <= I < N and N >= 1, e.g. 0/{max(count, 1)}")
    return index, count


def split_list(values: Sequence[str] | None) -> tuple[str, ...]:
    """Flatten repeated and comma-separated CLI values: ``["a,b", "c"] -> ("a", "b", "c")``."""
    out: list[str] = []
    for v in values or ():
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return tuple(out)


_PARAMS_RE = re.compile(r"^\s*[A-Za-z_]+\s*=\s*\d+\s*(,\s*[A-Za-z_]+\s*=\s*\d+\s*)*$")
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_memory(value: str | int | None) -> int | None:
    """``4G``, ``512M``, ``1.5GiB`` or a byte count -> bytes; None stays None."""
    if value is None or isinstance(value, int):
        return value
    m = _MEMORY_RE.match(value)
    if not m:
        raise UsageError(f"--max-memory {value!r} is not a size; valid forms: 4G, 512M, 1.5GiB, 1000000")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index((m.group(2) or "b").lower()))


def _at_least(option: str, value: float | None, minimum: float) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{option} {value!r} must be {minimum!r} or more")


def _check_index(ix: IndexConfig) -> None:
    check_choice("index type", ix.index_type, INDEX_TYPES)
    if not 0.0 < ix.target_recall <= 1.0:
        raise UsageError(f"--target-recall {ix.target_recall} must be in (0, 1]")
    parse_memory(ix.max_memory)
    ov = ix.overrides
    for option, value in (("--nlist", ov.nlist), ("--pq-m", ov.pq_m), ("--pq-bits", ov.pq_bits),
                          ("--hnsw-m", ov.hnsw_m), ("--ef-construction", ov.ef_construction),
                          ("--train-size", ov.train_size), ("--queries", ov.queries)):
        _at_least(option, value, 1)
    if ov.refine is not None:
        check_choice("--refine", ov.refine, REFINE_CHOICES)
    _check_search_params(ov.search_params)


def _check_search_params(text: str | None) -> None:
    if text is not None and not _PARAMS_RE.match(text):
        raise UsageError(f"--search-params {text!r} is not NAME=INT[,NAME=INT…]; "
                         "e.g. efSearch=128 or nprobe=32,k_factor=8")


def _check_filters(s: SearchConfig) -> None:
    """Filter options: known channels, and a ``--where`` that parses as one SQL condition (columns: at search)."""
    for ch in s.channels:
        check_choice("--channel", ch, CAMERA_CHANNELS)
    if s.where is not None:
        from .filters import check_syntax

        check_syntax(s.where)


def _check_project(pc: ProjectConfig) -> None:
    _at_least("--fit-sample", pc.fit_sample, 2)
    _at_least("--n-neighbors", pc.n_neighbors, 2)
    _at_least("--min-dist", pc.min_dist, 0.0)
    _at_least("--n-epochs", pc.n_epochs, 1)
    check_choice("UMAP backend", pc.backend, UMAP_BACKENDS)


def validate(cfg: JobConfig) -> JobConfig:
    """Check every option of ``cfg`` at once (UsageError naming the bad value); returns ``cfg``.

    The CLI calls this before anything is read or written, so ``job run --fit-sample 0`` fails at
    once instead of after the embedding.
    """
    m, d, o, s = cfg.model, cfg.decode, cfg.output, cfg.search
    check_choice("pool", m.pool, POOLS)
    check_choice("--text-vectors", m.text_vectors, TEXT_VECTORS)
    check_choice("device", m.device, DEVICES)
    check_choice("precision", m.precision, PRECISIONS)
    _at_least("--image-size", m.image_size, 1)
    check_choice("resize mode", d.resize_mode, RESIZE_MODES)
    check_choice("decoder", d.decoder, DECODERS)
    _at_least("--batch-size", d.batch_size, 1)
    _at_least("--workers", d.workers, 0)
    for ch in cfg.source.channels:
        check_choice("channel", ch, CAMERA_CHANNELS)
    _at_least("--limit", cfg.source.limit, 1)
    if cfg.source.shard is not None:
        parse_shard("{}/{}".format(*cfg.source.shard))
    _at_least("--shard-size", o.shard_size, 1)
    if not o.shard_seconds > 0:
        raise UsageError(f"--shard-seconds {o.shard_seconds!r} must be more than 0")
    _check_index(cfg.index)
    _check_project(cfg.project)
    _at_least("-k", s.k, 1)
    _check_search_params(s.search_params)
    check_choice("device", s.device, DEVICES)
    _check_filters(s)
    if not 1 <= cfg.serve.port <= 65535:
        raise UsageError(f"--port {cfg.serve.port} must be in 1..65535")
    check_choice("log level", cfg.log_level, LOG_LEVELS)
    return cfg
