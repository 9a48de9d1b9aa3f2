"""Archive reader: a ``.tgz`` / ``.tar`` (local or ``s3://``) read as one sequential stream, member by member.

Nothing is extracted to disk and nothing is downloaded first. Layers, bottom up:

* raw bytes: a local file, or ``RangeReader`` for object stores: consecutive ranged GETs of ``block_size`` bytes,
  ``prefetch`` of them in flight, each retried with exponential backoff;
* gzip (detected by its magic bytes, not the name): isal's ``igzip_threaded`` (decompresses in its own thread,
  outside the GIL) or the standard library's ``gzip``;
* ``tarfile`` in stream mode (``r|``): members in archive order; members nobody reads are decompressed and dropped.

A damaged archive (truncated, broken gzip, a corrupt tar header) raises ``ArchiveError`` from
``ArchiveReader.members()``; members already handed out stay valid. The standard library's ``tarfile`` stops
silently at a corrupt header in the middle of a stream; the reader checks that what follows the last member is tar
padding and reports it otherwise.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import logging
import tarfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Generator

from ..errors import StorageError
from .remote import S3_BLOCK, S3_PREFETCH, TAR_BUFSIZE, RangeReader, open_raw

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
DECODERS: tuple[str, ...] = ("isal", "gzip")
GZIP_BLOCK = 256 << 10  # isal's decompress-thread block: also the most a broken stream loses before the error
_TRAILER_CHECK = 16 << 20  # bytes after the last member read to check it is only padding


class ArchiveError(IOError):
    """The archive cannot be read on from here; ``member`` is where it broke (None: between members)."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class ArchiveMissing(ArchiveError):
    """The archive does not exist: a wrong path or key, not a damaged archive."""


class _Counting(io.RawIOBase):
    """Counts the bytes read through it."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner, self.count = inner, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.inner.read(len(b))
        n = len(data)
        b[:n] = data
        self.count += n
        return n

    def read(self, n: int = -1) -> bytes:
        # read1: at most one underlying read, so a stream that breaks loses only that read's bytes
        # (a looping read(n) would drop everything decompressed since the call began).
        data = self.inner.read1(n) if n > 0 and hasattr(self.inner, "read1") else self.inner.read(n)
        self.count += len(data)
        return data


@dataclass
class ArchiveStats:
    """What reading one archive cost and found (goes into the manifest)."""

    url: str
    compressed: bool | None = None
    decoder: str | None = None
    bytes_read: int = 0  # from storage (compressed)
    bytes_decompressed: int = 0
    members: int = 0
    retries: int = 0
    seconds: float = 0.0
    complete: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        # ``seconds`` is wall time from open to end, waits on the consumer included (not a throughput)
        return {**self.__dict__, "seconds": round(self.seconds, 3)}


@dataclass
class Member:
    """One archive member; read it (``read()`` / ``reader``) before asking for the next."""

    name: str  # as stored (``./samples/...`` kept as is)
    size: int
    isfile: bool
    _tar: tarfile.TarFile
    _info: tarfile.TarInfo
    _stats: ArchiveStats | None = None

    def read(self) -> bytes:
        """All the member's bytes; raises ArchiveError if the stream breaks inside it."""
        data = self.reader().read()
        if len(data) != self.size:
            err = ArchiveError(f"archive truncated: member ends after {len(data)} of {self.size} bytes", self.name)
            if self._stats is not None:
                self._stats.error = str(err)
            raise err
        return data

    def reader(self) -> _MemberReader:
        """A file object over the member's bytes (for parsing big members as they stream)."""
        f = self._tar.extractfile(self._info) if self.isfile else None
        if f is None:
            raise ArchiveError(f"archive member unreadable: not a regular file (tar type {self._info.type!r})",
                               self.name)
        return _MemberReader(f, self.name, self._stats)


class _MemberReader:
    """``read(n)`` over one member that reports a broken stream as ArchiveError (and in the stats)."""

    def __init__(self, f: Any, name: str, stats: ArchiveStats | None) -> None:
        self._f, self._name, self._stats = f, name, stats

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except Exception as exc:
            err = _archive_error(exc, self._name)
            if self._stats is not None:
                self._stats.error = str(err)
            raise err from exc


