"""Archive source: a ``.tgz`` / ``.tar`` read as one stream; images wait in a spool until its own tables arrive.

nuScenes metadata may come from the table members of an archive that carries them
(``v1.0-mini.tgz``). Such members may come after the images in the stream: until the tables are
read, wanted images are held in a spool (memory, then a temporary file, at most ``SPOOL_LIMIT``
bytes) and handed out with their metadata once the tables are in. Official ``*_blobs`` /
``*_keyframes`` archives hold no tables and are never spooled. ``*_meta.tgz`` archives only supply
tables (``tables_from_archive``), like a ``--nuscenes-meta`` location (``tables_from_location``).
"""
from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from typing import Any, Callable, Iterator, TypeVar

from .. import fsutil
from ..errors import UsageError
from ..nuscenes import (
    MissingTables,
    NuScenesTables,
    TablesBuilder,
    TablesError,
    TableSink,
    dataroot_relative,
    fill_from_dir,
    find_version_dirs,
    table_of,
)
from .archive_reader import ArchiveError, ArchiveMissing, ArchiveReader, Member
from .base import ADMIT, DROP, STOP, VALID_KINDS, ImageRecord, Input, ReadPass, Selection, unreachable

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tgz", ".tar.gz", ".tar")
SPOOL_MEMORY = 64 << 20  # spooled images kept in memory before going to a temporary file
SPOOL_LIMIT = 4 << 30  # most bytes spooled per archive while waiting for its tables
_NO_TABLES_ARCHIVE = re.compile(r"\d*_(blobs|keyframes|sweeps)\.(tgz|tar|tar\.gz)$", re.IGNORECASE)
META_ARCHIVE_RE = re.compile(r"_meta\.(tgz|tar|tar\.gz)$", re.IGNORECASE)


def is_archive_name(url: str) -> bool:
    """True for names the job reads as tar archives (``.tgz``, ``.tar.gz``, ``.tar``)."""
    return url.lower().rstrip("/").endswith(ARCHIVE_SUFFIXES)


class NoTablesError(TablesError):
    """A location holds no nuScenes tables at all: nothing there, or not a tables folder or archive."""


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


class Archive(Input):
    """A ``.tgz`` / ``.tar`` (local or object store) read as one stream."""

    kind = "archive"

    def __init__(self, url: str, sel: Selection, anon: bool | None, *, decoder: str = "isal") -> None:
        self.url, self.anon, self.sel, self.decoder = url, anon, sel, decoder
        name = url.rstrip("/").rsplit("/", 1)[-1]
        self.is_meta = bool(META_ARCHIVE_RE.search(name))
        self.may_carry_tables = not _NO_TABLES_ARCHIVE.search(name)
        self.size: int | None = None  # bytes in storage, set by _check_exists
        self._check_exists()
        self.reader: ArchiveReader | None = None
        self.counts: Counter[str] = Counter()
        self.seen = 0  # wanted images met in the stream this pass (already done ones included)

    def _check_exists(self) -> None:
        """UsageError unless the URL names an archive file (not a missing path, a folder or a prefix)."""
        url = self.url
        fs, path = fsutil.url_to_fs(url, self.anon)
        if fsutil.is_local(fs):
            if not os.path.exists(path):
                raise UsageError(f"source {url!r} does not exist; valid: {VALID_KINDS}")
            if not os.path.isfile(path):
                raise UsageError(f"source {url!r} is a folder named like an archive; valid: {VALID_KINDS}")
            self.size = os.path.getsize(path)
            return
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise UsageError(f"source {url!r} does not exist; valid: {VALID_KINDS}") from None
        except Exception as exc:
            raise unreachable("looking up", url, exc) from None
        if info.get("type") == "directory":
            raise UsageError(f"source {url!r} is a prefix named like an archive; valid: {VALID_KINDS}")
        self.size = int(info["size"]) if info.get("size") is not None else None

    def read_so_far(self) -> tuple[int, int]:
        """(wanted images met, bytes read) in this pass; the whole archive's bytes once its stream ended."""
        r = self.reader
        if r is None:
            return 0, 0
        if r.stats.complete and self.size:
            return self.seen, self.size
        return self.seen, min(r.position, self.size or r.position)

    def produce(self, p: ReadPass) -> Iterator[ImageRecord]:
        self.seen = 0
        self.reader = ArchiveReader(self.url, anon=self.anon, decoder=self.decoder)
        run = _ArchivePass(self, p)
        try:
            yield from run.stream(self.reader)
            yield from run.finish()
        finally:
            run.spool.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "url": self.url}
        if self.reader is not None:
            out.update(self.reader.stats.as_dict())
        out.update(self.counts)
        return out


