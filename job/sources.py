"""Source stage: yields ImageRecords (a dataroot-relative path plus bytes or a URL) from folders, S3 prefixes and archives.

``open_source(cfg)`` turns every ``--source`` (repeatable, globs allowed) into a part:

* a local or mounted folder (``LocalDir``): walked once, records carry the file path (``url``);
* an ``s3://`` prefix of loose files (``S3Prefix``): listed once, objects read by a bounded thread
  pool, records carry the bytes;
* a ``.tgz`` / ``.tar`` archive, local or ``s3://`` (``Archive``): one sequential stream
  (``job.archives``), records carry the member bytes. ``*_meta.tgz`` archives only supply tables.

Every path is relative to the nuScenes dataroot (``samples/CAM_FRONT/x.jpg``), whichever part
delivered it, so rows, ids and metadata are identical across sources. The parts run in reader
threads feeding one bounded queue: up to ``MAX_PARALLEL`` at once, or one after the other in the
order given when ``--limit`` asks for "the first N".

nuScenes metadata (``job.nuscenes``) comes from ``--nuscenes-meta``, from the ``v1.0-*`` folder of
a dataroot source, from ``*_meta.tgz`` sources, or from the table members of an archive that
carries them (``v1.0-mini.tgz``). Such members may come after the images in the stream: until the
tables are read, wanted images are held in a spool (memory, then a temporary file, at most
``SPOOL_LIMIT`` bytes) and handed out with their metadata once the tables are in. Official
``*_blobs`` / ``*_keyframes`` archives hold no tables and are never spooled.
"""
from __future__ import annotations

import concurrent.futures as cf
import glob
import logging
import os
import queue
import re
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Iterable, Iterator, Mapping, Protocol

import fsspec
import pyarrow as pa

from . import fsutil
from .errors import UsageError
from .archives import ArchiveError, ArchiveReader, is_archive_name, retry
from .config import CAMERA_CHANNELS, SourceConfig
from .nuscenes import (
    IMAGE_EXTENSIONS,
    LAYOUT_DIRS,
    META_FIELDS,
    MetaIndex,
    NuScenesTables,
    TablesBuilder,
    TablesError,
    dataroot_relative,
    find_version_dirs,
    is_image_name,
    is_version_dir,
    load_tables_dir,
    table_of,
)

log = logging.getLogger(__name__)

__all__ = ["ImageRecord", "Source", "open_source", "is_image_name", "IMAGE_EXTENSIONS", "Selection"]

MAX_PARALLEL = 4  # archives / prefixes read at the same time
QUEUE_SIZE = 256  # records between the reader threads and the consumer
S3_READERS = 16  # concurrent GETs for loose files under an s3:// prefix
SPOOL_MEMORY = 64 << 20  # spooled images kept in memory before going to a temporary file
SPOOL_LIMIT = 4 << 30  # most bytes spooled per archive while waiting for its tables
VALID_KINDS = "a local folder, a local .tgz/.tar archive, an s3:// prefix or an s3:// .tgz/.tar archive"
_NO_TABLES_ARCHIVE = re.compile(r"\d*_(blobs|keyframes|sweeps)\.(tgz|tar|tar\.gz)$", re.IGNORECASE)
_META_ARCHIVE = re.compile(r"_meta\.(tgz|tar|tar\.gz)$", re.IGNORECASE)


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


@dataclass(frozen=True)
class Selection:
    """Which files are images to embed: camera channels and keyframes (nuScenes layout only)."""

    channels: frozenset[str] = frozenset(CAMERA_CHANNELS)
    keyframes_only: bool = True

    def wants(self, rel: str) -> bool:
        """True for a dataroot-relative path the run embeds.

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

_ADMIT, _DROP, _UNKNOWN, _STOP, _SKIP = "admit", "drop", "unknown", "stop", "skip"


class _Pass:
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

        Returns _ADMIT (counted against the limit), _DROP (other scene, or scene unknown when
        ``final``), _UNKNOWN (scene filter but no tables yet and not ``final``) or _STOP (limit reached).
        """
        if self.limit_reached():
            return _STOP
        if self.scenes:
            if not self.meta:
                if not final:
                    return _UNKNOWN
                self.count("dropped_no_scene_info")
                return _DROP
            scene = self.meta.scene_of(rel)
            if scene is None or (scene.name not in self.scenes and scene.token not in self.scenes):
                self.count("dropped_other_scene" if scene is not None else "dropped_no_scene_info")
                return _DROP
        with self.lock:
            if self.limit_reached():
                return _STOP
            self.counted += 1
        return _ADMIT

    def take(self, rel: str) -> str:
        """``admit`` plus resume: _SKIP (counted) for an admitted image a resumed run already committed."""
        d = self.admit(rel)
        if d == _ADMIT and rel in self.skip:
            self.count("skipped_done")
            return _SKIP
        return d

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


