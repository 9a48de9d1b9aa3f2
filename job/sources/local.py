"""Folder source: a local or mounted dataroot (or any folder of pictures), walked once; records carry the file path."""
from __future__ import annotations

import os
from typing import Any, Iterator

import fsspec

from ..errors import UsageError
from ..nuscenes import IMAGE_EXTENSIONS, dataroot_relative, find_version_dirs, is_image_name
from .base import VALID_KINDS, ImageRecord, Input, ReadPass, Selection, layout_subdirs, split_dataroot


class LocalDir(Input):
    """A folder on a local or mounted file system (s3fs / Mountpoint mounts included)."""

    kind = "folder"

    def __init__(self, root: str, sel: Selection) -> None:
        self.url = os.path.abspath(os.path.expanduser(root))
        if not os.path.exists(self.url):
            raise UsageError(f"source {root!r} does not exist; valid: {VALID_KINDS}")
        if not os.path.isdir(self.url):
            raise UsageError(f"source {root!r} is a file but not a .tgz/.tar archive; valid: {VALID_KINDS}")
        self.dataroot, sub = split_dataroot(self.url)
        present = os.listdir(self.dataroot) if not sub else []
        dirs = layout_subdirs(sub, sel, present)
        self.layout = dirs is not None
        self.paths = self._walk(dirs, sel)
        if not self.paths:
            raise UsageError(f"source {root!r} holds no wanted image files "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}; channels {','.join(sorted(sel.channels))}"
                             f"{', keyframes only' if sel.keyframes_only else ''})")
        self.total = len(self.paths)

    def _walk(self, dirs: list[str] | None, sel: Selection) -> list[tuple[str, str]]:
        """Sorted (dataroot-relative path, file path) of the wanted images under ``dirs`` (None: the whole folder)."""
        found: list[tuple[str, str]] = []
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
                        found.append((rel, os.path.join(dirpath, name)))
        found.sort()
        return found

    def table_dirs(self) -> list[tuple[Any, str]]:
        fs = fsspec.filesystem("file")
        return [(fs, d) for d in find_version_dirs(fs, self.dataroot)]

    def produce(self, p: ReadPass) -> Iterator[ImageRecord]:
        for rel, full in p.admitted(self.paths):
            yield p.record(rel, url=full)

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "dataroot": self.dataroot, "listed": self.total}
