"""fsspec helpers: one way to open, list and atomically write local paths and ``s3://`` URLs."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from typing import Any, Iterator

import fsspec
from fsspec import AbstractFileSystem

from .errors import JobError, StorageError

log = logging.getLogger(__name__)

PUBLIC_BUCKETS: frozenset[str] = frozenset({"motional-nuscenes"})

# How S3 requests are retried, for every S3 client of the job (s3fs's botocore client here; a boto3 client takes the
# same ``s3_config()``): botocore's "standard" mode retries throttling, 5xx answers, timeouts and dropped connections
# with exponential backoff and jitter (at most 20 s between tries), S3_MAX_ATTEMPTS tries in all; the standard
# AWS_RETRY_MODE and AWS_MAX_ATTEMPTS variables change both when set. Reads of archive ranges and objects are retried
# READ_RETRIES more times on top (job.sources.remote.retry): a short read or a reset stream is no HTTP error, so
# botocore does not see it. What still fails ends the command with one line (StorageError, exit 1); the same command
# resumes.
S3_RETRY_MODE = "standard"
S3_MAX_ATTEMPTS = 6
READ_RETRIES = 2
READ_BACKOFF_S = 1.0


def s3_attempts() -> int:
    """How many times an S3 request is tried (AWS_MAX_ATTEMPTS when set, else S3_MAX_ATTEMPTS)."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else S3_MAX_ATTEMPTS


def s3_config() -> dict[str, Any]:
    """botocore ``Config`` arguments of every S3 client of the job: retry mode and attempts, time-outs."""
    mode = os.environ.get("AWS_RETRY_MODE", "").strip() or S3_RETRY_MODE
    return {"retries": {"mode": mode, "max_attempts": s3_attempts()}, "connect_timeout": 20, "read_timeout": 60}


def storage_options(url: str, anon: bool | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: anonymous access for known public buckets unless told otherwise.

    ``AWS_ENDPOINT_URL`` (used by the tests' moto server and by S3-compatible stores) is honoured by
    botocore itself, so no endpoint is set here.
    """
    protocol = fsspec.utils.get_protocol(url)
    if protocol not in ("s3", "s3a"):
        return {}
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if anon is None:
        anon = bucket in PUBLIC_BUCKETS
    # no listings cache: other writers (a resumed attempt, the instance script, a shard) change a run's folders
    # while this process looks at them, and resume and the completeness check must see what is there now
    opts: dict[str, Any] = {"anon": bool(anon), "config_kwargs": s3_config(), "use_listings_cache": False}
    if bucket in PUBLIC_BUCKETS:
        opts["client_kwargs"] = {"region_name": "ap-northeast-1"}
    return opts


def is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage or network fault (what retries are for), not bad data or a bug."""
    if isinstance(exc, StorageError):
        return True
    if isinstance(exc, (JobError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return False
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    module = type(exc).__module__.split(".", 1)[0]
    return module in ("botocore", "aiobotocore", "aiohttp", "s3fs", "urllib3", "fsspec")


def describe_fault(exc: BaseException) -> str:
    """One short line for a storage fault (the first line of its message, the S3 error code when there is one)."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    cause = exc.__cause__ or exc.__context__
    if cause is not None and type(cause).__module__.startswith("botocore"):
        text = str(cause).strip().splitlines()[0][:200] or text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def faults(op: str, url: str) -> Iterator[None]:
    """Turn a storage or network fault inside the block into one StorageError naming ``op`` and ``url``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if not is_transport_error(exc):
            raise
        tries = f" after {s3_attempts()} attempts" if "://" in url else ""
        raise StorageError(f"{op} {url} failed{tries} ({describe_fault(exc)}); committed work is kept: run the same "
                           "command to resume") from exc


def url_to_fs(url: str, anon: bool | None = None) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URL."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url, anon))
    return fs, path


def is_local(fs: AbstractFileSystem) -> bool:
    """True for the local file system, where rename is atomic."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def join(base: str, *parts: str) -> str:
    """Join URL/path parts with ``/`` (fsspec style) keeping the scheme of ``base``."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` so readers see either nothing or the whole file.

    Locally: a temporary sibling then ``os.replace``. On object stores a single PUT is already
    all-or-nothing, so the object is written in place.
    """
    fs, path = url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if is_local(fs):
        os.makedirs(parent or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        with faults("writing", url), fs.open(path, "wb") as f:
            f.write(data)


def write_json(url: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(url, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(url: str) -> Any:
    """Read a JSON file from a local path or URL."""
    fs, path = url_to_fs(url)
    with faults("reading", url), fs.open(path, "rb") as f:
        return json.loads(f.read())


def exists(url: str) -> bool:
    """True if the file or folder exists."""
    fs, path = url_to_fs(url)
    with faults("looking up", url):
        return bool(fs.exists(path))
