"""The run-folder contract: where each output of a run lives and the typed manifest (tables: :mod:`job.runfolder.tables`).

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
    curation/                                a.curation/                      job curate: neighbours, duplicates, …
    eval/                                    a.eval/                          job eval: labels, scores, per query
    manifest.json                            a.manifest.json                  written last: the run is complete

Everything else reads a run through :func:`open_run`/:class:`Manifest`; JSON key names live only here.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import msgspec

from .. import fsutil
from ..errors import DataError, UsageError
from .documents import READABLE_VERSIONS, IndexInfo, decode, encode
from .manifest import Manifest

log = logging.getLogger(__name__)

DEFAULT_STEM = "embeddings"
INDEX_FILE = "index.faiss"
TEXT_INDEX_FILE = "text.faiss"  # beside INDEX_FILE: the index over the vectors text queries search
TEXT_QUERIES_FILE = "text_queries.npy"  # beside it: text-tower vectors of prompts, the queries that tune it
SHARDS_DIR = "shards"
STATUS_FILE = "_STATUS"  # the run folder's live status (job.status), one per run folder whatever its outputs
BOOTSTRAP_LOG = "_bootstrap.log"  # the instance script's log (cdk/scripts/user_data.sh)
# Why AWS Batch ended a job of the run FAILED, recorded outside the job (cdk/batch_notes.py; cdk.constants agrees):
# OUTDIR/_batch/shard-<I>.json and merge.json, each {"jobId", "jobName", "status", "statusReason", "at"}. A job that
# Batch cancelled while it waited in RUNNABLE never ran, so it has no _STATUS of its own: this is its only word.
BATCH_NOTES = "_batch"
# The run's group's latest failed launch, recorded outside the job (cdk/launch_notes.py; cdk.constants agrees):
# OUTDIR/_launch.json, {"at", "group", "message", "cause", "az"}: no instance could start to write _STATUS.
LAUNCH_NOTE = "_launch.json"
PARQUET = ".parquet"


@dataclass(frozen=True)
class CurationFiles:
    """Where each file of a curation (``curation/``) lives: the only names a curation has."""

    dir: str
    neighbours: str  # id, neighbours (ids, nearest first), cosines: the k-NN graph
    duplicates: str  # one row per image that repeats another
    scores: str  # id, uniqueness, nn_cosine, kth_cosine
    selection: str  # the diverse subset (--select N)
    histogram: str  # nn_cosines.png: the nearest-neighbour distances with the near threshold marked

    @classmethod
    def under(cls, folder: str) -> CurationFiles:
        return cls(folder, *(fsutil.join(folder, name) for name in CURATION_NAMES))

    def tables(self) -> dict[str, str]:
        """The parquet tables, name -> URL."""
        return {"neighbours": self.neighbours, "duplicates": self.duplicates, "scores": self.scores,
                "selection": self.selection}


CURATION_NAMES = ("neighbours.parquet", "duplicates.parquet", "scores.parquet", "selection.parquet", "nn_cosines.png")


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
    def lease(self) -> str:
        """The output's writer lease (``job.runfolder.lease``): one writer per output."""
        return self._side("_LEASE", "_LEASE")

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
    def index_info(self) -> str:
        return index_info_url(self.index)

    @property
    def text_index(self) -> str:
        return fsutil.join(self.index_dir, TEXT_INDEX_FILE)

    @property
    def text_index_info(self) -> str:
        return index_info_url(self.text_index)

    @property
    def text_queries(self) -> str:
        return fsutil.join(self.index_dir, TEXT_QUERIES_FILE)

    @property
    def umap(self) -> str:
        return self._side("umap2d.parquet", "umap2d.parquet")

    @property
    def curation_dir(self) -> str:
        """``curation/``: what ``job curate`` found (``job.curate.run``)."""
        return self._side("curation", "curation")

    @property
    def curation(self) -> CurationFiles:
        """The files of ``curation/``, by name (``job.curate`` writes them, ``job.curate.results`` reads them)."""
        return CurationFiles.under(self.curation_dir)

    @property
    def eval_dir(self) -> str:
        """``eval/``: what ``job eval`` scored (``job.eval``)."""
        return self._side("eval", "eval")

    def eval(self, name: str) -> str:
        """A file of the evaluation: ``labels.parquet``, ``eval.json``, ``per_query.parquet``, ``per_category.png``."""
        return fsutil.join(self.eval_dir, name)

    @property
    def manifest(self) -> str:
        return self._side("manifest.json", "manifest.json")

    @property
    def status(self) -> str:
        """The run folder's ``_STATUS`` (shared by its outputs)."""
        return fsutil.join(self.run_dir, STATUS_FILE)

    @property
    def bootstrap_log(self) -> str:
        return fsutil.join(self.run_dir, BOOTSTRAP_LOG)

    @property
    def launch_note(self) -> str:
        """``OUTDIR/_launch.json``: why the instance engine's group could not launch (``job.status.view``)."""
        return fsutil.join(self.run_dir, LAUNCH_NOTE)

    @property
    def batch_notes_dir(self) -> str:
        """``OUTDIR/_batch``: AWS Batch's word on the run's jobs it ended FAILED (``job.status.view``)."""
        return fsutil.join(self.run_dir, BATCH_NOTES)

    @property
    def shards_dir(self) -> str:
        """``OUTDIR/shards``: the folders of a run split with ``--shard I/N``."""
        return fsutil.join(self.run_dir, SHARDS_DIR)

    def shard(self, index: int) -> RunLayout:
        """The run folder of shard ``index`` (``--shard I/N``): ``OUTDIR/shards/I``, an ordinary run folder."""
        return RunLayout(fsutil.join(self.shards_dir, str(index)), self.stem)

    def rel(self, url: str) -> str:
        """``url`` relative to the run folder (what the manifest's ``outputs`` record); unchanged if outside it."""
        prefix = self.run_dir.rstrip("/") + "/"
        return url[len(prefix):] if url.startswith(prefix) else url

    def owned(self) -> list[str]:
        """Every path this output owns (what ``--overwrite`` removes); never another output's files."""
        return [self.embeddings, self.failures, self.thumbnails, self.state, self.npy, self.index_dir, self.umap,
                self.curation_dir, self.eval_dir, self.manifest]

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


def manifest_from_json(data: bytes, where: str) -> Manifest:
    """Parse and check a manifest; a DataError naming the file and the fault when it is not one."""
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise DataError(f"{where} is not valid JSON ({exc})") from None
    version = raw.get("schema_version", 1) if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise DataError(f"{where} has manifest schema version {version!r}; this job reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))} "
                        "(re-run the job, or use the version that wrote it)")
    return decode(raw, Manifest, where, "manifest")


def index_info_url(index_url: str) -> str:
    """``indexes/x.faiss`` → ``indexes/x.json``: the :class:`IndexInfo` beside an index file."""
    base = index_url.rstrip("/")
    head, _, tail = base.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return f"{head}/{stem}.json" if head else f"{stem}.json"


def write_index_info(index_url: str, info: IndexInfo) -> None:
    """Commit the description beside an index file."""
    fsutil.atomic_write_bytes(index_info_url(index_url), encode(info))


def read_index_info(index_url: str) -> IndexInfo:
    """The description beside an index file: UsageError when it is missing, DataError when it is not one."""
    url = index_info_url(index_url)
    if not fsutil.exists(url):
        raise UsageError(f"no index description at {url}; build the index with: python -m job index")
    fs, path = fsutil.url_to_fs(url)
    return decode(fs.cat_file(path), IndexInfo, url, "index description (rebuild it with: python -m job index)")


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
