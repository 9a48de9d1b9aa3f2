"""nuScenes tables: the metadata schema, dataroot path helpers, streamed JSON parsing and the joined, indexed tables.

May import: ``job.errors`` only (the tables are read by the sources, and by anything that needs nuScenes' own words).
"""
from __future__ import annotations

from .jsonstream import CHUNK_BYTES, iter_array_slices
from .loading import find_version_dirs, load_tables_dir
from .paths import (
    IMAGE_EXTENSIONS,
    LAYOUT_DIRS,
    dataroot_relative,
    is_image_name,
    is_version_dir,
    table_of,
    version_order,
)
from .schema import META_FIELDS, META_NAMES, NEEDED_TABLES, TablesError
from .tables import MetaIndex, NuScenesTables, TablesBuilder

__all__ = [
    "CHUNK_BYTES",
    "IMAGE_EXTENSIONS",
    "LAYOUT_DIRS",
    "META_FIELDS",
    "META_NAMES",
    "NEEDED_TABLES",
    "MetaIndex",
    "NuScenesTables",
    "TablesBuilder",
    "TablesError",
    "dataroot_relative",
    "find_version_dirs",
    "is_image_name",
    "is_version_dir",
    "iter_array_slices",
    "load_tables_dir",
    "table_of",
    "version_order",
]
