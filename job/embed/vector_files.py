"""Vectors made elsewhere, read in batches for ``job import`` (``importer``): a parquet (a ``path`` column, an
``embedding`` column of float lists, any metadata columns) or clip-retrieval's output folder.

clip-retrieval (``clip_retrieval/clip_inference/writer.py`` at commit 07d747b5f1519ee0697c2dd90e7dae93c22ef0a9, its
``OutputSink``) writes one partition ``N`` (zero-padded to the partition count's digits) as ``img_emb/img_emb_N.npy``
(float16, unit rows: its ``ClipMapper`` divides by the norm before casting), ``metadata/metadata_N.parquet`` (the
same rows in the same order: ``image_path`` — the file's path for a folder input, the sample key for webdataset —,
``caption`` when text was enabled, and the samples' JSON metadata flattened into columns) and ``text_emb/…`` (the
captions' vectors, not read here).

A reader yields :class:`Batch` es in a fixed order, so the importer can read twice: once to check everything, once
to write. Bad input is a :class:`~job.errors.UsageError` naming the file, the row and the fault.
"""
from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from .. import fsutil
from ..errors import UsageError
from ..runfolder import open_dataset

log = logging.getLogger(__name__)

FORMATS = ("auto", "parquet", "clip-retrieval")
BATCH_ROWS = 65_536
CLIP_PATH_COLUMN = "image_path"
_PARTITION = re.compile(r"_(\d+)\.(npy|parquet)$")


@dataclass
class Batch:
    """Rows of one input, in order: paths, vectors (float32, as stored), metadata columns, where they came from."""

    paths: list[Any]
    vectors: np.ndarray
    meta: pa.Table
    where: str  # file (and first row) for messages
    first_row: int


