"""fsspec helpers: one way to open, list and atomically write local paths and ``s3://`` URLs."""
from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

PUBLIC_BUCKETS: frozenset[str] = frozenset({"motional-nuscenes"})


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
    opts: dict[str, Any] = {"anon": bool(anon)}
    if bucket in PUBLIC_BUCKETS:
        opts["client_kwargs"] = {"region_name": "ap-northeast-1"}
    return opts


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
        with fs.open(path, "wb") as f:
            f.write(data)


def write_json(url: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(url, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(url: str) -> Any:
    """Read a JSON file from a local path or URL."""
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def exists(url: str) -> bool:
    """True if the file or folder exists."""
    fs, path = url_to_fs(url)
    return fs.exists(path)
