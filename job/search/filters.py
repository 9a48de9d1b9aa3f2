"""Metadata filters: SQL (DuckDB) over the embeddings' metadata columns, turned into the ids a search may return.

``job search --where "channel = 'CAM_FRONT' AND location LIKE 'singapore%' AND NOT is_key_frame"`` and the
shorthands (``--channel``, ``--location``, ``--scene``, ``--night``, ``--rain``) compose into one condition
(:func:`compose_where`). :class:`MetaFilter` evaluates it with DuckDB over the metadata table already in memory
(read through fsspec, so local and ``s3://`` runs work alike) and returns the matching ids; the search then
restricts Faiss to them (``job.index.filtered``). Two derived boolean columns are added: ``night`` and ``rain``,
the words of the nuScenes scene description (the same rule as the notebook's night / rain map).

The connection is in-memory, read-only in effect, and has DuckDB's file system access switched off, so a
condition can read nothing but the metadata.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import UsageError
from ..values import check_where, first_line, where_statement

log = logging.getLogger(__name__)

DERIVED = {  # column -> DuckDB expression over the stored columns (only when scene_description exists)
    "night": r"coalesce(regexp_matches(lower(scene_description), '\bnight'), false)",
    "rain": r"coalesce(regexp_matches(lower(scene_description), '\brain'), false)",
}
CACHE_SIZE = 64  # recent conditions and their ids (a page session re-runs the same filter with each query)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def compose_where(where: str | None = None, *, channels: Sequence[str] = (), locations: Sequence[str] = (),
                  scenes: Sequence[str] = (), night: bool | None = None, rain: bool | None = None) -> str | None:
    """One SQL condition from ``--where`` and the shorthands (ANDed); None when nothing filters.

    ``locations`` are prefixes (``singapore`` keeps ``singapore-onenorth`` and the other Singapore logs).
    """
    parts: list[str] = []
    if where is not None and where.strip():
        parts.append(f"({where.strip()})")
    if channels:
        parts.append(f"channel IN ({', '.join(_quote(c) for c in channels)})")
    if locations:
        parts.append("(" + " OR ".join(f"location LIKE {_quote(loc + '%')}" for loc in locations) + ")")
    if scenes:
        parts.append(f"scene_name IN ({', '.join(_quote(s) for s in scenes)})")
    for name, flag in (("night", night), ("rain", rain)):
        if flag is not None:
            parts.append(name if flag else f"NOT {name}")
    return " AND ".join(parts) or None


class MetaFilter:
    """DuckDB over one metadata table (no vectors): conditions in, sorted matching ids out."""

    def __init__(self, table: pa.Table) -> None:
        import duckdb

        drop = [c for c in table.column_names if pa.types.is_fixed_size_list(table.schema.field(c).type)]
        self._table = table.drop_columns(drop) if drop else table
        self._con = duckdb.connect(":memory:", config={"enable_external_access": False})
        self._con.register("meta_raw", self._table)
        names = self._table.column_names
        derived = [f"{expr} AS {name}" for name, expr in DERIVED.items()
                   if "scene_description" in names and name not in names]
        self._con.execute(f"CREATE VIEW meta AS SELECT {', '.join(['*', *derived])} FROM meta_raw")
        self.columns: list[str] = [r[0] for r in self._con.execute("SELECT column_name FROM (DESCRIBE meta)").fetchall()]
        self.n = self._table.num_rows
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def ids(self, where: str) -> np.ndarray:
        """Sorted int64 ids of the rows matching ``where``; UsageError naming the valid columns otherwise."""
        import duckdb

        check_where(where)
        with self._lock:
            if where in self._cache:
                self._cache.move_to_end(where)
                return self._cache[where]
            try:
                got = self._con.execute(where_statement(where)).fetchnumpy()["id"]
            except duckdb.Error as exc:
                raise UsageError(f"filter {where!r}: {first_line(exc)}; valid columns: "
                                 f"{', '.join(self.columns)}") from None
            ids = np.sort(np.asarray(got, np.int64))
            self._cache[where] = ids
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return ids

    def distinct(self, column: str, limit: int = 200) -> list[Any]:
        """The distinct values of a column (for the page's filter menus); [] if the run has no such column."""
        if column not in self.columns:
            return []
        with self._lock:
            rows = self._con.execute(f'SELECT DISTINCT "{column}" AS v FROM meta WHERE "{column}" IS NOT NULL '
                                     f"ORDER BY v LIMIT {int(limit)}").fetchall()
        return [r[0] for r in rows]
