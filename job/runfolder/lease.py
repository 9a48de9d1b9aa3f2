"""One writer per output: the ``_LEASE`` file (``RunLayout.lease``).

The first writer of an output creates ``_LEASE`` atomically — an S3 conditional write (``If-None-Match: *``) on
``s3://``, an exclusive create (``link``) locally — holding its owner (the attempt id that also names its parts), host,
pid, start and heartbeat. A thread renews the heartbeat every ``HEARTBEAT_S`` seconds, each time only if the lease is
still the one it wrote (``If-Match`` on the ETag; locally the same compare under ``flock``). A second writer that
finds a live lease stops at once with :class:`LeaseHeld` (exit 75: "come back later"), naming the holder, its host and
the age of its heartbeat. A lease whose heartbeat is older than the timeout (``--lease-timeout``, default
``job.config.LEASE_TIMEOUT_S``) belonged to a writer that died without releasing it (a SIGKILL, a lost instance): it is taken over,
again conditionally, so of two writers finding the same stale lease only one gets it; a lease held by a process of this
host that no longer exists is taken over at once (a local run killed with SIGKILL resumes right away). A writer whose lease was taken
(it lost contact for longer than the timeout) notices at its next renewal and commits nothing more
(:class:`LeaseLost`, exit 75). ``--overwrite`` does not bypass a live lease. Readers never need it.

The timeout, against the cloud's clocks: a spot reclaim gives a two-minute notice and the instance script stops the
job with ``docker stop -t 35`` (it commits and exits 75 within 30 s, releasing the lease); a writer still alive
renews every 30 s, so only a dead writer's heartbeat grows old. Ten minutes is far above any pause of a live writer
(a long S3 retry, the index build holding the interpreter) and is the longest a replacement waits after a hard kill.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import threading
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from .. import fsutil
from ..config import LEASE_TIMEOUT_S
from ..errors import JobError

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0


class LeaseHeld(JobError):
    """Another live writer holds the output: stop at once, touch nothing; the same command later resumes."""

    exit_code = 75


class LeaseLost(LeaseHeld):
    """This writer's lease was taken over (its heartbeat stopped for longer than the timeout): commit nothing more."""


def new_owner() -> str:
    """A fresh attempt id (12 hex digits): the lease's owner and the suffix of every part the attempt commits."""
    return uuid.uuid4().hex[:12]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class LeaseInfo:
    """What ``_LEASE`` holds."""

    owner: str
    host: str
    pid: int
    started: str
    heartbeat: str

    def age_s(self, now: dt.datetime | None = None) -> float:
        """Seconds since the last heartbeat."""
        beat = dt.datetime.fromisoformat(self.heartbeat)
        return max(0.0, ((now or _now()) - beat).total_seconds())

    def gone(self) -> bool:
        """The holder ran on this host and its process is gone (killed, crashed): no need to wait for the timeout."""
        if self.host != platform.node():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False

    def describe(self) -> str:
        return f"attempt {self.owner} on host {self.host} (pid {self.pid}), last heartbeat {self.age_s():.0f} s ago"

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseInfo | None:
        try:
            raw = json.loads(data)
            return cls(owner=str(raw["owner"]), host=str(raw["host"]), pid=int(raw["pid"]),
                       started=str(raw["started"]), heartbeat=str(raw["heartbeat"]))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as stale


class _S3Store:
    """``_LEASE`` on S3: conditional writes; the token is the object's ETag."""

    def __init__(self, url: str) -> None:
        self.fs, path = fsutil.url_to_fs(url)
        self.bucket, _, self.key = path.partition("/")

    def _call(self, op: str, **kw: Any) -> Any:
        return self.fs.call_s3(op, Bucket=self.bucket, Key=self.key, **kw)

    def create(self, data: bytes) -> str | None:
        try:
            return str(self._call("put_object", Body=data, IfNoneMatch="*")["ETag"])
        except (FileExistsError, PermissionError, OSError) as exc:
            if _precondition(exc):
                return None
            raise

    def read(self) -> tuple[bytes, str] | None:
        try:
            got = self._call("get_object")
        except FileNotFoundError:
            return None
        from fsspec.asyn import sync

        body = got["Body"]
        try:
            data = sync(self.fs.loop, body.read)
        finally:
            body.close()
        return bytes(data), str(got["ETag"])

    def replace(self, data: bytes, token: str) -> str | None:
        try:
            return str(self._call("put_object", Body=data, IfMatch=token)["ETag"])
        except (FileNotFoundError, OSError) as exc:
            if isinstance(exc, FileNotFoundError) or _precondition(exc):
                return None
            raise

    def delete(self, token: str) -> None:
        try:
            self._call("delete_object", IfMatch=token)
        except (FileNotFoundError, OSError) as exc:
            if not (isinstance(exc, FileNotFoundError) or _precondition(exc)):
                raise