def _as_matrix(col: pa.ChunkedArray | pa.Array, where: str, first_row: int, column: str) -> np.ndarray:
    """A column of float lists (fixed or variable size, any float width) as an (n, d) float32 matrix; a UsageError
    for a null, a non-numeric list or rows of different lengths."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    typ = arr.type
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)) or not (
            pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)):
        raise UsageError(f"{where}: column {column!r} is {typ}, not a list of numbers (one vector per row)")
    if arr.null_count:
        bad = int(np.nonzero(arr.is_null().to_numpy(zero_copy_only=False))[0][0])
        raise UsageError(f"{where}: row {first_row + bad} has no {column} (null)")
    n = len(arr)
    if pa.types.is_fixed_size_list(typ):
        d = typ.list_size
    else:
        offsets = arr.offsets.to_numpy()
        lengths = np.diff(offsets)
        d = int(lengths[0]) if n else 0
        if n and np.any(lengths != d):
            bad = int(np.nonzero(lengths != d)[0][0])
            raise UsageError(f"{where}: row {first_row + bad} has {lengths[bad]} values in {column!r}, row "
                             f"{first_row} has {d}: every vector must have the same dimension")
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(n, d) if n else np.zeros((0, d), np.float32)


class ParquetVectors:
    """A parquet file or dataset folder with a path column and a vector column."""

    def __init__(self, url: str, path_column: str, embedding_column: str) -> None:
        self.url, self.path_column, self.embedding_column = url, path_column, embedding_column
        self.dataset = open_dataset(url)
        names = list(self.dataset.schema.names)
        missing = [c for c in (path_column, embedding_column) if c not in names]
        if missing:
            raise UsageError(f"{url} has no {' and no '.join(repr(c) for c in missing)} column (its columns: "
                             f"{', '.join(names)}); name them with --path-column / --embedding-column")
        self.meta_schema = pa.schema([f for f in self.dataset.schema if f.name not in (path_column, embedding_column)])
        self.description = f"{url} (parquet)"

    def batches(self) -> Iterator[Batch]:
        row = 0
        names = [self.path_column, self.embedding_column, *self.meta_schema.names]
        with fsutil.faults("reading", self.url):
            for rb in self.dataset.to_batches(columns=names, batch_size=BATCH_ROWS, batch_readahead=1,
                                              fragment_readahead=1):
                if not rb.num_rows:
                    continue
                t = pa.Table.from_batches([rb])
                yield Batch(t.column(self.path_column).to_pylist(),
                            _as_matrix(t.column(self.embedding_column), self.url, row, self.embedding_column),
                            t.select(self.meta_schema.names), self.url, row)
                row += rb.num_rows


class ClipRetrievalVectors:
    """clip-retrieval's output folder: ``img_emb/img_emb_N.npy`` beside ``metadata/metadata_N.parquet``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        fs, root = fsutil.url_to_fs(self.url)
        self.fs = fs
        with fsutil.faults("listing", self.url):
            npys = fs.glob(f"{root}/img_emb/img_emb_*.npy")
            metas = fs.glob(f"{root}/metadata/metadata_*.parquet")
        if not npys:
            raise UsageError(f"{url} has no img_emb/img_emb_*.npy: not clip-retrieval's output folder (or it was "
                             "run with --enable_image False)")
        emb = {self._part(p): p for p in npys}
        meta = {self._part(p): p for p in metas}
        lonely = sorted(set(emb) ^ set(meta))
        if lonely:
            n = lonely[0]
            have, lacks = ("img_emb", "metadata") if n in emb else ("metadata", "img_emb")
            raise UsageError(f"{url}: partition {n} has a {have} file but no {lacks} file; every img_emb_N.npy needs "
                             "its metadata_N.parquet (the same rows, in order)")
        self.parts = [(n, emb[n], meta[n]) for n in sorted(emb)]
        schemas = []
        for _, _, m in self.parts:
            s = open_dataset(self._url(m)).schema
            if CLIP_PATH_COLUMN not in s.names:
                raise UsageError(f"{self._url(m)} has no {CLIP_PATH_COLUMN!r} column (its columns: "
                                 f"{', '.join(s.names)})")
            schemas.append(pa.schema([f for f in s if f.name != CLIP_PATH_COLUMN and not f.name.startswith("__")]))
        try:
            self.meta_schema = pa.unify_schemas(schemas)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UsageError(f"{url}: the metadata files disagree on their columns' types ({exc})") from None
        self.description = f"{url} (clip-retrieval, {len(self.parts)} partitions)"

    @staticmethod
    def _part(path: str) -> int:
        m = _PARTITION.search(path)
        return int(m.group(1)) if m else -1

    def _url(self, path: str) -> str:
        proto = self.url.split("://", 1)[0] + "://" if "://" in self.url else ""
        return proto + path if proto and not path.startswith(proto) else path

    def batches(self) -> Iterator[Batch]:
        row = 0
        for _, npy, meta in self.parts:
            where = self._url(npy)
            with fsutil.faults("reading", where):
                x = np.load(io.BytesIO(self.fs.cat_file(npy)), allow_pickle=False)
            if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
                raise UsageError(f"{where} holds a {x.dtype} array of shape {x.shape}, not one vector per row")
            table = open_dataset(self._url(meta)).to_table()
            if table.num_rows != len(x):
                raise UsageError(f"{self._url(meta)} has {table.num_rows} rows but {where} holds {len(x)} vectors; "
                                 "they must be the same rows")
            cols = {f.name: (table.column(f.name) if f.name in table.column_names
                             else pa.nulls(table.num_rows, f.type)) for f in self.meta_schema}
            meta_table = pa.table(cols, schema=self.meta_schema)
            paths = table.column(CLIP_PATH_COLUMN).to_pylist()
            for s in range(0, len(x), BATCH_ROWS):
                e = min(len(x), s + BATCH_ROWS)
                yield Batch(paths[s:e], x[s:e].astype(np.float32), meta_table.slice(s, e - s), where, row + s)
            row += len(x)


def open_vectors(url: str, fmt: str, path_column: str, embedding_column: str) -> ParquetVectors | ClipRetrievalVectors:
    """The reader for ``url`` (``fmt`` auto: clip-retrieval when the folder holds ``img_emb/``, else parquet)."""
    if not fsutil.exists(url):
        raise UsageError(f"{url} does not exist")
    if fmt == "auto":
        fmt = "clip-retrieval" if fsutil.exists(fsutil.join(url, "img_emb")) else "parquet"
    if fmt == "clip-retrieval":
        return ClipRetrievalVectors(url)
    return ParquetVectors(url, path_column, embedding_column)
