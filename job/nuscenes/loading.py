"""Loading a ``v1.0-*`` tables folder from any fsspec file system, and finding such folders under a dataroot."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from .paths import is_image_name, is_version_dir, version_order
from .schema import MissingTables
from .sink import TableSink
from .tables import NuScenesTables, TablesBuilder

S = TypeVar("S", bound=TableSink)


def fill_from_dir(fs: Any, path: str, sink: S) -> S:
    """Feed ``sink`` the tables it still wants from a ``v1.0-*`` folder on any fsspec file system (local or s3)."""
    for table in sink.missing():
        p = f"{path.rstrip('/')}/{table}.json"
        try:
            with fs.open(p, "rb", block_size=8 << 20) as f:
                sink.add(table, f.read)
        except FileNotFoundError:
            raise MissingTables(f"{sink.version}: missing table {table}.json in {path}") from None
    return sink


def load_tables_dir(fs: Any, path: str, version: str | None = None, *,
                    keep: Callable[[str], bool] = is_image_name) -> NuScenesTables:
    """Load a ``v1.0-*`` tables folder from any fsspec file system (local or s3)."""
    version = version or path.rstrip("/").rsplit("/", 1)[-1]
    return fill_from_dir(fs, path, TablesBuilder(version, keep=keep)).build()


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

