"""Write stage: rows committed in *parts* (one parquet file of each table, written atomically), and resume
bookkeeping (the layout is ``runfolder``'s).

A part's thumbnails and failures files are committed before its embeddings file; a part counts as done only once
its embeddings file exists, so a kill in between leaves orphans the next run removes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import fsutil
from .errors import UsageError
from .runfolder import RunLayout, path_id
from .tables import list_parts, part_url, table_bytes

log = logging.getLogger(__name__)

FAILURES_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("reason", pa.string())])
THUMBNAILS_SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("path", pa.string()), pa.field("jpeg", pa.binary())])
CLS_COLUMN = "embedding_cls"  # with --pool mean: the CLS-pooled vector of the same forward pass (text queries)
VECTOR_COLUMNS = ("embedding", CLS_COLUMN)


def embedding_schema(dim: int, meta_fields: Sequence[pa.Field] = (), *, text_vectors: bool = False) -> pa.Schema:
    """Schema of the embeddings table for vectors of ``dim`` floats plus optional metadata columns.

    ``text_vectors`` adds ``embedding_cls`` (same type as ``embedding``) after ``height``.
    """
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            *([pa.field(CLS_COLUMN, pa.list_(pa.float32(), dim), nullable=False)] if text_vectors else []),
            *meta_fields,
        ]
    )


class PartWriter:
    """Collects embedded rows and failures, and commits them as numbered parts.

    ``add``/``add_failure`` buffer rows; a part is committed when it holds ``part_size`` images
    or ``part_seconds`` have passed, and on ``close``.
    """

    def __init__(
        self,
        layout: RunLayout,
        schema: pa.Schema,
        *,
        part_size: int = 4096,
        part_seconds: float = 120.0,
        start_part: int = 0,
        thumbnails: bool = False,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        self.layout = layout
        self.schema = schema
        self.part_size = part_size
        self.part_seconds = part_seconds
        self.next_part = start_part
        self._rows: dict[str, list[Any]] = {f.name: [] for f in schema}
        self._vectors: list[np.ndarray] = []
        self._cls: list[np.ndarray] = []
        self._failures: list[tuple[str, str]] = []
        self.thumbnails = thumbnails
        self._identity = dict(identity) if identity is not None else None
        self._thumbs: list[tuple[int, str, bytes | None]] = []
        self._opened = time.monotonic()
        self.committed_rows = 0
        self.committed_failures = 0

    @property
    def pending(self) -> int:
        return len(self._rows["id"]) + len(self._failures)

    def add(
        self,
        path: str,
        vector: np.ndarray,
        width: int,
        height: int,
        meta: Mapping[str, Any] | None,
        thumbnail: bytes | None = None,
        text_vector: np.ndarray | None = None,
    ) -> None:
        """Buffer one embedded image (its thumbnail when the writer keeps them, its CLS vector when the schema has it)."""
        self._rows["id"].append(path_id(path))
        if self.thumbnails:
            self._thumbs.append((path_id(path), path, thumbnail))
        self._rows["path"].append(path)
        self._vectors.append(vector)
        if CLS_COLUMN in self._rows:
            if text_vector is None:
                raise ValueError(f"the embeddings schema has {CLS_COLUMN}: every row needs its text_vector")
            self._cls.append(text_vector)
        self._rows["width"].append(width)
        self._rows["height"].append(height)
        for f in self.schema:
            if f.name not in ("id", "path", "width", "height", *VECTOR_COLUMNS):
                self._rows[f.name].append(None if meta is None else meta.get(f.name))
        self._maybe_flush()

    def add_failure(self, path: str, reason: str) -> None:
        """Buffer one image that could not be embedded."""
        self._failures.append((path, reason))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.pending >= self.part_size or (
            self.pending and time.monotonic() - self._opened >= self.part_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Commit what is buffered as the next part (failures file first, embeddings file last)."""
        if not self.pending:
            return
        if self._identity is not None:
            # the run's options are recorded with its first part, so a run that fails early leaves nothing
            if not fsutil.exists(self.layout.state):
                fsutil.write_json(self.layout.state, self._identity)
            self._identity = None
        n = self.next_part
        dim = self.schema.field("embedding").type.list_size
        columns = {}
        for f in self.schema:
            if f.name in VECTOR_COLUMNS:
                rows = self._vectors if f.name == "embedding" else self._cls
                vecs = np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, dim), np.float32)
                columns[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), dim)
            else:
                columns[f.name] = pa.array(self._rows[f.name], type=f.type)
        table = pa.Table.from_pydict(columns, schema=self.schema)
        failures = pa.Table.from_pylist([{"path": p, "reason": r} for p, r in self._failures], schema=FAILURES_SCHEMA)
        if self.thumbnails:
            thumbs = pa.Table.from_pylist([{"id": i, "path": p, "jpeg": j} for i, p, j in self._thumbs],
                                          schema=THUMBNAILS_SCHEMA)
            fsutil.atomic_write_bytes(part_url(self.layout.thumbnails, n), table_bytes(thumbs))
        fsutil.atomic_write_bytes(part_url(self.layout.failures, n), table_bytes(failures))
        fsutil.atomic_write_bytes(part_url(self.layout.embeddings, n), table_bytes(table))
        log.debug("committed part %d: %d rows, %d failures", n, table.num_rows, failures.num_rows)
        self.committed_rows += table.num_rows
        self.committed_failures += failures.num_rows
        self.next_part += 1
        self._rows = {f.name: [] for f in self.schema}
        self._vectors = []
        self._cls = []
        self._failures = []
        self._thumbs = []
        self._opened = time.monotonic()

    def close(self) -> None:
        """Commit the last partial part."""
        self.flush()