def _precondition(exc: BaseException) -> bool:
    """Whether an S3 error is a failed precondition (412) or a conflicting conditional write (409)."""
    text = f"{type(exc).__name__} {exc} {getattr(exc, '__cause__', '')}"
    return any(s in text for s in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"))


class _LocalStore:
    """``_LEASE`` on a local file system: exclusive create by ``link``; compare-and-replace under ``flock`` of the
    folder; the token is a hash of the content."""

    def __init__(self, url: str) -> None:
        self.path = fsutil.url_to_fs(url)[1]
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive ``flock`` on the output's folder (nothing left behind)."""
        import fcntl

        fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _write_tmp(self, data: bytes) -> str:
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, data: bytes) -> str | None:
        tmp = self._write_tmp(data)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)
        return hashlib.sha256(data).hexdigest()

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def replace(self, data: bytes, token: str) -> str | None:
        with self._locked():
            now = self.read()
            if now is None or now[1] != token:
                return None
            os.replace(self._write_tmp(data), self.path)
        return hashlib.sha256(data).hexdigest()

    def delete(self, token: str) -> None:
        with self._locked():
            now = self.read()
            if now is not None and now[1] == token:
                os.remove(self.path)


class Lease:
    """The lease of one output, held by this process (see the module docstring). Use :meth:`acquire`."""

    def __init__(self, url: str, info: LeaseInfo, store: Any, token: str, heartbeat_s: float) -> None:
        self.url, self.info, self._store, self._token = url, info, store, token
        self.heartbeat_s = heartbeat_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> str:
        return self.info.owner

    @classmethod
    def acquire(cls, url: str, *, owner: str | None = None, stale_after_s: float = LEASE_TIMEOUT_S,
                heartbeat_s: float = HEARTBEAT_S) -> Lease:
        """Take the lease at ``url`` (creating it, or taking over a stale one), start its heartbeat, or raise
        :class:`LeaseHeld` naming the live holder."""
        with fsutil.faults("taking the writer lease", url):
            return cls._acquire(url, owner=owner, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s)

    @classmethod
    def for_output(cls, url: str, timeout_s: float) -> Lease:
        """The lease of an output for a writer (``job run``/``embed``/``merge``): stale after ``timeout_s``
        (``--lease-timeout``) without a heartbeat, renewed four times within it (at most every ``HEARTBEAT_S``)."""
        return cls.acquire(url, stale_after_s=timeout_s, heartbeat_s=min(HEARTBEAT_S, timeout_s / 4))

    @classmethod
    def _acquire(cls, url: str, *, owner: str | None, stale_after_s: float, heartbeat_s: float) -> Lease:
        store: Any = _LocalStore(url) if fsutil.is_local(fsutil.url_to_fs(url)[0]) else _S3Store(url)
        stamp = _now().isoformat()
        info = LeaseInfo(owner=owner or new_owner(), host=platform.node(), pid=os.getpid(), started=stamp,
                         heartbeat=stamp)
        for _ in range(3):  # the holder may release it between our create and our read: look again
            token = store.create(info.to_bytes())
            if token is not None:
                break
            found = store.read()
            if found is None:
                continue
            data, their_token = found
            holder = LeaseInfo.from_bytes(data)
            if holder is not None and holder.age_s() < stale_after_s and not holder.gone():
                raise LeaseHeld(f"{url} is held by {holder.describe()}; another writer is working on this output "
                                f"(it is stale after {stale_after_s:.0f} s without a heartbeat); run the same "
                                "command again later, or wait for that writer to finish")
            token = store.replace(info.to_bytes(), their_token)
            if token is not None:
                log.warning("took over the stale lease %s of %s", url,
                            holder.describe() if holder else "an unreadable writer")
                break
        else:
            raise LeaseHeld(f"{url} changes hands too often to take it; run the same command again later")
        lease = cls(url, info, store, token, heartbeat_s)
        lease._thread = threading.Thread(target=lease._beat, name="lease-heartbeat", daemon=True)
        lease._thread.start()
        return lease

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.renew()

    def renew(self) -> None:
        """Write a new heartbeat if the lease is still ours; else remember that it was lost."""
        with self._lock:
            if self.lost is not None or self._stop.is_set():
                return
            info = LeaseInfo(**{**asdict(self.info), "heartbeat": _now().isoformat()})
            try:
                token = self._store.replace(info.to_bytes(), self._token)
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next beat
                log.warning("could not renew the lease %s: %s", self.url, exc)
                return
            if token is None:
                found = self._store.read()
                holder = LeaseInfo.from_bytes(found[0]) if found else None
                self.lost = (f"the lease on {self.url} was taken over by "
                             f"{holder.describe() if holder else 'another writer'}")
                log.error("%s: committing nothing more", self.lost)
                return
            self.info, self._token = info, token

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the lease was taken over (called before every commit)."""
        if self.lost is not None:
            raise LeaseLost(f"{self.lost}; this writer stops without committing more (exit 75)")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self.lost is None:
                try:
                    self._store.delete(self._token)
                except Exception as exc:  # noqa: BLE001 - a stale lease is taken over later anyway
                    log.warning("could not release the lease %s: %s", self.url, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
