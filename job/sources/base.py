"""What the sources share: ImageRecord, the Source protocol, Selection, one pass's admission state, the input base."""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Iterable, Iterator, Mapping, Protocol

import pyarrow as pa

from .. import fsutil
from ..errors import StorageError, UsageError
from ..nuscenes import IMAGE_EXTENSIONS, LAYOUT_DIRS, MetaIndex, NuScenesTables, is_version_dir
from ..runfolder import path_id
from ..values import CAMERA_CHANNELS

log = logging.getLogger(__name__)

VALID_KINDS = "a local folder, a local .tgz/.tar archive, an s3:// prefix or an s3:// .tgz/.tar archive"


@dataclass(frozen=True)
class ImageRecord:
    """One image as a source sees it.

    ``path`` is relative to the dataroot in POSIX form (``samples/CAM_FRONT/x.jpg``); it is the
    row's identity in the output. Exactly one of ``data`` (bytes already in memory, e.g. an archive
    member) and ``url`` (an fsspec URL the decode workers read) is set, unless ``error`` says why
    the source could not produce the image at all (``"<category>: <detail>"``); such records go
    straight to the failures table. ``meta`` holds the metadata columns (None: no row).
    """

    path: str
    data: bytes | None = None
    url: str | None = None
    error: str | None = None
    meta: Mapping[str, Any] | None = field(default=None, compare=False)


class Source(Protocol):
    """Anything that yields ImageRecords.

    ``records(skip)`` yields every wanted image whose path is not in ``skip`` (paths a resumed run
    already committed; a source may avoid reading their bytes). ``meta_fields`` are the metadata
    columns its records' ``meta`` fill (empty when there is no metadata); ``stats()`` goes into the
    manifest.
    """

    description: str
    meta_fields: tuple[pa.Field, ...]

    def records(self, skip: AbstractSet[str] = frozenset()) -> Iterator[ImageRecord]: ...

    def stats(self) -> dict[str, Any]: ...

    @property
    def total(self) -> int | None:
        """How many images ``records`` will yield, when known up front (for the progress bar)."""
        ...

    def estimated_total(self) -> int | None:
        """``total``, or while ``records`` runs an estimate of it (a stream that learns its total at the end)."""
        ...


@dataclass(frozen=True)
class Selection:
    """Which files are images to embed: camera channels and keyframes (nuScenes layout only)."""

    channels: frozenset[str] = frozenset(CAMERA_CHANNELS)
    keyframes_only: bool = True
    shard: tuple[int, int] | None = None  # (I, N): only paths whose stable id is I modulo N

    def wants(self, rel: str) -> bool:
        """True for a dataroot-relative path the run embeds (and, when sharded by hash, that belongs to this shard)."""
        if not self._is_wanted_image(rel):
            return False
        return self.shard is None or path_id(rel) % self.shard[1] == self.shard[0]

    def _is_wanted_image(self, rel: str) -> bool:
        """True for a dataroot-relative image path the channel and keyframe filters keep.

        Inside the nuScenes layout (``samples|sweeps/<CHANNEL>/file``) the channel and keyframe
        filters apply; ``maps/`` and ``v1.0-*/`` never hold camera images; any other image file
        (a plain folder of pictures) is wanted. LIDAR/RADAR files are not images by extension and
        their channels are not cameras, so they are never wanted.
        """
        parts = rel.split("/")  # hot path: called for every sample_data row (2.6M for trainval)
        name = parts[-1]
        dot = name.rfind(".")
        if dot < 0 or name[dot:].lower() not in IMAGE_EXTENSIONS:
            return False
        first = parts[0]
        if len(parts) == 3 and first in LAYOUT_DIRS:
            return parts[1] in self.channels and (first == "samples" or not self.keyframes_only)
        return len(parts) == 1 or not (first == "maps" or is_version_dir(first))


# --------------------------------------------------------------------------- shared state of one pass

ADMIT, DROP, UNKNOWN, STOP, SKIP = "admit", "drop", "unknown", "stop", "skip"