# --------------------------------------------------------------------------- parts

class _Part:
    """One input: lists or streams its files and yields records through ``_Pass`` decisions."""

    kind = "part"
    url = ""
    total: int | None = None  # wanted images before skip / limit / scenes, when known up front
    may_carry_tables = False  # an archive whose own members may include tables

    def table_dirs(self) -> list[tuple[Any, str]]:
        """(fs, path) of ``v1.0-*`` table folders this part makes available up front."""
        return []

    def produce(self, p: _Pass) -> Iterator[ImageRecord]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url}


def _split_dataroot(path: str) -> tuple[str, str]:
    """(dataroot, sub-path inside it) for a folder that may itself be ``samples``, ``samples/CAM_X`` …"""
    parts = path.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] in ("samples", "sweeps"):
        return "/".join(parts[:-2]) or "/", "/".join(parts[-2:])
    if parts and parts[-1] in ("samples", "sweeps"):
        return "/".join(parts[:-1]) or "/", parts[-1]
    return path.rstrip("/") or "/", ""


def _layout_subdirs(sub: str, sel: Selection, present: Iterable[str]) -> list[str] | None:
    """The dataroot sub-folders worth listing (``samples/CAM_FRONT`` …), or None to list everything."""
    present = set(present)
    if sub:
        return [sub]
    if not present & {"samples", "sweeps"}:
        return None
    folders = ["samples"] + ([] if sel.keyframes_only else ["sweeps"])
    return [f"{f}/{c}" for f in folders if f in present for c in sorted(sel.channels)]


class LocalDir(_Part):
    """A folder on a local or mounted file system (s3fs / Mountpoint mounts included)."""

    kind = "folder"

    def __init__(self, root: str, sel: Selection) -> None:
        self.url = os.path.abspath(os.path.expanduser(root))
        if not os.path.exists(self.url):
            raise UsageError(f"source {root!r} does not exist; valid: {VALID_KINDS}")
        if not os.path.isdir(self.url):
            raise UsageError(f"source {root!r} is a file but not a .tgz/.tar archive; valid: {VALID_KINDS}")
        self.dataroot, sub = _split_dataroot(self.url)
        present = os.listdir(self.dataroot) if not sub else []
        dirs = _layout_subdirs(sub, sel, present)
        self.layout = dirs is not None
        self.paths = self._walk(dirs, sel)
        if not self.paths:
            raise UsageError(f"source {root!r} holds no wanted image files "
                              f"({', '.join(sorted(IMAGE_EXTENSIONS))}; channels {','.join(sorted(sel.channels))}"
                              f"{', keyframes only' if sel.keyframes_only else ''})")
        self.total = len(self.paths)

    def _walk(self, dirs: list[str] | None, sel: Selection) -> list[str]:
        found: list[str] = []
        tops = [os.path.join(self.dataroot, d) for d in dirs] if dirs is not None else [self.url]
        for top in tops:
            for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
                dirnames.sort()
                for name in filenames:
                    if not is_image_name(name):
                        continue
                    rel = os.path.relpath(os.path.join(dirpath, name), self.dataroot).replace(os.sep, "/")
                    rel = dataroot_relative(rel)
                    if sel.wants(rel):
                        found.append((rel, os.path.join(dirpath, name)))  # type: ignore[arg-type]
        found.sort()
        return found  # type: ignore[return-value]

    def table_dirs(self) -> list[tuple[Any, str]]:
        fs = fsspec.filesystem("file")
        return [(fs, d) for d in find_version_dirs(fs, self.dataroot)]

    def produce(self, p: _Pass) -> Iterator[ImageRecord]:
        for rel, full in self.paths:  # type: ignore[misc]
            if p.stop.is_set():
                return
            d = p.take(rel)
            if d == _STOP:
                return
            if d == _ADMIT:
                yield p.record(rel, url=full)

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "dataroot": self.dataroot, "listed": self.total}


