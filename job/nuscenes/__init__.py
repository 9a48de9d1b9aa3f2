"""nuScenes tables: the metadata schema, dataroot path helpers, streamed JSON parsing and the joined, indexed tables;
the annotation tables as columns (``annotations``) and which boxes a camera image shows (``boxes``, the devkit's
``get_sample_data`` with ``BoxVisibility.ANY``).

May import: ``job.errors`` only (the tables are read by the sources, and by anything that needs nuScenes' own words).
"""
from __future__ import annotations

from .annotations import ANNOTATION_TABLES, AnnotationBuilder, Annotations
from .boxes import boxes_in_image, visible_pairs
from .jsonstream import CHUNK_BYTES, iter_array_slices
from .loading import fill_from_dir, find_version_dirs, load_tables_dir
from .paths import (
    IMAGE_EXTENSIONS,
    LAYOUT_DIRS,
    dataroot_relative,
    is_image_name,
    is_version_dir,
    table_of,
    version_order,
)
from .schema import META_FIELDS, META_NAMES, NEEDED_TABLES, MissingTables, TablesError
from .sink import TableBuilder, TableSink
from .tables import MetaIndex, NuScenesTables, TablesBuilder

__all__ = [
    "ANNOTATION_TABLES",
    "AnnotationBuilder",
    "Annotations",
    "CHUNK_BYTES",
    "TableBuilder",
    "TableSink",
    "boxes_in_image",
    "fill_from_dir",
    "visible_pairs",
    "IMAGE_EXTENSIONS",
    "LAYOUT_DIRS",
    "META_FIELDS",
    "META_NAMES",
    "NEEDED_TABLES",
    "MetaIndex",
    "MissingTables",
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
