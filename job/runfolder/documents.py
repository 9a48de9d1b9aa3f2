"""The typed documents a run folder stores, their base and their key names: each index's ``.json``
(:class:`IndexInfo`), the projection summary (:class:`Projection`), the manifest's sections (:class:`Outputs`,
:class:`ModelInfo`, :class:`Counts`). ``manifest.json`` itself is :mod:`job.runfolder.manifest`'s, the curation and
evaluation records :mod:`job.runfolder.records`', ``_STATUS``'s (``StatusDoc``) :mod:`job.runfolder.status_doc`'s.

They are msgspec structs: typed attributes for the code, JSON for the files. JSON key names that differ from the
attribute live only in :data:`JSON_KEYS` (``_STATUS`` excepted: its keys are shared with the instance script); files are read and written only through :mod:`job.runfolder` (the
manifest, the index descriptions) and :mod:`job.status` (``_STATUS``), so a key renamed here is renamed everywhere
(``tests/test_runfolder.py`` proves it). Unknown keys are ignored on reading, so an older reader keeps working on a
newer file of the same schema version.
"""
from __future__ import annotations

from typing import Any, TypeVar

import msgspec

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
    eval: str | None = None


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
    trained_pool: str = "cls"  # the model's trained output: cls (CLIP ViTs) or map (SigLIP's attention pool)
    tokenizer: str = "open_clip"  # where the text tokenizer came from: open_clip, hf-hub:REPO, dir:FOLDER


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