class _ArchivePass:
    """One pass over one archive: its members in order, the tables it may carry, the spool, ``--limit``."""

    def __init__(self, archive: Archive, p: ReadPass) -> None:
        self.archive, self.p, self.sel, self.counts = archive, p, archive.sel, archive.counts
        self.looking = archive.may_carry_tables and not p.meta  # tables may still come in this stream
        self.builders: dict[str, TablesBuilder] = {}
        self.spool = _Spool()
        self.collecting = True  # False once --limit is reached (the stream may still be read for tables)
        self.finished = False  # True once the rest of the stream is not needed

    def stream(self, reader: ArchiveReader) -> Iterator[ImageRecord]:
        """Records of every member; a damaged archive ends as one failure record."""
        members = reader.members(self.p.stop)
        try:
            for m in members:
                yield from self._member(m)
                if self.finished:
                    return
        except ArchiveError as exc:
            members.close()
            yield from self._broken(exc)
        finally:
            members.close()

    def finish(self) -> Iterator[ImageRecord]:
        """After the stream: hand out what is still spooled (without metadata if no tables came)."""
        if not self.spool.entries:
            return
        if self.looking and self.archive.may_carry_tables and not self.p.meta:
            self.p.warn(f"{self.archive.url}: no nuScenes tables in the archive; metadata stays empty "
                        "(pass --nuscenes-meta)")
        yield from self._drain()

    def _member(self, m: Member) -> Iterator[ImageRecord]:
        rel = dataroot_relative(m.name)
        tb = table_of(rel)
        if tb is not None:
            yield from self._table(m, *tb)
            if not self.finished:
                self.counts["members_skipped"] += 1
            return
        if not self.sel.wants(rel):
            self.counts["members_skipped"] += 1
            return
        self.archive.seen += 1
        if not self.collecting:
            return
        if not m.isfile:
            yield from self._unreadable(m, rel)
        elif self.looking:
            yield from self._hold(m, rel)
        else:
            d = self.p.take(rel)
            if d == STOP:
                self.finished = True
            elif d == ADMIT:
                yield self.p.record(rel, data=m.read())

    def _table(self, m: Member, version: str, table: str) -> Iterator[ImageRecord]:
        """Add a table member while looking; once the tables are complete (or unusable) release the spool."""
        if not (self.looking and m.isfile):
            return
        b = self.builders.setdefault(version, TablesBuilder(version, keep=self.sel.wants))
        if b.wants(table):
            try:
                b.add(table, m.reader().read)
            except TablesError as exc:
                self.p.warn(f"{self.archive.url}: unusable nuScenes tables ({exc}); metadata stays empty")
                self.looking = False
            if self.looking and b.complete():
                self.p.add_tables(b.build())
                self.counts["tables_found"] += 1
                self.looking = False
        if not self.looking:
            self.builders.clear()
            yield from self._drain()
            if not self.collecting:
                self.finished = True

    def _unreadable(self, m: Member, rel: str) -> Iterator[ImageRecord]:
        self.counts["unreadable_members"] += 1
        if rel not in self.p.skip:
            yield ImageRecord(path=rel, error=f"archive member unreadable: not a regular file "
                                              f"(tar type {m._info.type!r})")

    def _hold(self, m: Member, rel: str) -> Iterator[ImageRecord]:
        """Spool a wanted image while the tables may still come (admitted now unless scenes need the tables)."""
        admitted = False
        if not self.p.scenes:
            if self.p.admit(rel) == STOP:
                self.collecting = False
                self.finished = not self.spool.entries
                return
            admitted = True
        skipped = rel in self.p.skip
        self.spool.add(rel, None if skipped else m.read(), skipped, admitted)
        self.counts["spooled_images"] += 1
        if self.spool.bytes > SPOOL_LIMIT:
            self.p.warn(f"{self.archive.url}: no nuScenes tables in the first {SPOOL_LIMIT >> 20} MiB of images; "
                        "going on without metadata (pass --nuscenes-meta)")
            self.looking = False
            yield from self._drain()

    def _drain(self) -> Iterator[ImageRecord]:
        p = self.p
        for rel, data, skipped, admitted in self.spool.drain():
            if not admitted:
                d = p.admit(rel)
                if d == STOP:
                    break
                if d == DROP:
                    continue
            if skipped:
                p.count("skipped_done")
                continue
            yield p.record(rel, data=data)

    def _broken(self, exc: ArchiveError) -> Iterator[ImageRecord]:
        """One failure record for a damaged archive: on the member where it broke, else on the archive."""
        url = self.archive.url
        self.counts["errors"] += 1
        self.p.error(f"{url}: {exc}")
        where = dataroot_relative(exc.member) if exc.member else None
        path = where if where and self.sel.wants(where) else url
        if path not in self.p.skip:
            yield ImageRecord(path=path, error=str(exc) if where is None or path == where
                              else f"{exc} (in member {exc.member})")


