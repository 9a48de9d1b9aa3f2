"""Write stage: rows committed in *parts* (one parquet file of each table, written atomically; the layout is
``runfolder``'s, resuming is ``resume``'s).

A part's thumbnails and failures files are committed before its embeddings file; a part counts as done only once
its embeddings file exists, so a kill in between leaves orphans the next attempt removes.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa

from .. import fsutil
from ..runfolder import PartKey, RunLayout, part_url, path_id, table_bytes
from ..runfolder.schema import (
    FAILURES_SCHEMA,
    HASH_COLUMN,
    OWN_COLUMNS,
    THUMBNAILS_SCHEMA,
    TRAINED_COLUMN,
    VECTOR_COLUMNS,
)

log = logging.getLogger(__name__)

class PartWriter:
    """Collects embedded rows and failures, and commits them as parts ``part-NNNNN-ATTEMPT.parquet``.

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
        attempt: str = "",
        thumbnails: bool = False,
        identity: Mapping[str, Any] | None = None,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.layout = layout
        self.attempt = attempt  # names this writer's parts (the lease owner): no other attempt's name is the same
        self.guard = guard  # called before every commit: raises when this writer may no longer commit (lease lost)
        self.schema = schema
        self.part_size = part_size
        self.part_seconds = part_seconds
        self.next_part = start_part
        self._rows: dict[str, list[Any]] = {f.name: [] for f in schema}
        self._vectors: list[np.ndarray] = []
        self._trained: list[np.ndarray] = []
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
        content_hash: bytes | None = None,
    ) -> None:
        """Buffer one embedded image (its thumbnail when the writer keeps them, its trained output when the schema has it)."""
        self._rows["id"].append(path_id(path))
        if self.thumbnails:
            self._thumbs.append((path_id(path), path, thumbnail))
        self._rows["path"].append(path)
        self._vectors.append(vector)
        if TRAINED_COLUMN in self._rows:
            if text_vector is None:
                raise ValueError(f"the embeddings schema has {TRAINED_COLUMN}: every row needs its text_vector")
            self._trained.append(text_vector)
        self._rows["width"].append(width)
        self._rows["height"].append(height)
        if HASH_COLUMN in self._rows:
            self._rows[HASH_COLUMN].append(content_hash)
        for f in self.schema:
            if f.name not in OWN_COLUMNS:
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
        if self.guard is not None:
            self.guard()
        if self._identity is not None:
            # the run's options are recorded with its first part, so a run that fails early leaves nothing
            if not fsutil.exists(self.layout.state):
                fsutil.write_json(self.layout.state, self._identity)
            self._identity = None
        n = PartKey(self.next_part, self.attempt)
        dim = self.schema.field("embedding").type.list_size
        columns = {}
        for f in self.schema:
            if f.name in VECTOR_COLUMNS:
                rows = self._vectors if f.name == "embedding" else self._trained
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
        log.debug("committed %s: %d rows, %d failures", n.name, table.num_rows, failures.num_rows)
        self.committed_rows += table.num_rows
        self.committed_failures += failures.num_rows
        self.next_part += 1
        self._rows = {f.name: [] for f in self.schema}
        self._vectors = []
        self._trained = []
        self._failures = []
        self._thumbs = []
        self._opened = time.monotonic()

    def close(self) -> None:
        """Commit the last partial part."""
        self.flush()
