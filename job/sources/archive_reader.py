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

import collections
import concurrent.futures as cf
import contextlib
import gzip
import io
import logging
import tarfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator

from .. import fsutil
from ..errors import StorageError

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
DECODERS: tuple[str, ...] = ("isal", "gzip")
TAR_BUFSIZE = 1 << 20
GZIP_BLOCK = 256 << 10  # isal's decompress-thread block: also the most a broken stream loses before the error
S3_BLOCK = 16 << 20
S3_PREFETCH = 4
_TRAILER_CHECK = 16 << 20  # bytes after the last member read to check it is only padding


class ArchiveError(IOError):
    """The archive cannot be read on from here; ``member`` is where it broke (None: between members)."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class ArchiveMissing(ArchiveError):
    """The archive does not exist: a wrong path or key, not a damaged archive."""


def retry(fn: Callable[[], Any], what: str, *, retries: int | None = None, backoff: float | None = None,
          on_retry: Callable[[], None] | None = None) -> Any:
    """Call ``fn``; on a transient error try again ``retries`` times, sleeping backoff·2^k between tries; then raise
    a StorageError naming ``what`` (one line; the same command resumes).

    Missing objects and denied access are not transient and raise at once. Defaults: ``fsutil.READ_RETRIES`` and
    ``fsutil.READ_BACKOFF_S``, on top of botocore's own retries (``fsutil.S3_CONFIG``).
    """
    retries = fsutil.READ_RETRIES if retries is None else retries
    backoff = fsutil.READ_BACKOFF_S if backoff is None else backoff
    for attempt in range(retries + 1):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except Exception as exc:  # botocore / aiohttp / OS errors all look different
            if attempt == retries:
                if fsutil.is_transport_error(exc):
                    raise StorageError(f"{what} failed after {retries + 1} tries of {fsutil.S3_MAX_ATTEMPTS} attempts "
                                       f"({fsutil.describe_fault(exc)}); committed work is kept: run the same command "
                                       "to resume") from exc
                raise
            delay = backoff * (2 ** attempt)
            log.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(exc).__name__, exc,
                        attempt + 1, retries, delay)
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class RangeReader(io.RawIOBase):
    """Sequential reads of a remote object as ranged GETs, ``prefetch`` blocks ahead, each retried."""

    def __init__(self, fs: Any, path: str, size: int, *, block_size: int = S3_BLOCK, prefetch: int = S3_PREFETCH,
                 retries: int | None = None, backoff: float | None = None) -> None:
        super().__init__()
        self.fs, self.path, self.size = fs, path, size
        self.block_size, self.prefetch = block_size, max(1, prefetch)
        self.retries, self.backoff = retries, backoff
        self.retried = 0
        self._pool = cf.ThreadPoolExecutor(self.prefetch, thread_name_prefix="range")
        self._futures: collections.deque[cf.Future] = collections.deque()
        self._next = 0
        self._buf = b""
        self._off = 0

    def readable(self) -> bool:
        return True

    def _count_retry(self) -> None:
        self.retried += 1

    def _fetch(self, start: int, end: int) -> bytes:
        def get() -> bytes:
            data = self.fs.cat_file(self.path, start=start, end=end)
            if len(data) != end - start:
                raise OSError(f"short read: {len(data)} of {end - start} bytes at {start}")
            return data

        return retry(get, f"GET {self.path} bytes {start}-{end}", retries=self.retries, backoff=self.backoff,
                     on_retry=self._count_retry)

    def _top_up(self) -> None:
        while len(self._futures) < self.prefetch and self._next < self.size:
            end = min(self.size, self._next + self.block_size)
            self._futures.append(self._pool.submit(self._fetch, self._next, end))
            self._next = end

    def readinto(self, b: Any) -> int:
        if self._off >= len(self._buf):
            self._top_up()
            if not self._futures:
                return 0
            self._buf, self._off = self._futures.popleft().result(), 0
            self._top_up()
        n = min(len(b), len(self._buf) - self._off)
        b[:n] = self._buf[self._off: self._off + n]
        self._off += n
        return n

    def close(self) -> None:
        for f in self._futures:
            f.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()


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


def open_raw(url: str, anon: bool | None = None, *, block_size: int = S3_BLOCK,
             prefetch: int = S3_PREFETCH) -> tuple[Any, int | None]:
    """(binary file object positioned at 0, size or None) for a local path or object-store URL."""
    fs, path = fsutil.url_to_fs(url, anon)
    if fsutil.is_local(fs):
        return open(path, "rb", buffering=TAR_BUFSIZE), None
    info = retry(lambda: fs.info(path), f"HEAD {url}")
    return io.BufferedReader(RangeReader(fs, path, int(info["size"]), block_size=block_size, prefetch=prefetch),
                             buffer_size=TAR_BUFSIZE), int(info["size"])


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
