"""Shared by the eval tests: a run's vector columns, whatever the embeddings' schema names its trained output."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from job.eval.run import vector_columns


def columns_of(run: Path) -> list[str]:
    """The run's two vector columns (``embedding`` and the trained output), as job eval scores them."""
    cols = vector_columns(pq.read_schema(next((run / "embeddings.parquet").glob("part-*.parquet"))).names)
    assert len(cols) == 2
    return cols