@dataclass
class ResumeState:
    """What earlier attempts at this run already committed."""

    done_paths: set[str]
    next_part: int
    rows: int
    failures: int


def prepare_run(layout: RunLayout, identity: Mapping[str, Any], *, overwrite: bool = False) -> ResumeState:
    """Check the run folder and return what is already done there (``PartWriter`` records ``identity``).

    A folder holding a run with other vector-shaping options is refused (unless ``overwrite``),
    orphaned failure parts and temporary files of a killed run are removed, and the paths of all
    committed parts are collected so they are not embedded again.
    """
    fs, root = fsutil.url_to_fs(layout.run_dir)
    if overwrite and fs.exists(root):
        for url in layout.owned():
            sub_fs, sub = fsutil.url_to_fs(url)
            if sub_fs.exists(sub):
                sub_fs.rm(sub, recursive=True)
    identity = dict(identity)
    if fsutil.exists(layout.state):
        previous = fsutil.read_json(layout.state)
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise UsageError(
                f"{layout.run_dir} holds a run made with other options ({', '.join(changed)}); "
                "use another --out or pass --overwrite"
            )
    for folder in (layout.embeddings, layout.failures, layout.thumbnails):
        sub_fs, sub = fsutil.url_to_fs(folder)
        if sub_fs.exists(sub):
            for p in sub_fs.ls(sub, detail=False):
                if ".tmp-" in p.rsplit("/", 1)[-1]:
                    sub_fs.rm(p)
    emb_parts = list_parts(layout.embeddings)
    fail_parts = list_parts(layout.failures)
    for n, p in list(fail_parts.items()) + list(list_parts(layout.thumbnails).items()):
        if n not in emb_parts:
            log.info("removing orphaned file %s of an interrupted part", p)
            fs.rm(p)
    done: set[str] = set()
    rows = failures = 0
    for n, p in sorted(emb_parts.items()):
        t = pq.read_table(p, columns=["path"], filesystem=fs)
        done.update(t.column("path").to_pylist())
        rows += t.num_rows
        if n in fail_parts:
            f = pq.read_table(fail_parts[n], columns=["path"], filesystem=fs)
            done.update(f.column("path").to_pylist())
            failures += f.num_rows
    next_part = max(emb_parts) + 1 if emb_parts else 0
    if emb_parts:
        log.info("resuming: %d parts already committed (%d rows, %d failures)", len(emb_parts), rows, failures)
    return ResumeState(done_paths=done, next_part=next_part, rows=rows, failures=failures)