class ReadPass:
    """State shared by the reader threads during one ``records()`` call."""

    def __init__(self, sel: Selection, skip: AbstractSet[str], limit: int | None, scenes: frozenset[str],
                 meta: MetaIndex, nuscenes: bool) -> None:
        self.sel, self.skip, self.limit, self.scenes = sel, skip, limit, scenes
        self.meta = meta
        self.nuscenes = nuscenes
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counted = 0
        self.counts: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.errors: list[str] = []

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def warn(self, msg: str) -> None:
        log.warning("%s", msg)
        with self.lock:
            if msg not in self.warnings:
                self.warnings.append(msg)

    def error(self, msg: str) -> None:
        log.error("%s", msg)
        with self.lock:
            self.errors.append(msg)

    def add_tables(self, tables: NuScenesTables) -> None:
        with self.lock:
            self.meta.add(tables)

    def limit_reached(self) -> bool:
        return self.limit is not None and self.counted >= self.limit

    def admit(self, rel: str, *, final: bool = True) -> str:
        """Scene filter and ``--limit`` for one wanted image, in source order.

        Returns ADMIT (counted against the limit), DROP (other scene, or scene unknown when
        ``final``), UNKNOWN (scene filter but no tables yet and not ``final``) or STOP (limit reached).
        """
        if self.limit_reached():
            return STOP
        if self.scenes:
            if not self.meta:
                if not final:
                    return UNKNOWN
                self.count("dropped_no_scene_info")
                return DROP
            scene = self.meta.scene_of(rel)
            if scene is None or (scene.name not in self.scenes and scene.token not in self.scenes):
                self.count("dropped_other_scene" if scene is not None else "dropped_no_scene_info")
                return DROP
        with self.lock:
            if self.limit_reached():
                return STOP
            self.counted += 1
        return ADMIT

    def take(self, rel: str) -> str:
        """``admit`` plus resume: SKIP (counted) for an admitted image a resumed run already committed."""
        d = self.admit(rel)
        if d == ADMIT and rel in self.skip:
            self.count("skipped_done")
            return SKIP
        return d

    def admitted(self, listed: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        """The (path, location) pairs of a listed source that ``take`` admits, in order, until the pass stops."""
        for rel, where in listed:
            if self.stop.is_set():
                return
            d = self.take(rel)
            if d == STOP:
                return
            if d == ADMIT:
                yield rel, where

    def meta_for(self, rel: str) -> dict[str, Any] | None:
        if not self.nuscenes:
            return None
        meta = self.meta.lookup(rel) if self.meta else None
        if meta is None:
            self.count("images_without_metadata")
        return meta

    def record(self, rel: str, *, data: bytes | None = None, url: str | None = None) -> ImageRecord:
        self.count("images")
        return ImageRecord(path=rel, data=data, url=url, meta=self.meta_for(rel))


# --------------------------------------------------------------------------- inputs

class Input:
    """One input: lists or streams its files and yields records through ``ReadPass`` decisions."""

    kind = "input"
    url = ""
    total: int | None = None  # wanted images before skip / limit / scenes, when known up front
    may_carry_tables = False  # an archive whose own members may include tables

    def table_dirs(self) -> list[tuple[Any, str]]:
        """(fs, path) of ``v1.0-*`` table folders this input makes available up front."""
        return []

    def produce(self, p: ReadPass) -> Iterator[ImageRecord]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url}


def split_dataroot(path: str) -> tuple[str, str]:
    """(dataroot, sub-path inside it) for a folder that may itself be ``samples``, ``samples/CAM_X`` …"""
    parts = path.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] in ("samples", "sweeps"):
        return "/".join(parts[:-2]) or "/", "/".join(parts[-2:])
    if parts and parts[-1] in ("samples", "sweeps"):
        return "/".join(parts[:-1]) or "/", parts[-1]
    return path.rstrip("/") or "/", ""


def layout_subdirs(sub: str, sel: Selection, present: Iterable[str]) -> list[str] | None:
    """The dataroot sub-folders worth listing (``samples/CAM_FRONT`` …), or None to list everything."""
    present = set(present)
    if sub:
        return [sub]
    if not present & {"samples", "sweeps"}:
        return None
    folders = ["samples"] + ([] if sel.keyframes_only else ["sweeps"])
    return [f"{f}/{c}" for f in folders if f in present for c in sorted(sel.channels)]


def unreachable(op: str, url: str, exc: Exception) -> Exception:
    """A source that cannot be reached is a fault of the network or the store (exit 1), not of the command line."""
    if isinstance(exc, PermissionError):
        return UsageError(f"cannot read source {url!r}: access denied ({exc}); check the credentials or pass --anon")
    return StorageError(f"{op} source {url} failed ({fsutil.describe_fault(exc)}): the source cannot be reached; "
                        "check the network (and --anon for public buckets), then run the same command")
