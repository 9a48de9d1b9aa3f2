"""What the curation step reads from a run: its vectors, the metadata curation uses (rows aligned with the vectors),
and the run's image index when the k-NN graph may come from it."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import fsutil
from ..config import CurateConfig
from ..errors import DataError, UsageError
from ..runfolder import (
    VECTOR_COLUMNS,
    RunLayout,
    index_info_url,
    open_dataset,
    read_index_info,
    read_table,
    read_vectors,
)
from .strata import check_balance
from .subset import SUBSET_COLUMNS, check_subset_options

log = logging.getLogger(__name__)

# job.curate.STILL_COLUMNS -> the embeddings' columns
STILL_SOURCE = {"scene": "scene_token", "channel": "channel", "timestamp": "timestamp", "ego_x": "ego_x",
                "ego_y": "ego_y"}
TOKEN = "sample_data_token"


@dataclass
class RunVectors:
    """A run's vectors and the metadata curation reads, rows aligned."""

    x: np.ndarray
    ids: np.ndarray
    meta: dict[str, np.ndarray]

    def column(self, name: str) -> np.ndarray | None:
        return self.meta.get(name)

    def still_columns(self) -> dict[str, np.ndarray] | None:
        """The columns standing still needs (``find.STILL_COLUMNS``), or None when the run lacks one (not nuScenes)."""
        if not all(c in self.meta for c in STILL_SOURCE.values()):
            return None
        return {k: self.meta[c] for k, c in STILL_SOURCE.items()}


def check_options(cfg: CurateConfig, columns: list[str]) -> list[str]:
    """The ``--balance`` columns, checked against the embeddings' columns (before a run embeds anything), and the
    subset's other options (``subset.check_subset_options``)."""
    balance = check_balance(cfg.balance, [c for c in columns if c not in (*VECTOR_COLUMNS, "id")])
    check_subset_options(cfg, columns)
    return balance


def load_run(layout: RunLayout, cfg: CurateConfig) -> RunVectors:
    """The run's vectors (UsageError for a run without any) and the metadata columns curation reads."""
    names = list(open_dataset(layout.embeddings).schema.names)
    balance = check_options(cfg, names)
    x, ids = read_vectors(layout.embeddings)
    wanted = ["path", "timestamp", "content_hash", TOKEN, *STILL_SOURCE.values(), *SUBSET_COLUMNS, *balance]
    table = read_table(layout.embeddings, ["id", *dict.fromkeys(c for c in wanted if c in names)])
    at = np.argsort(table.column("id").to_numpy())
    order = at[np.searchsorted(table.column("id").to_numpy()[at], ids)]  # metadata rows in the vectors' order
    meta = {c: table.column(c).to_numpy(zero_copy_only=False)[order] for c in table.column_names if c != "id"}
    return RunVectors(x, ids, meta)


def has_index(layout: RunLayout) -> bool:
    """Whether the run has its image index (``job index``'s ``index/``)."""
    return fsutil.exists(index_info_url(layout.index))


def run_index(layout: RunLayout, ids: np.ndarray, method: str) -> Any:
    """The run's image index for ``--knn-method index`` (None for the other methods, which do not need it); refused
    when it is missing or is not these vectors'."""
    if method != "index":
        return None
    if not has_index(layout):
        raise UsageError(f"k-NN method 'index' needs the run's index; build it with: python -m job index "
                         f"--run {layout.run_dir}")
    from ..index import ids_digest, load_index

    info = read_index_info(layout.index)
    index = load_index(layout.index)
    if int(index.ntotal) != len(ids) or (info.ids_sha256 and info.ids_sha256 != ids_digest(ids)):
        raise DataError(f"the index of {layout.run_dir} ({index.ntotal} vectors) does not match its embeddings "
                        f"({len(ids)} rows); rebuild it: python -m job index --run {layout.run_dir}")
    return index
