"""Loading a ``v1.0-*`` tables folder from any fsspec file system, and finding such folders under a dataroot."""
from __future__ import annotations

from typing import Any, Callable

from .paths import is_image_name, is_version_dir, version_order
from .schema import NEEDED_TABLES, TablesError
from .tables import NuScenesTables, TablesBuilder


def load_tables_dir(fs: Any, path: str, version: str | None = None, *,
                    keep: Callable[[str], bool] = is_image_name) -> NuScenesTables:
    """Load a ``v1.0-*`` tables folder from any fsspec file system (local or s3)."""
    version = version or path.rstrip("/").rsplit("/", 1)[-1]
    builder = TablesBuilder(version, keep=keep)
    for table in NEEDED_TABLES:
        p = f"{path.rstrip('/')}/{table}.json"
        try:
            with fs.open(p, "rb", block_size=8 << 20) as f:
                builder.add(table, f.read)
        except FileNotFoundError:
            raise TablesError(f"{version}: missing table {table}.json in {path}") from None
    return builder.build()


def find_version_dirs(fs: Any, root: str) -> list[str]:
    """``v1.0-*`` folders holding sample_data.json directly under ``root`` (a dataroot), best first."""
    root = root.rstrip("/")
    try:
        entries = fs.ls(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = {}
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        if e.get("type") == "directory" and is_version_dir(name):
            if fs.exists(f"{root}/{name}/sample_data.json"):
                found[name] = f"{root}/{name}"
    return [found[v] for v in version_order(found)]

