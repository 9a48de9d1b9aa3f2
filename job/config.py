"""Config: the one frozen object every stage reads, parsed once from the command line."""
from __future__ import annotations

import dataclasses
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
RESIZE_MODES: tuple[str, ...] = ("pad", "crop", "squash")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
DECODERS: tuple[str, ...] = ("auto", "cpu", "gpu")
INDEX_TYPES: tuple[str, ...] = ("auto", "flat", "ivfpq", "hnsw")
REFINE_CHOICES: tuple[str, ...] = ("SQ8", "SQfp16", "Flat", "none")
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
    image_size: int | None = None  # None: the model's own input size
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    compile: bool = False
    cache_dir: str | None = None


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


@dataclass(frozen=True)
class OutputConfig:
    """Where results go and how they are committed."""

    run_dir: str = "runs/latest"
    embeddings_name: str = "embeddings.parquet"
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


@dataclass(frozen=True)
class ProjectConfig:
    """UMAP projection options (``job project`` and the projection step of ``job run``)."""

    enabled: bool = True
    fit_sample: int = 100_000
    thumbnails: bool = False
    seed: int = 0


@dataclass(frozen=True)
class JobConfig:
    """Everything one invocation needs; built once by the CLI and handed to the stages."""

    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
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
            "image_size": m.image_size,
            "resize_mode": d.resize_mode,
            "sources": list(s.sources),
            "channels": list(s.channels),
            "keyframes_only": s.keyframes_only,
            "scenes": list(s.scenes),
            "limit": s.limit,
        }


def split_list(values: Sequence[str] | None) -> tuple[str, ...]:
    """Flatten repeated and comma-separated CLI values: ``["a,b", "c"] -> ("a", "b", "c")``."""
    out: list[str] = []
    for v in values or ():
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return tuple(out)
