"""Reading objects from a store: ranged GETs of a remote object as one sequential stream, each retried, and the retry
rule itself (``retry``: transient faults tried again, then one StorageError). How S3 requests are retried below this
(botocore's mode and attempts) is ``job.fsutil``'s, in one place."""
from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import logging
import time
from typing import Any, Callable

from .. import fsutil
from ..errors import StorageError

log = logging.getLogger(__name__)

TAR_BUFSIZE = 1 << 20
S3_BLOCK = 16 << 20
S3_PREFETCH = 4


def retry(fn: Callable[[], Any], what: str, *, retries: int | None = None, backoff: float | None = None,
          on_retry: Callable[[], None] | None = None) -> Any:
    """Call ``fn``; on a transient error try again ``retries`` times, sleeping backoff·2^k between tries; then raise
    a StorageError naming ``what`` (one line; the same command resumes).

    Missing objects and denied access are not transient and raise at once. Defaults: ``fsutil.READ_RETRIES`` and
    ``fsutil.READ_BACKOFF_S``, on top of botocore's own retries (``fsutil.s3_config``).
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
                    raise StorageError(f"{what} failed after {retries + 1} tries of {fsutil.s3_attempts()} attempts "
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


def open_raw(url: str, anon: bool | None = None, *, block_size: int = S3_BLOCK,
             prefetch: int = S3_PREFETCH) -> tuple[Any, int | None]:
    """(binary file object positioned at 0, size or None) for a local path or object-store URL."""
    fs, path = fsutil.url_to_fs(url, anon)
    if fsutil.is_local(fs):
        return open(path, "rb", buffering=TAR_BUFSIZE), None
    info = retry(lambda: fs.info(path), f"HEAD {url}")
    return io.BufferedReader(RangeReader(fs, path, int(info["size"]), block_size=block_size, prefetch=prefetch),
                             buffer_size=TAR_BUFSIZE), int(info["size"])


