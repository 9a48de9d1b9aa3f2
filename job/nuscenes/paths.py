"""nuScenes dataroot paths: image and table-folder names, dataroot-relative paths, table versions in lookup order."""
from __future__ import annotations

import os
import re
from typing import Iterable

LAYOUT_DIRS: frozenset[str] = frozenset({"samples", "sweeps"})
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
_VERSION_RE = re.compile(r"^v\d+\.\d+-[A-Za-z0-9_\-]+$")
# Preference when a dataroot holds several table versions (mini is a subset of trainval).
_VERSION_PRIORITY = ("v1.0-trainval", "v1.0-test", "v1.0-mini")


def is_image_name(name: str) -> bool:
    """True for file names the job decodes as images (by extension)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_version_dir(name: str) -> bool:
    """True for a tables folder name like ``v1.0-mini`` / ``v1.0-trainval``."""
    return bool(_VERSION_RE.match(name))


def dataroot_relative(path: str) -> str:
    """The path relative to the nuScenes dataroot, whatever folder the files sat under.

    ``./samples/CAM_FRONT/x.jpg`` and ``nuscenes/samples/CAM_FRONT/x.jpg`` both become
    ``samples/CAM_FRONT/x.jpg``; paths outside the nuScenes layout are only cleaned of ``./``.
    """
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    for i, p in enumerate(parts[:-1]):
        if p in LAYOUT_DIRS or p == "maps" or is_version_dir(p):
            return "/".join(parts[i:])
    return "/".join(parts)


def table_of(path: str) -> tuple[str, str] | None:
    """``(version, table)`` for a dataroot-relative ``v1.0-*/<table>.json``, else None."""
    parts = path.split("/")
    if len(parts) == 2 and is_version_dir(parts[0]) and parts[1].endswith(".json"):
        return parts[0], parts[1][: -len(".json")]
    return None


def version_order(versions: Iterable[str]) -> list[str]:
    """Versions in lookup priority: trainval, test, mini, then the others by name."""
    def key(v: str) -> tuple[int, str]:
        return (_VERSION_PRIORITY.index(v) if v in _VERSION_PRIORITY else len(_VERSION_PRIORITY), v)

    return sorted(set(versions), key=key)
