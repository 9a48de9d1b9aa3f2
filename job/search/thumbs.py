"""Thumbnails of a run's images, for the search page and the notebook: from the run's ``thumbnails.parquet`` when it
has one, else from the source images.

A thumbnails part holds 4,096 images in one row group, so one image costs reading its part's ``jpeg`` column;
the last few parts read are kept, and every thumbnail served is cached. Images inside ``.tgz`` archives cannot
be read one by one: without thumbnails they show a placeholder (embed with ``--thumbnails`` to see them).
"""
from __future__ import annotations

import io
import logging
import re
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from .. import fsutil
from ..runfolder import Manifest, RunLayout, list_parts

log = logging.getLogger(__name__)

THUMB_PX = 256  # longest side of a thumbnail made from a source image
PARTS_KEPT = 4  # thumbnails parts whose jpeg column stays in memory
CACHE_SIZE = 2048  # thumbnails kept (bytes), ~10 KB each
_ARCHIVE = re.compile(r"\.(tgz|tar|tar\.gz|zip)$", re.IGNORECASE)


def placeholder(text: str = "no image") -> bytes:
    """A grey 16:9 JPEG with a word on it."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (THUMB_PX, THUMB_PX * 9 // 16), (214, 214, 214))
    ImageDraw.Draw(im).text((10, THUMB_PX * 9 // 32 - 6), text, fill=(90, 90, 90))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()


class Thumbnails:
    """``get(id, path)`` → JPEG bytes, read-only over the run and its sources."""

    def __init__(self, layout: RunLayout, manifest: Manifest | None) -> None:
        self.sources = [str(s) for s in (manifest.sources if manifest else [])
                        if not _ARCHIVE.search(str(s)) and "*" not in str(s)]
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._parts: OrderedDict[str, list[Any]] = OrderedDict()
        self._where: dict[int, tuple[str, int]] = {}
        self._fs: Any = None
        self._placeholder = placeholder()
        self.kind = "placeholder"
        if fsutil.exists(layout.thumbnails):
            self._index_parts(layout.thumbnails)
            self.kind = "thumbnails.parquet"
        elif self.sources:
            self.kind = "source images"

    def _index_parts(self, url: str) -> None:
        import pyarrow.parquet as pq

        self._fs, _ = fsutil.url_to_fs(url)
        for _, part in sorted(list_parts(url).items()):
            ids = pq.read_table(part, columns=["id"], filesystem=self._fs).column("id").to_numpy()
            for row, i in enumerate(np.asarray(ids, np.int64).tolist()):
                self._where[i] = (part, row)

    def _from_parts(self, id_: int) -> bytes | None:
        import pyarrow.parquet as pq

        found = self._where.get(id_)
        if found is None:
            return None
        part, row = found
        column = self._parts.get(part)
        if column is None:
            column = pq.read_table(part, columns=["jpeg"], filesystem=self._fs).column("jpeg").to_pylist()
            self._parts[part] = column
            while len(self._parts) > PARTS_KEPT:
                self._parts.popitem(last=False)
        self._parts.move_to_end(part)
        return column[row]

    def _from_source(self, path: str) -> bytes | None:
        from PIL import Image

        for root in self.sources:
            url = fsutil.join(root, path)
            try:
                fs, p = fsutil.url_to_fs(url)
                if not fs.exists(p):
                    continue
                raw = Image.open(io.BytesIO(fs.cat_file(p)))
                raw.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))
                im = raw.convert("RGB")
                im.thumbnail((THUMB_PX, THUMB_PX))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=85)
                return buf.getvalue()
            except Exception as exc:  # noqa: BLE001 - an unreadable image becomes the placeholder
                log.debug("thumbnail from %s failed: %s", url, exc)
        return None

    def image(self, id_: int, path: str) -> Any:
        """The thumbnail as a PIL image (RGB)."""
        from PIL import Image

        return Image.open(io.BytesIO(self.get(id_, path))).convert("RGB")

    def get(self, id_: int, path: str) -> bytes:
        """The thumbnail of image ``id_`` (relative ``path``); the placeholder when there is none."""
        with self._lock:
            if id_ in self._cache:
                self._cache.move_to_end(id_)
                return self._cache[id_]
            data = self._from_parts(id_) if self._where else None
            if data is None and self.sources:
                data = self._from_source(path)
            data = data or self._placeholder
            self._cache[id_] = data
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return data