def storage_fault(exc: BaseException) -> StorageError | None:
    """The StorageError behind ``exc`` (raised by a range read, possibly re-raised through gzip or tar), if any: the
    network failed, the archive is not damaged."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, StorageError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _archive_error(exc: BaseException, member: str | None = None) -> Exception:
    """What a failure while streaming becomes: its StorageError (network), else an ArchiveError (damaged data)."""
    return storage_fault(exc) or (exc if isinstance(exc, ArchiveError) else ArchiveError(_describe(exc), member))


def _describe(exc: BaseException) -> str:
    """``"<category>: <detail>"`` for an exception raised while streaming an archive."""
    msg = str(exc) or type(exc).__name__
    kind = f"{type(exc).__module__}.{type(exc).__name__}".lower()
    if isinstance(exc, EOFError) or "unexpected end of data" in msg:
        return f"archive truncated: {msg}"
    if isinstance(exc, gzip.BadGzipFile) or "gzip" in kind or "zlib" in kind or "isal" in kind or "crc" in msg.lower():
        return f"broken gzip stream: {msg}"
    if isinstance(exc, tarfile.TarError):
        return f"corrupt tar archive: {msg}"
    return f"archive read error: {type(exc).__name__}: {msg}"


def open_decompressed(raw: Any, decoder: str = "isal") -> tuple[Any, bool]:
    """(stream of tar bytes, whether it was gzip) for a raw archive stream (gzip detected by magic)."""
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw, buffer_size=TAR_BUFSIZE)
    head = buffered.peek(2)[:2]
    if head != GZIP_MAGIC:
        return buffered, False
    if decoder == "isal":
        try:
            from isal import igzip_threaded
        except ImportError:  # pragma: no cover - isal is a dependency
            decoder = "gzip"
        else:
            return igzip_threaded.open(buffered, "rb", threads=1, block_size=GZIP_BLOCK), True
    if decoder == "gzip":
        return gzip.GzipFile(fileobj=buffered, mode="rb"), True
    raise ValueError(f"unknown gzip decoder {decoder!r}; valid: {', '.join(DECODERS)}")


class ArchiveReader:
    """Reads one archive sequentially; ``members()`` yields its members in order."""

    def __init__(self, url: str, *, anon: bool | None = None, decoder: str = "isal",
                 block_size: int = S3_BLOCK, prefetch: int = S3_PREFETCH) -> None:
        self.url, self.anon, self.decoder = url, anon, decoder
        self.block_size, self.prefetch = block_size, prefetch
        self.stats = ArchiveStats(url=url)
        self._counted_raw: _Counting | None = None

    @property
    def position(self) -> int:
        """Bytes read from storage so far (compressed; read-ahead included), live while ``members()`` runs."""
        return self._counted_raw.count if self._counted_raw is not None else 0

    def members(self, stop: threading.Event | None = None) -> Generator[Member, None, None]:
        """Every member, in order. Raises ArchiveError where the archive breaks; stops early on ``stop``."""
        t0 = time.perf_counter()
        raw = counted_raw = stream = counted = tar = None
        current: str | None = None
        try:
            try:
                raw, _ = open_raw(self.url, self.anon, block_size=self.block_size, prefetch=self.prefetch)
            except FileNotFoundError:
                raise ArchiveMissing(f"archive missing: {self.url} does not exist") from None
            except StorageError:
                raise
            except Exception as exc:
                raise ArchiveError(f"archive unreadable: cannot open {self.url} ({type(exc).__name__}: {exc})") from exc
            counted_raw = self._counted_raw = _Counting(raw)
            stream, gz = open_decompressed(io.BufferedReader(counted_raw, buffer_size=TAR_BUFSIZE), self.decoder)
            self.stats.compressed = gz
            self.stats.decoder = self.decoder if gz else None
            counted = _Counting(stream)
            try:
                tar = tarfile.open(fileobj=counted, mode="r|", bufsize=TAR_BUFSIZE)
            except tarfile.ReadError as exc:
                raise storage_fault(exc) or ArchiveError(f"not a tar archive: {_describe(exc)}") from exc
            except Exception as exc:
                raise _archive_error(exc) from exc
            while stop is None or not stop.is_set():
                try:
                    info = tar.next()
                except Exception as exc:
                    raise _archive_error(exc, current) from exc
                if info is None:
                    self._check_trailer(tar, counted, current)
                    self.stats.complete = True
                    return
                tar.members.clear()  # type: ignore[attr-defined]  # stream mode keeps every TarInfo (100k+) alive
                current = info.name
                self.stats.members += 1
                yield Member(info.name, info.size, info.isreg(), tar, info, self.stats)
        except (ArchiveError, StorageError) as exc:
            self.stats.error = str(exc)
            raise
        finally:
            if isinstance(raw, io.BufferedReader) and isinstance(raw.raw, RangeReader):
                self.stats.retries = raw.raw.retried
            self.stats.bytes_read = counted_raw.count if counted_raw is not None else 0
            self.stats.bytes_decompressed = counted.count if counted is not None else 0
            self.stats.seconds += time.perf_counter() - t0
            for closable in (c for c in (tar, stream, raw) if c is not None):
                with contextlib.suppress(Exception):  # closing a broken stream must not hide the real error
                    closable.close()

    def _check_trailer(self, tar: tarfile.TarFile, counted: _Counting, last: str | None) -> None:
        """After the last member only zero padding may follow (and the gzip trailer must check out)."""
        buffered = getattr(tar.fileobj, "buf", b"")  # tarfile._Stream keeps read-ahead here
        try:
            rest = counted.read(_TRAILER_CHECK)
        except Exception as exc:
            raise _archive_error(exc) from exc
        if (buffered and buffered.strip(b"\0")) or rest.strip(b"\0"):
            raise ArchiveError(f"corrupt tar archive: bad header after member {last or '(none)'}; "
                               "the rest of the archive is unreadable")
        if len(rest) == _TRAILER_CHECK:
            raise ArchiveError("corrupt tar archive: unexpected data after the end of the archive")
