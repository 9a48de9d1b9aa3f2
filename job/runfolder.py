"""The run-folder contract: where each output of a run lives and the typed manifest (tables: :mod:`job.tables`).

A run folder (local or ``s3://``) holds one or more *outputs*. The default output's files have plain names;
``job embed --out DIR/a.parquet`` makes an output whose sidecars are named after it, so any number of
outputs live side by side and ``--overwrite`` of one never touches another::

    default output (stem "embeddings")       output "a" (--out DIR/a.parquet)
    embeddings.parquet/part-00000.parquet    a.parquet/part-00000.parquet     one row per embedded image
    failures.parquet/part-00000.parquet      a.failures.parquet/...           path, reason
    thumbnails.parquet/part-00000.parquet    a.thumbnails.parquet/...         id, path, jpeg (--thumbnails)
    _run.json                                a._run.json                      vector-shaping options (resume check)
    embeddings.npy                           a.npy                            with --npy
    index/index.faiss + index.json           a.index/...                      Faiss index
    index/text.faiss + text.json             a.index/text.faiss + text.json   index over the text-query vectors
    index/text_queries.npy                   a.index/text_queries.npy         prompts encoded by the text tower
    umap2d.parquet                           a.umap2d.parquet                 id, x, y
    manifest.json                            a.manifest.json                  written last: the run is complete

Everything else reads a run through :func:`open_run`/:class:`Manifest`; JSON key names live only here.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import msgspec

from . import fsutil
from .config import ModelConfig
from .errors import DataError, UsageError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DEFAULT_STEM = "embeddings"
INDEX_FILE = "index.faiss"
TEXT_INDEX_FILE = "text.faiss"  # beside INDEX_FILE: the index over the vectors text queries search
TEXT_QUERIES_FILE = "text_queries.npy"  # beside it: text-tower vectors of prompts, the queries that tune it
SHARDS_DIR = "shards"
PARQUET = ".parquet"

# Attribute name -> JSON key, for the few keys whose JSON spelling differs from the attribute. Readers use
# attributes only, so a key can be renamed here alone (tests/test_runfolder.py proves it).
MANIFEST_KEYS: dict[str, str] = {"failure_reasons": "failure_reasons_this_attempt"}


def path_id(path: str) -> int:
    """Stable non-negative int64 id of a relative image path.

    Ids depend only on the path, so the same image gets the same id whichever source (folder,
    ``s3://`` prefix, ``.tgz`` stream) or order delivered it, and across resumed runs.
    """
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class RunLayout:
    """Where each file of one output of a run lives (see the module docstring)."""

    run_dir: str
    stem: str = DEFAULT_STEM

    @classmethod
    def for_output(cls, out: str) -> RunLayout:
        """``--out``: a run folder, or an embeddings path ending in ``.parquet`` (its folder is the run folder)."""
        out = out.rstrip("/")
        if out.endswith(PARQUET):
            parent, _, name = out.rpartition("/")
            return cls(parent or ".", name[: -len(PARQUET)])
        return cls(out)

    @classmethod
    def for_run(cls, out: str, shard: tuple[int, int] | None = None) -> RunLayout:
        """Where a run writes: ``--out``, or its ``shards/I`` folder with ``--shard I/N``."""
        layout = cls.for_output(out)
        return layout.shard(shard[0]) if shard else layout

    def _side(self, default: str, suffix: str) -> str:
        name = default if self.stem == DEFAULT_STEM else f"{self.stem}.{suffix}"
        return fsutil.join(self.run_dir, name)

    @property
    def embeddings_name(self) -> str:
        return self.stem + PARQUET

    @property
    def embeddings(self) -> str:
        return fsutil.join(self.run_dir, self.embeddings_name)

    @property
    def failures(self) -> str:
        return self._side("failures.parquet", "failures.parquet")

    @property
    def thumbnails(self) -> str:
        return self._side("thumbnails.parquet", "thumbnails.parquet")

    @property
    def state(self) -> str:
        return self._side("_run.json", "_run.json")

    @property
    def npy(self) -> str:
        return fsutil.join(self.run_dir, self.stem + ".npy")

    @property
    def index_dir(self) -> str:
        return self._side("index", "index")

    @property
    def index(self) -> str:
        return fsutil.join(self.index_dir, INDEX_FILE)

    @property
    def text_queries(self) -> str:
        return fsutil.join(self.index_dir, TEXT_QUERIES_FILE)

    @property
    def umap(self) -> str:
        return self._side("umap2d.parquet", "umap2d.parquet")

    @property
    def manifest(self) -> str:
        return self._side("manifest.json", "manifest.json")

    def shard(self, index: int) -> RunLayout:
        """The run folder of shard ``index`` (``--shard I/N``): ``OUTDIR/shards/I``, an ordinary run folder."""
        return RunLayout(fsutil.join(self.run_dir, SHARDS_DIR, str(index)), self.stem)

    def owned(self) -> list[str]:
        """Every path this output owns (what ``--overwrite`` removes); never another output's files."""
        return [self.embeddings, self.failures, self.thumbnails, self.state, self.npy, self.index_dir, self.umap,
                self.manifest]

    @classmethod
    def locate(cls, uri: str) -> RunLayout:
        """The output a user named: a run folder, its embeddings ``.parquet``, or its ``manifest.json``."""
        uri = uri.rstrip("/")
        name = uri.rpartition("/")[2]
        if name == "manifest.json":
            return cls(uri.rpartition("/")[0] or ".")
        if name.endswith(".manifest.json"):
            return cls(uri.rpartition("/")[0] or ".", name[: -len(".manifest.json")])
        return cls.for_output(uri)


class _Part(msgspec.Struct, kw_only=True, rename=MANIFEST_KEYS, forbid_unknown_fields=False):
    """Base of the manifest's parts: keyword-only, JSON keys from MANIFEST_KEYS."""


class Outputs(_Part):
    """File names of the output's parts, relative to the run folder."""

    embeddings: str
    failures: str
    state: str
    thumbnails: str | None = None
    npy: str | None = None
    index: str | None = None
    text_index: str | None = None
    umap: str | None = None


class ModelInfo(_Part):
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
    precision: str = "fp32"
    load_seconds: float = 0.0


class Counts(_Part):
    """Images seen, embedded and failed (all attempts), and this attempt's share."""

    seen: int
    embedded: int
    failed: int
    embedded_this_attempt: int = 0
    failed_this_attempt: int = 0
    resumed_from_earlier_attempts: int = 0
    duplicate_paths_skipped: int = 0


class Manifest(_Part):
    """``manifest.json``: written last, so its presence means the output is complete."""

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
    index: dict[str, Any] | None = None
    text_index: dict[str, Any] | None = None
    projection: dict[str, Any] | None = None
    published: dict[str, Any] | None = None
    error: str | None = None
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
        return msgspec.json.format(msgspec.json.encode(self, order="sorted"), indent=2) + b"\n"


def manifest_from_json(data: bytes, where: str) -> Manifest:
    """Parse and check a manifest; a DataError naming the file and the fault when it is not one."""
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise DataError(f"{where} is not valid JSON ({exc})") from None
    version = raw.get("schema_version", 1) if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise DataError(f"{where} has manifest schema version {version!r}; this job reads version {SCHEMA_VERSION} "
                        "(re-run the job, or use the version that wrote it)")
    try:
        return msgspec.convert(raw, type=Manifest, strict=False)
    except msgspec.ValidationError as exc:
        raise DataError(f"{where} is not a valid manifest ({exc})") from None


def write_manifest(layout: RunLayout, manifest: Manifest) -> None:
    """Commit the manifest; it is always the last file of an output."""
    fsutil.atomic_write_bytes(layout.manifest, manifest.to_json())


def read_manifest(layout: RunLayout) -> Manifest:
    """The manifest of a finished output; a UsageError if there is none (unfinished run or not a run folder)."""
    if not fsutil.exists(layout.manifest):
        raise UsageError(f"{layout.run_dir} has no {layout.manifest.rpartition('/')[2]}: the run did not finish "
                         "(or this is not a run folder)")
    fs, path = fsutil.url_to_fs(layout.manifest)
    return manifest_from_json(fs.cat_file(path), layout.manifest)


def find_manifest(layout: RunLayout) -> Manifest | None:
    """The manifest when the output has one, else None (an output still being written, or bare embeddings)."""
    return read_manifest(layout) if fsutil.exists(layout.manifest) else None


@dataclass(frozen=True)
class RunRef:
    """A run's output as found from a URI: its layout, and its manifest when it is complete."""

    layout: RunLayout
    manifest: Manifest | None


def open_run(uri: str, *, require_manifest: bool = False) -> RunRef:
    """Find the output ``uri`` names and check it holds embeddings (UsageError otherwise)."""
    layout = RunLayout.locate(uri)
    manifest = find_manifest(layout)
    if manifest is not None and manifest.outputs.embeddings != layout.embeddings_name:
        layout = RunLayout(layout.run_dir, manifest.outputs.embeddings[: -len(PARQUET)])
    if require_manifest and manifest is None:
        read_manifest(layout)  # raises the one-line message
    if not fsutil.exists(layout.embeddings):
        raise UsageError(f"{uri} holds no {layout.embeddings_name}; run `python -m job run` or `job embed` first")
    return RunRef(layout, manifest)