class S3Prefix(_Part):
    """Loose files under an object-store prefix, read concurrently (bounded) with retries."""

    kind = "s3-prefix"

    def __init__(self, url: str, sel: Selection, anon: bool | None) -> None:
        self.url = url
        self.fs, path = fsutil.url_to_fs(url, anon)
        self.protocol = url.split("://", 1)[0]
        self.dataroot, sub = _split_dataroot(path)
        try:
            present = [e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(self.dataroot, detail=False)] if not sub else []
        except FileNotFoundError:
            raise UsageError(f"source {url!r} does not exist; valid: {VALID_KINDS}") from None
        except Exception as exc:
            raise UsageError(f"cannot list source {url!r}: {type(exc).__name__}: {exc}") from None
        dirs = _layout_subdirs(sub, sel, present)
        tops = [f"{self.dataroot}/{d}" for d in dirs] if dirs is not None else [path.rstrip("/")]
        found: list[tuple[str, str]] = []
        for top in tops:
            try:
                keys = self.fs.find(top)
            except FileNotFoundError:
                continue
            for key in keys:
                rel = dataroot_relative(key[len(self.dataroot):].lstrip("/"))
                if sel.wants(rel):
                    found.append((rel, key))
        found.sort()
        if not found:
            raise UsageError(f"source {url!r} holds no wanted image files; valid: {VALID_KINDS}")
        self.paths = found
        self.total = len(found)
        self.retried = 0

    def table_dirs(self) -> list[tuple[Any, str]]:
        return [(self.fs, d) for d in find_version_dirs(self.fs, self.dataroot)]

    def _count_retry(self) -> None:
        self.retried += 1

    def _get(self, key: str) -> bytes:
        return retry(lambda: self.fs.cat_file(key), f"GET {key}", on_retry=self._count_retry)

    def produce(self, p: _Pass) -> Iterator[ImageRecord]:
        def admitted() -> Iterator[tuple[str, str]]:
            for rel, key in self.paths:
                if p.stop.is_set():
                    return
                d = p.take(rel)
                if d == _STOP:
                    return
                if d == _ADMIT:
                    yield rel, key

        window: list[tuple[str, cf.Future]] = []
        with cf.ThreadPoolExecutor(S3_READERS, thread_name_prefix="s3get") as pool:
            it = admitted()
            while True:
                while len(window) < 4 * S3_READERS:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    window.append((nxt[0], pool.submit(self._get, nxt[1])))
                if not window:
                    return
                rel, fut = window.pop(0)
                try:
                    data = fut.result()
                except Exception as exc:  # noqa: BLE001 - one unreadable object must not end the run
                    p.count("read_errors")
                    yield ImageRecord(path=rel, error=f"read error: {type(exc).__name__}: {exc}")
                    continue
                yield p.record(rel, data=data)

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "listed": self.total, "retries": self.retried}


