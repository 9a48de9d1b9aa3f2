"""Search hits as text, tables and JSON (``job search``, ``job serve``); a hit is a dict of rank, score and metadata."""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from ..runfolder import IndexInfo


def time_text(us: Any) -> str | None:
    """A nuScenes timestamp (µs since the epoch) as ``YYYY-MM-DD HH:MM:SS.mmm`` UTC; None if it is not one."""
    if us is None:
        return None
    try:
        return dt.datetime.fromtimestamp(int(us) / 1e6, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return None


def make_hits(scores: Sequence[float], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Hits in rank order from the scores and the metadata rows of the images found: rank, score, the row, and its
    timestamp as text (``time``). The one shape of a hit: ``job search``, the page and the notebook."""
    out = []
    for rank, (score, row) in enumerate(zip(scores, rows), 1):
        hit = {"rank": rank, "score": round(float(score), 6), **row}
        hit["time"] = time_text(row.get("timestamp"))
        out.append(hit)
    return out


def hits_table(hits: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> pa.Table:
    """Hits as a pyarrow table (``.to_pandas()`` for a DataFrame), optionally only ``columns`` (those present)."""
    table = pa.Table.from_pylist(list(hits))
    return table.select([c for c in columns if c in table.column_names]) if columns is not None else table


def format_hits(hits: Sequence[dict[str, Any]]) -> str:
    """Human-readable table of hits."""
    head = f"{'rank':>4}  {'score':>7}  {'scene':<12} {'channel':<16} {'location':<24} {'time (UTC)':<23}  {'id':<19}  path"
    lines = [head]
    for h in hits:
        lines.append(f"{h['rank']:>4}  {h['score']:>7.4f}  {h.get('scene_name') or '-'!s:<12} "
                     f"{h.get('channel') or '-'!s:<16} {h.get('location') or '-'!s:<24} "
                     f"{h.get('time') or '-'!s:<23}  {h.get('id'):<19}  {h.get('path')}")
    return "\n".join(lines)


def json_safe(v: Any) -> Any:
    """A metadata value as JSON can hold it (no NaN, dates as ISO text, no bytes)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, bytes):
        return None
    return v


def hits_json(query: dict[str, Any], k: int, meta: IndexInfo, hits: Sequence[dict[str, Any]],
              **extra: Any) -> dict[str, Any]:
    """The JSON object ``job search --json`` prints (``extra``: e.g. the filter and its number of matches)."""
    clean = [{key: json_safe(v) for key, v in h.items()} for h in hits]
    return {"query": query, "k": k, "index": meta.factory, "search_params": meta.search_params,
            **extra, "hits": clean}
