"""Open a finished run for the notebook: metadata, unit vectors and manifest, with derived labels."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..runfolder import (
    VECTOR_COLUMNS,
    Manifest,
    RunLayout,
    embedding_matrix,
    open_run,
    read_manifest,
    read_table,
    trained_column,
)
from ..values import CAMERA_CHANNELS

log = logging.getLogger(__name__)

THUMB_WIDTH = 128
CAMERA_ORDER = CAMERA_CHANNELS
MISSING = "unknown"
WEATHER_ORDER = ("night + rain", "night", "rain", "day, no rain", "no description")
# Fixed colours for the weather map: night is dark, rain blue, both purple, plain day light grey.
WEATHER_COLORS = {"night + rain": "#7b2cbf", "night": "#111111", "rain": "#1f77b4", "day, no rain": "#f2a33a",
                  "no description": "#bbbbbb"}
OTHER_COLOR = "#d0d0d0"
_CHANNEL_RE = re.compile(r"(CAM_[A-Z_]+?)(?:__|/|$)")


class RunNotReady(UsageError):
    """The run folder holds no finished, successful run; the notebook refuses it."""


@dataclass
class Run:
    """A finished run loaded for exploration: metadata, unit vectors, manifest."""

    uri: str
    layout: RunLayout
    manifest: Manifest
    meta: pd.DataFrame  # one row per embedded image, in parquet order; no embedding column
    vectors: np.ndarray  # (n, dim) float32, unit length, aligned with ``meta``
    # what text queries search: the trained outputs (embedding_trained) of a --pool mean run; None: ``vectors`` serve both
    text_vectors: np.ndarray | None = None
    _row_of_id: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.meta)

    def row(self, key: int | str | None) -> int:
        """Row number of an image given by id, path (or a path suffix), or row number as ``"#12"``."""
        if key is None:
            return 0
        if isinstance(key, (int, np.integer)):
            if not self._row_of_id:
                self._row_of_id = {int(i): r for r, i in enumerate(self.meta["id"].to_numpy())}
            if int(key) not in self._row_of_id:
                raise KeyError(f"no image with id {key} in {self.uri}")
            return self._row_of_id[int(key)]
        s = str(key).strip()
        if s.startswith("#"):
            r = int(s[1:])
            if not 0 <= r < self.n:
                raise KeyError(f"row {r} is out of range (the run has {self.n} rows)")
            return r
        if s.lstrip("-").isdigit():
            return self.row(int(s))
        paths = self.meta["path"]
        exact = np.flatnonzero(paths.to_numpy() == s)
        if len(exact):
            return int(exact[0])
        suffix = np.flatnonzero(paths.str.endswith(s).to_numpy())
        if len(suffix):
            return int(suffix[0])
        raise KeyError(f"no image with path {s!r} in {self.uri}")

    def summary(self) -> str:
        """A few lines about the run for the top of the notebook."""
        m = self.manifest
        cols = [c for c in ("scene_name", "channel", "location") if c in self.meta]
        extra = ", ".join(f"{self.meta[c].nunique()} {c.replace('_name', '')}s" for c in cols)
        return (
            f"run {self.uri}\n"
            f"  {self.n:,} images embedded ({m.counts.failed} failed), dim {self.vectors.shape[1]}"
            + (f", {extra}" if extra else "") + "\n"
            f"  model {m.model.name} / {m.model.pretrained}, pool {m.model.pool}\n"
            f"  finished {m.finished}"
        )


def check_manifest(uri: str) -> Manifest:
    """The manifest of a finished, successful run; RunNotReady (clear message) otherwise."""
    layout = RunLayout.locate(uri)
    try:
        manifest = read_manifest(layout)
    except UsageError:
        raise RunNotReady(
            f"refusing {uri}: it has no {layout.manifest.rpartition('/')[2]}, so the run did not finish (it is still running, it failed, "
            "or this is not a run folder). Wait for the job or re-run it; `python -m job run` resumes."
        ) from None
    if manifest.status != "succeeded":
        raise RunNotReady(
            f"refusing {uri}: its manifest says status={manifest.status!r}, not 'succeeded'"
            + "; look at the job's log and re-run it."
        )
    return manifest


def _derive(meta: pd.DataFrame) -> pd.DataFrame:
    """Columns every plot needs, filled from the path when the run has no nuScenes metadata."""
    if "channel" not in meta or meta["channel"].isna().all():
        meta["channel"] = meta["path"].map(lambda p: (m.group(1) if (m := _CHANNEL_RE.search(p)) else MISSING))
    if "scene_name" not in meta or meta["scene_name"].isna().all():
        meta["scene_name"] = meta["path"].map(lambda p: p.rsplit("/", 2)[-2] if p.count("/") else MISSING)
    for col in ("channel", "scene_name", "location"):
        if col not in meta:
            meta[col] = MISSING
        meta[col] = meta[col].fillna(MISSING).astype(str)
    desc = meta["scene_description"] if "scene_description" in meta else pd.Series([None] * len(meta), index=meta.index)
    meta["weather"] = weather_labels(desc)
    return meta


def load_run(uri: str) -> Run:
    """Load a finished run (local folder or ``s3://`` URL); refuses missing or failed runs."""
    if not uri or not str(uri).strip():
        raise RunNotReady("no run given: set run_uri in the parameters cell or the RUN_URI environment variable "
                          "(a run folder, local or s3://…/runs/<id>/)")
    uri = str(uri).strip().rstrip("/")
    manifest = check_manifest(uri)
    layout = open_run(uri).layout
    t0 = time.perf_counter()
    table = read_table(layout.embeddings)
    vectors = embedding_matrix(table)
    text_column = trained_column(table.column_names)
    text_vectors = embedding_matrix(table, text_column) if text_column else None
    meta = table.drop_columns([c for c in VECTOR_COLUMNS if c in table.column_names]).to_pandas()
    log.info("loaded %d rows from %s in %.1f s", len(meta), layout.embeddings, time.perf_counter() - t0)
    return Run(uri=uri, layout=layout, manifest=manifest, meta=_derive(meta), vectors=vectors,
               text_vectors=text_vectors)


def weather_labels(descriptions: Iterable[str | None]) -> list[str]:
    """Night / rain from the words of nuScenes scene descriptions ("Night, after rain" is night + rain)."""
    out = []
    for d in descriptions:
        if d is None or (isinstance(d, float) and np.isnan(d)) or not str(d).strip():
            out.append("no description")
            continue
        t = str(d).lower()
        night = re.search(r"\bnight", t) is not None
        rain = re.search(r"\brain", t) is not None
        out.append("night + rain" if night and rain else "night" if night else "rain" if rain else "day, no rain")
    return out