# --------------------------------------------------------------------------- tables from --nuscenes-meta & co

S = TypeVar("S", bound=TableSink)


def fill_from_archive(url: str, anon: bool | None, make: Callable[[str], S]) -> S:
    """Stream an archive until the tables of its first version are complete (maps etc. are never read), feeding each
    table member to the sink ``make(version)`` made for its version; that sink is returned.

    Raises NoTablesError when the archive is missing or holds no table members, TablesError when they are broken.
    """
    reader = ArchiveReader(url, anon=anon)
    sinks: dict[str, S] = {}
    members = reader.members()
    try:
        for m in members:
            tb = table_of(dataroot_relative(m.name))
            if tb is None or not m.isfile:
                continue
            sink = sinks.get(tb[0])
            if sink is None:
                sink = sinks[tb[0]] = make(tb[0])
            if sink.wants(tb[1]):
                sink.add(tb[1], m.reader().read)
            if sink.complete():
                return sink
    except ArchiveMissing as exc:
        raise NoTablesError(f"{url}: {exc}") from None
    except ArchiveError as exc:
        raise TablesError(f"{url}: {exc}") from None
    finally:
        members.close()
    missing = {v: b.missing() for v, b in sinks.items()}
    if missing:
        raise MissingTables(f"{url} holds no complete nuScenes tables (missing {missing})")
    raise NoTablesError(f"{url} holds no complete nuScenes tables (no v1.0-*/*.json members)")


def fill_from_location(uri: str, anon: bool | None, make: Callable[[str], S]) -> list[S]:
    """Sinks (one per table version, ``make(version)``) fed from a ``v1.0-*`` folder, a dataroot (local or s3) or an
    archive: the one place that knows where tables can live.

    Raises NoTablesError when the location holds no tables, TablesError when they are broken.
    """
    if is_archive_name(uri):
        return [fill_from_archive(uri, anon, make)]
    fs, path = fsutil.url_to_fs(uri, anon)
    path = path.rstrip("/")
    if fs.exists(f"{path}/sample_data.json"):
        return [fill_from_dir(fs, path, make(path.rsplit("/", 1)[-1]))]
    dirs = find_version_dirs(fs, path)
    if not dirs:
        raise NoTablesError(f"{uri} holds no nuScenes tables (expected a v1.0-* folder with sample_data.json, "
                            "a dataroot holding one, or a meta .tgz)")
    return [fill_from_dir(fs, d, make(d.rsplit("/", 1)[-1])) for d in dirs]


def tables_from_archive(url: str, anon: bool | None, sel: Selection) -> list[NuScenesTables]:
    """The tables of an archive's first version (``fill_from_archive``), joined."""
    return [fill_from_archive(url, anon, lambda v: TablesBuilder(v, keep=sel.wants)).build()]


def tables_from_location(uri: str, anon: bool | None, sel: Selection) -> list[NuScenesTables]:
    """The tables of a ``v1.0-*`` folder, a dataroot (local or s3) or an archive (``fill_from_location``), joined."""
    return [b.build() for b in fill_from_location(uri, anon, lambda v: TablesBuilder(v, keep=sel.wants))]
