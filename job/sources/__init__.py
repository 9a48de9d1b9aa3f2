"""Source stage: ImageRecords (a dataroot-relative path plus bytes or a URL) from folders, S3 prefixes, archives.

``base`` (ImageRecord, the ``Source`` protocol, Selection, ``ReadPass``), ``local``, ``s3``, ``archive`` (+ spool,
tables from any location: ``fill_from_location``), ``archive_reader`` (streamed ``.tgz``), ``remote`` (ranged GETs, the read retry), ``fanin``
(reader threads), ``multi`` (``open_source``).

May import: the ground floor, ``job.nuscenes`` (the metadata of each image) and ``job.runfolder`` (``path_id``).
"""
from __future__ import annotations

from ..nuscenes import IMAGE_EXTENSIONS, is_image_name
from .archive import Archive, NoTablesError, fill_from_location, tables_from_location
from .base import ImageRecord, Selection, Source
from .local import LocalDir
from .multi import MultiSource, open_source
from .s3 import S3Prefix

__all__ = [
    "IMAGE_EXTENSIONS",
    "Archive",
    "ImageRecord",
    "LocalDir",
    "MultiSource",
    "NoTablesError",
    "S3Prefix",
    "Selection",
    "Source",
    "fill_from_location",
    "is_image_name",
    "open_source",
    "tables_from_location",
]