class _Spool:
    """Images held back until their archive's tables arrive: memory first, then a temporary file."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, prefix="job-spool-")
        self.entries: list[tuple[str, int, int, bool, bool]] = []
        self.bytes = 0

    def add(self, rel: str, data: bytes | None, skipped: bool, admitted: bool) -> None:
        offset = self.file.tell()
        n = 0
        if data is not None:
            self.file.write(data)
            n = len(data)
        self.entries.append((rel, offset, n, skipped, admitted))
        self.bytes += n

    def drain(self) -> Iterator[tuple[str, bytes | None, bool, bool]]:
        entries, self.entries = self.entries, []
        self.file.flush()
        for rel, offset, n, skipped, admitted in entries:
            data = None
            if not skipped:
                self.file.seek(offset)
                data = self.file.read(n)
            yield rel, data, skipped, admitted
        self.file.close()
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, prefix="job-spool-")
        self.bytes = 0

    def close(self) -> None:
        self.file.close()


class Archive(_Part):
    """A ``.tgz`` / ``.tar`` (local or object store) read as one stream."""

    kind = "archive"

    def __init__(self, url: str, sel: Selection, anon: bool | None, *, decoder: str = "isal") -> None:
        self.url, self.anon, self.sel, self.decoder = url, anon, sel, decoder
        name = url.rstrip("/").rsplit("/", 1)[-1]
        self.is_meta = bool(_META_ARCHIVE.search(name))
        self.may_carry_tables = not _NO_TABLES_ARCHIVE.search(name)
        fs, path = fsutil.url_to_fs(url, anon)
        if fsutil.is_local(fs):
            if not os.path.exists(path):
                raise UsageError(f"source {url!r} does not exist; valid: {VALID_KINDS}")
            if not os.path.isfile(path):
                raise UsageError(f"source {url!r} is a folder named like an archive; valid: {VALID_KINDS}")
        else:
            try:
                info = fs.info(path)
            except FileNotFoundError:
                raise UsageError(f"source {url!r} does not exist; valid: {VALID_KINDS}") from None
            except Exception as exc:
                raise UsageError(f"cannot read source {url!r}: {type(exc).__name__}: {exc}") from None
            if info.get("type") == "directory":
                raise UsageError(f"source {url!r} is a prefix named like an archive; valid: {VALID_KINDS}")
        self.reader: ArchiveReader | None = None
        self.counts: Counter[str] = Counter()

    def produce(self, p: _Pass) -> Iterator[ImageRecord]:
        self.reader = reader = ArchiveReader(self.url, anon=self.anon, decoder=self.decoder)
        looking = self.may_carry_tables and not p.meta  # tables may still come in this stream
        builders: dict[str, TablesBuilder] = {}
        spool = _Spool()
        collecting = True  # False once --limit is reached (the stream may still be read for tables)
        members = reader.members(p.stop)
        try:
            for m in members:
                rel = dataroot_relative(m.name)
                tb = table_of(rel)
                if tb is not None:
                    if looking and m.isfile:
                        version, table = tb
                        b = builders.setdefault(version, TablesBuilder(version, keep=self.sel.wants))
                        if b.wants(table):
                            try:
                                b.add(table, m.reader().read)
                            except TablesError as exc:
                                p.warn(f"{self.url}: unusable nuScenes tables ({exc}); metadata stays empty")
                                looking = False
                            if looking and b.complete():
                                p.add_tables(b.build())
                                self.counts["tables_found"] += 1
                                looking = False
                        if not looking:
                            builders.clear()
                            yield from self._drain(spool, p)
                            if not collecting:
                                return
                    self.counts["members_skipped"] += 1
                    continue
                if not self.sel.wants(rel):
                    self.counts["members_skipped"] += 1
                    continue
                if not collecting:
                    continue
                if not m.isfile:
                    self.counts["unreadable_members"] += 1
                    if rel not in p.skip:
                        yield ImageRecord(path=rel, error=f"archive member unreadable: not a regular file "
                                                          f"(tar type {m._info.type!r})")
                    continue
                if looking:
                    admitted = False
                    if not p.scenes:
                        if p.admit(rel) == _STOP:
                            collecting = False
                            if not spool.entries:
                                return
                            continue
                        admitted = True
                    skipped = rel in p.skip
                    spool.add(rel, None if skipped else m.read(), skipped, admitted)
                    self.counts["spooled_images"] += 1
                    if spool.bytes > SPOOL_LIMIT:
                        p.warn(f"{self.url}: no nuScenes tables in the first {SPOOL_LIMIT >> 20} MiB of images; "
                               "going on without metadata (pass --nuscenes-meta)")
                        looking = False
                        yield from self._drain(spool, p)
                    continue
                d = p.take(rel)
                if d == _STOP:
                    return
                if d == _ADMIT:
                    yield p.record(rel, data=m.read())
        except ArchiveError as exc:
            members.close()
            self.counts["errors"] += 1
            p.error(f"{self.url}: {exc}")
            where = dataroot_relative(exc.member) if exc.member else None
            path = where if where and self.sel.wants(where) else self.url
            if path not in p.skip:
                yield ImageRecord(path=path, error=str(exc) if where is None or path == where
                                  else f"{exc} (in member {exc.member})")
        finally:
            members.close()
        if spool.entries:
            if looking and self.may_carry_tables and not p.meta:
                p.warn(f"{self.url}: no nuScenes tables in the archive; metadata stays empty (pass --nuscenes-meta)")
            yield from self._drain(spool, p)
        spool.close()

    def _drain(self, spool: _Spool, p: _Pass) -> Iterator[ImageRecord]:
        for rel, data, skipped, admitted in spool.drain():
            if not admitted:
                d = p.admit(rel)
                if d == _STOP:
                    break
                if d == _DROP:
                    continue
            if skipped:
                p.count("skipped_done")
                continue
            yield p.record(rel, data=data)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "url": self.url}
        if self.reader is not None:
            out.update(self.reader.stats.as_dict())
        out.update(self.counts)
        return out


# --------------------------------------------------------------------------- tables from --nuscenes-meta & co

def _tables_from_archive(url: str, anon: bool | None, sel: Selection) -> list[NuScenesTables]:
    """Stream an archive until the tables of its first version are complete (maps etc. are never read)."""
    reader = ArchiveReader(url, anon=anon)
    builders: dict[str, TablesBuilder] = {}
    members = reader.members()
    try:
        for m in members:
            tb = table_of(dataroot_relative(m.name))
            if tb is None or not m.isfile:
                continue
            b = builders.setdefault(tb[0], TablesBuilder(tb[0], keep=sel.wants))
            b.add(tb[1], m.reader().read)
            if b.complete():
                return [b.build()]
    except ArchiveError as exc:
        raise TablesError(f"{url}: {exc}") from None
    finally:
        members.close()
    missing = {v: b.missing() for v, b in builders.items()}
    raise TablesError(f"{url} holds no complete nuScenes tables" +
                      (f" (missing {missing})" if missing else " (no v1.0-*/*.json members)"))


def _tables_from_location(uri: str, anon: bool | None, sel: Selection) -> list[NuScenesTables]:
    """Tables from a ``v1.0-*`` folder, a dataroot (local or s3) or an archive."""
    if is_archive_name(uri):
        return _tables_from_archive(uri, anon, sel)
    fs, path = fsutil.url_to_fs(uri, anon)
    path = path.rstrip("/")
    if fs.exists(f"{path}/sample_data.json"):
        return [load_tables_dir(fs, path, keep=sel.wants)]
    dirs = find_version_dirs(fs, path)
    if not dirs:
        raise TablesError(f"{uri} holds no nuScenes tables (expected a v1.0-* folder with sample_data.json, "
                          "a dataroot holding one, or a meta .tgz)")
    return [load_tables_dir(fs, d, keep=sel.wants) for d in dirs]


# --------------------------------------------------------------------------- the source

_DONE = object()


class MultiSource:
    """The parts of one run, read by threads into one stream of records; metadata joined on the way."""

    def __init__(self, parts: list[_Part], meta_archives: list[str], cfg: SourceConfig, sel: Selection) -> None:
        self.parts = parts
        self.meta_archives = meta_archives
        self.cfg = cfg
        self.sel = sel
        self.scenes = frozenset(cfg.scenes)
        self.nuscenes = bool(cfg.nuscenes_meta or meta_archives or any(
            isinstance(pt, Archive) or getattr(pt, "layout", False) or pt.table_dirs() for pt in parts))
        self.meta_fields: tuple[pa.Field, ...] = META_FIELDS if self.nuscenes else ()
        names = [pt.url for pt in parts] + meta_archives
        self.description = (names[0] if len(names) == 1 else f"{len(names)} sources ({', '.join(names)})")
        self._pass: _Pass | None = None
        self._meta_info: dict[str, Any] = {}
        self._tables: list[NuScenesTables] | None = None
        self._warnings: list[str] = []

    @property
    def total(self) -> int | None:
        """Wanted images before resume (for progress bars), when every part listed its files."""
        if self.scenes or any(pt.total is None for pt in self.parts):
            return None
        n = sum(pt.total or 0 for pt in self.parts)
        return min(n, self.cfg.limit) if self.cfg.limit else n

    def prepare(self) -> None:
        """Load the tables known up front and check ``--scenes`` (before the runner writes anything)."""
        p = _Pass(self.sel, frozenset(), None, self.scenes, MetaIndex(), self.nuscenes)
        self._load_tables(p)
        self._check_scenes(p)
        self._tables = list(p.meta.tables)
        self._warnings = list(p.warnings)

    def _load_tables(self, p: _Pass) -> None:
        t0 = time.perf_counter()
        origin: list[str] = []
        if self.cfg.nuscenes_meta:
            try:
                for t in _tables_from_location(self.cfg.nuscenes_meta, self.cfg.anon, self.sel):
                    p.add_tables(t)
            except (TablesError, FileNotFoundError) as exc:
                raise UsageError(f"--nuscenes-meta {self.cfg.nuscenes_meta!r}: {exc}") from None
            origin.append(self.cfg.nuscenes_meta)
        else:
            for url in self.meta_archives:
                try:
                    for t in _tables_from_archive(url, self.cfg.anon, self.sel):
                        p.add_tables(t)
                    origin.append(url)
                except TablesError as exc:
                    p.warn(f"{url}: {exc}")
            for pt in self.parts:
                for fs, d in pt.table_dirs():
                    try:
                        p.add_tables(load_tables_dir(fs, d, keep=self.sel.wants))
                        origin.append(d)
                    except TablesError as exc:
                        p.warn(f"{d}: unusable nuScenes tables ({exc}); metadata stays empty")
        self._meta_info = {"from": origin, "load_seconds": round(time.perf_counter() - t0, 2)}

    def _check_scenes(self, p: _Pass) -> None:
        if not self.scenes:
            return
        if p.meta:
            unknown = sorted(s for s in self.scenes if s not in p.meta.scene_keys())
            if unknown and not any(pt.may_carry_tables for pt in self.parts):
                names = sorted(s.name for t in p.meta.tables for s in t.scenes)
                raise UsageError(f"unknown scene(s) {', '.join(unknown)}; valid: "
                                  f"{', '.join(names[:12])}{' …' if len(names) > 12 else ''}")
            return
        if not any(pt.may_carry_tables for pt in self.parts):
            raise UsageError("--scenes needs the nuScenes tables: give --nuscenes-meta (a v1.0-* folder, "
                              "a dataroot or a meta .tgz) or a source that carries them")

    def records(self, skip: AbstractSet[str] = frozenset()) -> Iterator[ImageRecord]:
        if self._tables is None:
            self.prepare()
        p = _Pass(self.sel, skip, self.cfg.limit, self.scenes, MetaIndex(self._tables or []), self.nuscenes)
        p.warnings.extend(self._warnings)
        self._pass = p
        if self.nuscenes and not p.meta and not any(pt.may_carry_tables for pt in self.parts):
            p.warn("no nuScenes tables found; metadata columns stay empty (pass --nuscenes-meta)")
        sequential = self.cfg.limit is not None or len(self.parts) == 1
        n_threads = 1 if sequential else min(MAX_PARALLEL, len(self.parts))
        q: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        todo = list(self.parts)
        todo_lock = threading.Lock()

        def put(item: object) -> bool:
            while not p.stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                while not p.stop.is_set():
                    with todo_lock:
                        if not todo:
                            return
                        part = todo.pop(0)
                    try:
                        for rec in part.produce(p):
                            if not put(rec):
                                return
                    except Exception as exc:  # noqa: BLE001 - a broken part ends as a failure, not a crash
                        log.exception("reading %s failed", part.url)
                        p.error(f"{part.url}: {type(exc).__name__}: {exc}")
                        if part.url not in skip:
                            put(ImageRecord(path=part.url, error=f"source error: {type(exc).__name__}: {exc}"))
            finally:
                while True:  # the consumer must learn that this thread ended, even when stopping
                    try:
                        q.put(_DONE, timeout=0.1)
                        break
                    except queue.Full:
                        if p.stop.is_set():
                            try:
                                q.get_nowait()
                            except queue.Empty:
                                pass

        threads = [threading.Thread(target=work, name=f"source-{i}", daemon=True) for i in range(n_threads)]
        for t in threads:
            t.start()
        done = 0
        try:
            while done < len(threads):
                item = q.get()
                if item is _DONE:
                    done += 1
                    continue
                yield item  # type: ignore[misc]
            missing = p.counts["images_without_metadata"]
            if missing and p.meta:
                p.warn(f"{missing} image(s) have no sample_data row in the nuScenes tables; "
                       "they are kept with empty metadata columns")
        finally:
            p.stop.set()
            while any(t.is_alive() for t in threads):
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            for t in threads:
                t.join(timeout=1)

    def stats(self) -> dict[str, Any]:
        p = self._pass
        out: dict[str, Any] = {
            "kind": "nuscenes" if self.nuscenes else "images",
            "parts": [pt.stats() for pt in self.parts],
            "channels": sorted(self.sel.channels),
            "keyframes_only": self.sel.keyframes_only,
        }
        if self.meta_archives:
            out["meta_archives"] = list(self.meta_archives)
        if p is not None:
            out.update({k: int(v) for k, v in sorted(p.counts.items())})
            out.setdefault("images", 0)
            if self.nuscenes:
                out.setdefault("images_without_metadata", 0)
                in_stream = [pt.url for pt in self.parts if isinstance(pt, Archive) and pt.counts["tables_found"]]
                info = dict(self._meta_info)
                info["from"] = list(info.get("from", [])) + in_stream
                out["metadata"] = {**info, "versions": p.meta.versions, "image_rows": p.meta.rows}
            out["warnings"] = list(p.warnings)
            out["errors"] = list(p.errors)
            archives = [pt for pt in self.parts if isinstance(pt, Archive) and pt.reader is not None]
            if archives:
                out["archives_read"] = len(archives)
                out["bytes_read"] = sum(pt.reader.stats.bytes_read for pt in archives)  # type: ignore[union-attr]
                out["bytes_decompressed"] = sum(pt.reader.stats.bytes_decompressed for pt in archives)  # type: ignore[union-attr]
                out["members_skipped"] = sum(pt.counts["members_skipped"] for pt in archives)
        return out


# --------------------------------------------------------------------------- building

def _expand(uri: str, anon: bool | None) -> list[str]:
    """The URIs a (possibly globbed) ``--source`` names; UsageError when it names nothing usable."""
    protocol = fsspec.utils.get_protocol(uri)
    if protocol not in ("file", "local", "s3", "s3a"):
        raise UsageError(f"unsupported source {uri!r} (scheme {protocol}://); valid: {VALID_KINDS}")
    if not glob.has_magic(uri):
        return [uri]
    if protocol in ("file", "local"):
        local = uri.split("://", 1)[1] if "://" in uri else uri
        matches = sorted(glob.glob(os.path.expanduser(local)))
    else:
        fs, path = fsutil.url_to_fs(uri, anon)
        try:
            matches = sorted(f"{protocol}://{m}" for m in fs.glob(path))
        except Exception as exc:
            raise UsageError(f"cannot list {uri!r}: {type(exc).__name__}: {exc}") from None
    if not matches:
        raise UsageError(f"source {uri!r} matches nothing; valid: {VALID_KINDS}")
    return matches


def open_source(cfg: SourceConfig, *, decoder: str = "isal") -> MultiSource:
    """Build the source that ``cfg.sources`` names.

    Validates every input and loads the nuScenes tables known up front (``--nuscenes-meta``, a
    dataroot's ``v1.0-*``, ``*_meta.tgz`` sources), so bad input fails here with a UsageError,
    before the runner writes anything. Local paths touch no network.
    """
    if not cfg.sources:
        raise UsageError(f"no --source given; valid: {VALID_KINDS}")
    bad = [c for c in cfg.channels if c not in CAMERA_CHANNELS]
    if bad:
        raise UsageError(f"channel(s) {', '.join(bad)} are not cameras; valid: {', '.join(CAMERA_CHANNELS)}")
    sel = Selection(frozenset(cfg.channels), cfg.keyframes_only)
    urls: list[str] = []
    for uri in cfg.sources:
        for u in _expand(uri, cfg.anon):
            if u not in urls:
                urls.append(u)
    parts: list[_Part] = []
    meta_archives: list[str] = []
    for u in urls:
        protocol = fsspec.utils.get_protocol(u)
        local = protocol in ("file", "local")
        if is_archive_name(u):
            part = Archive(u, sel, cfg.anon, decoder=decoder)
            if part.is_meta:
                meta_archives.append(u)
                continue
            parts.append(part)
        elif local:
            parts.append(LocalDir(u.split("://", 1)[1] if "://" in u else u, sel))
        else:
            parts.append(S3Prefix(u, sel, cfg.anon))
    if not parts:
        raise UsageError("only nuScenes metadata archives given (" + ", ".join(meta_archives) +
                          "); add the image archives, e.g. v1.0-trainval01_keyframes.tgz")
    if cfg.nuscenes_meta:
        m = cfg.nuscenes_meta
        if fsspec.utils.get_protocol(m) in ("file", "local"):
            if not os.path.exists(os.path.expanduser(m.split("://", 1)[-1])):
                raise UsageError(f"--nuscenes-meta {m!r} does not exist; valid: a v1.0-* folder, a dataroot "
                                  "or a meta .tgz (local or s3://)")
        elif fsspec.utils.get_protocol(m) not in ("s3", "s3a"):
            raise UsageError(f"--nuscenes-meta {m!r}: unsupported scheme; valid: a local path or s3://")
    source = MultiSource(parts, meta_archives, cfg, sel)
    source.prepare()
    return source
