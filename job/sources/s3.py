"""S3 prefix source: loose files under an object-store prefix, listed once and read by a bounded pool of GETs."""
from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Iterator

from .. import fsutil
from ..errors import StorageError, UsageError
from ..nuscenes import dataroot_relative, find_version_dirs
from .base import VALID_KINDS, ImageRecord, Input, ReadPass, Selection, layout_subdirs, split_dataroot, unreachable
from .remote import retry

S3_READERS = 16  # concurrent GETs for loose files under an s3:// prefix


class S3Prefix(Input):
    """Loose files under an object-store prefix, read concurrently (bounded) with retries."""

    kind = "s3-prefix"

    def __init__(self, url: str, sel: Selection, anon: bool | None) -> None:
        self.url = url
        self.fs, path = fsutil.url_to_fs(url, anon)
        self.protocol = url.split("://", 1)[0]
        self.dataroot, sub = split_dataroot(path)
        try:
            present = [e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(self.dataroot, detail=False)] if not sub else []
        except FileNotFoundError:
            raise UsageError(f"source {url!r} does not exist; valid: {VALID_KINDS}") from None
        except Exception as exc:
            raise unreachable("listing", url, exc) from None
        dirs = layout_subdirs(sub, sel, present)
        tops = [f"{self.dataroot}/{d}" for d in dirs] if dirs is not None else [path.rstrip("/")]
        found = self._find(tops, sel)
        if not found:
            raise UsageError(f"source {url!r} holds no wanted image files; valid: {VALID_KINDS}")
        self.paths = found
        self.total = len(found)
        self.retried = 0

    def _find(self, tops: list[str], sel: Selection) -> list[tuple[str, str]]:
        """Sorted (dataroot-relative path, key) of the wanted images under the prefixes ``tops``."""
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
        return found

    def table_dirs(self) -> list[tuple[Any, str]]:
        return [(self.fs, d) for d in find_version_dirs(self.fs, self.dataroot)]

    def _count_retry(self) -> None:
        self.retried += 1

    def _get(self, key: str) -> bytes:
        return retry(lambda: self.fs.cat_file(key), f"GET {key}", on_retry=self._count_retry)

    def produce(self, p: ReadPass) -> Iterator[ImageRecord]:
        window: list[tuple[str, cf.Future]] = []
        with cf.ThreadPoolExecutor(S3_READERS, thread_name_prefix="s3get") as pool:
            it = p.admitted(self.paths)
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
                except StorageError:
                    raise  # the network, not the object: the run stops and the same command resumes
                except Exception as exc:  # noqa: BLE001 - one unreadable object must not end the run
                    p.count("read_errors")
                    yield ImageRecord(path=rel, error=f"read error: {type(exc).__name__}: {exc}")
                    continue
                yield p.record(rel, data=data)

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "listed": self.total, "retries": self.retried}
