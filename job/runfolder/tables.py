"""The one reader/writer of a run's tables: parquet dataset folders of committed ``part-NNNNN.parquet`` files (written
atomically), whole tables, vector columns as matrices, and ``.npy`` matrices; local paths and ``s3://`` alike."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fsutil
from ..errors import DataError, UsageError

PARQUET = ".parquet"
_PART_RE = re.compile(r"(?:^|/)part-(\d{5,})(?:-([0-9a-z]{1,32}))?\.parquet$")


@dataclass(frozen=True, order=True)
class PartKey:
    """A part's name: ``part-NNNNN-ATTEMPT.parquet``. The attempt id (the writer's lease owner) makes the names of two
    attempts' parts distinct, so no attempt's commit ever replaces another's; parts of folders written before attempt
    ids have none (``""``, which sorts first). Keys order parts: by number, then attempt."""

    number: int
    attempt: str = ""

    @property
    def name(self) -> str:
        return f"part-{self.number:05d}" + (f"-{self.attempt}" if self.attempt else "") + PARQUET


def part_url(folder_url: str, key: PartKey) -> str:
    """Where part ``key`` of a dataset folder lives."""
    return fsutil.join(folder_url, key.name)


def list_parts(folder_url: str) -> dict[PartKey, str]:
    """Committed parts of a dataset folder (fsspec paths), by key, in key order."""
    fs, path = fsutil.url_to_fs(folder_url)
    with fsutil.faults("listing", folder_url):
        if not fs.exists(path):
            return {}
        names = fs.ls(path, detail=False)
    parts: dict[PartKey, str] = {}
    for p in names:
        m = _PART_RE.search(p)
        if m:
            parts[PartKey(int(m.group(1)), m.group(2) or "")] = p
    return dict(sorted(parts.items()))


def table_bytes(table: pa.Table) -> bytes:
    """A table as zstd parquet bytes (to commit with ``fsutil.atomic_write_bytes``)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_table(url: str, table: pa.Table) -> None:
    """Atomically write one parquet file."""
    fsutil.atomic_write_bytes(url, table_bytes(table))


def read_table(url: str, columns: Iterable[str] | None = None, **kwargs: Any) -> pa.Table:
    """Read a parquet file or dataset folder (local or URL) as one table."""
    fs, path = fsutil.url_to_fs(url)
    if not fsutil.exists(url):
        raise UsageError(f"{url} does not exist")
    with fsutil.faults("reading", url):
        return pq.read_table(path, columns=list(columns) if columns is not None else None, filesystem=fs, **kwargs)


def count_rows(url: str) -> int:
    """Rows of a parquet dataset folder from the parts' footers (0 when there is none)."""
    fs, path = fsutil.url_to_fs(url)
    with fsutil.faults("counting the rows of", url):
        if not fs.exists(path):
            return 0
        return sum(pq.ParquetFile(p, filesystem=fs).metadata.num_rows for p in fs.ls(path, detail=False)
                   if p.endswith(PARQUET))


def embedding_matrix(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """A vector column as a contiguous (n, dim) float32 array, without per-row copies."""
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def write_npy(url: str, matrix: np.ndarray) -> None:
    """Atomically write a float32 matrix as ``.npy``."""
    buf = io.BytesIO()
    np.save(buf, matrix.astype(np.float32, copy=False))
    fsutil.atomic_write_bytes(url, buf.getvalue())


def read_npy(url: str) -> np.ndarray | None:
    """A matrix written by :func:`write_npy`, or None when there is none."""
    fs, path = fsutil.url_to_fs(url)
    with fsutil.faults("reading", url):
        return np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False) if fs.exists(path) else None


def open_dataset(url: str) -> Any:
    """A pyarrow dataset over a parquet file or folder; a clear error if there is none."""
    import pyarrow.dataset as ds

    fs, path = fsutil.url_to_fs(url)
    if not fs.exists(path):
        raise UsageError(f"{url} does not exist")
    try:
        return ds.dataset(path, filesystem=fs, format="parquet")
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise UsageError(f"{url} is not a parquet dataset ({str(exc).splitlines()[0][:160]})") from None


def read_vectors(url: str, column: str = "embedding") -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, d) float32, ids) of an embeddings dataset, streamed batch by batch into one preallocated matrix:
    the peak is the matrix and one batch, not the table and its copy (``embedding_matrix(read_table(…))``)."""
    dataset = open_dataset(url)
    names = dataset.schema.names
    n = dataset.count_rows() if names else 0
    if n == 0:
        raise UsageError(f"{url} holds no vectors; embed some images first")
    missing = [c for c in ("id", column) if c not in names]
    if missing:
        raise UsageError(f"{url} has no {', '.join(missing)} column; it is not an embeddings table "
                         f"(columns: {', '.join(names)})")
    typ = dataset.schema.field(column).type
    if not (pa.types.is_fixed_size_list(typ) and pa.types.is_floating(typ.value_type)):
        raise UsageError(f"{url}: column {column!r} is {typ}, expected fixed_size_list<float>[d]")
    d = typ.list_size
    x = np.empty((n, d), np.float32)
    ids = np.empty(n, np.int64)
    pos = 0
    with fsutil.faults("reading", url):
        for batch in dataset.to_batches(columns=["id", column], batch_readahead=1, fragment_readahead=1):
            m = batch.num_rows
            if pos + m > n:
                raise DataError(f"{url} changed while it was read; try again")
            ids[pos : pos + m] = batch.column(0).to_numpy(zero_copy_only=False)
            x[pos : pos + m] = batch.column(1).flatten().to_numpy(zero_copy_only=False).reshape(m, d)
            pos += m
    if pos != n:
        raise DataError(f"{url} changed while it was read; try again")
    return x, ids
