"""``manifest.json``'s document (:class:`Manifest`): the run's outputs, model, counts and every later step's record.
Same rules as :mod:`job.runfolder.documents`."""
from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from .documents import SCHEMA_VERSION, Counts, Doc, IndexInfo, ModelInfo, Outputs, Projection, encode
from .records import Curation, Evaluation


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
    eval: Evaluation | None = None
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
