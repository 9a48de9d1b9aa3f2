"""Source stage: ImageRecords (a dataroot-relative path plus bytes or a URL) from folders, S3 prefixes, archives."""
from __future__ import annotations

from ..nuscenes import IMAGE_EXTENSIONS, is_image_name
from .archive import Archive
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
    "S3Prefix",
    "Selection",
    "Source",
    "is_image_name",
    "open_source",
]
