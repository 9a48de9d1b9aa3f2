"""nuScenes tables: load the six tables a camera image needs, join them, and look up one image's metadata.

The join follows the official devkit: ``sample_data → sample → scene → log`` for where and when,
``sample_data → calibrated_sensor → sensor`` for the channel, ``sample_data → ego_pose`` (and ``sample_data.prev``)
for the ego pose and speed (``egopose``). Rows are matched by
``sample_data.filename``, the image's path relative to the dataroot
(``samples/CAM_FRONT/<logfile>__CAM_FRONT__<timestamp_us>.jpg``).

The trainval ``sample_data.json`` holds ~2.6M rows (~1 GB of JSON, all sensors). It is never held
whole: it is parsed in slices of ``CHUNK_BYTES`` as the bytes arrive (from a file, an S3 object or
an archive member, see ``jsonstream``), only the rows the run can use (camera images that pass the
channel and keyframe filters) are kept, and those are stored column-wise in pyarrow/numpy arrays
with a hash index instead of a dict of Python objects.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pyarrow as pa

from .egopose import EgoPoses, ego_columns
from .jsonstream import CHUNK_BYTES, decode_sample_data, iter_array_slices, reader_of
from .paths import is_image_name, version_order
from .schema import NEEDED_TABLES, TablesError
from .sink import TableBuilder

log = logging.getLogger(__name__)


@dataclass
class _Scene:
    """One scene with its log's place and date (None where the tables leave a field out)."""

    token: str
    name: str | None
    description: str | None
    location: str | None
    logfile: str | None
    date_captured: str | None


class NuScenesTables:
    """The joined tables of one version, indexed by image filename.

    Per image row it stores tokens, timestamp and keyframe flag as arrays, and small integer codes
    for channel and scene; ``lookup(path)`` rebuilds the metadata dict for one image.
    """

    def __init__(self, version: str, filenames: pa.ChunkedArray, sd_tokens: pa.ChunkedArray,
                 sample_tokens: pa.ChunkedArray,
                 timestamps: np.ndarray, key_frames: np.ndarray, channel_codes: np.ndarray, channels: list[str | None],
                 scene_codes: np.ndarray, scenes: list[_Scene], keys: np.ndarray | None = None,
                 ego: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        self.version = version
        self._filenames = filenames
        self._sd_tokens = sd_tokens
        self._sample_tokens = sample_tokens
        self._timestamps = timestamps
        self._key_frames = key_frames
        self._channel_codes = channel_codes
        self._channels = channels
        self._scene_codes = scene_codes
        self._scenes = scenes
        nan = np.full(len(filenames), np.nan)
        self._ego_x, self._ego_y, self._ego_speed = ego if ego is not None else (nan, nan, nan)
        # Hash index: sorted 64-bit string hashes → row, verified against the filename on lookup.
        if keys is None:
            keys = np.fromiter((hash(f) for f in filenames.to_pylist()), dtype=np.int64, count=len(filenames))
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]

    def __len__(self) -> int:
        return len(self._filenames)

    @property
    def scenes(self) -> list[_Scene]:
        return list(self._scenes)

    def _row(self, path: str) -> int | None:
        h = hash(path)
        i = int(np.searchsorted(self._keys, h))
        while i < len(self._keys) and self._keys[i] == h:
            row = int(self._order[i])
            if self._filenames[row].as_py() == path:
                return row
            i += 1
        return None

    def __contains__(self, path: str) -> bool:
        return self._row(path) is not None

    def scene_of(self, path: str) -> _Scene | None:
        """The scene an image belongs to, or None if it has no row (or its sample is unknown)."""
        row = self._row(path)
        if row is None:
            return None
        code = int(self._scene_codes[row])
        return self._scenes[code] if code >= 0 else None

    def lookup(self, path: str) -> dict[str, Any] | None:
        """Metadata columns for the image at dataroot-relative ``path``, or None without a row."""
        row = self._row(path)
        if row is None:
            return None
        code = int(self._scene_codes[row])
        scene = self._scenes[code] if code >= 0 else None
        return {
            "sample_data_token": self._sd_tokens[row].as_py(),
            "sample_token": self._sample_tokens[row].as_py(),
            "scene_token": scene.token if scene else None,
            "scene_name": scene.name if scene else None,
            "scene_description": scene.description if scene else None,
            "channel": self._channels[int(self._channel_codes[row])],
            "timestamp": int(self._timestamps[row]),
            "is_key_frame": bool(self._key_frames[row]),
            "location": scene.location if scene else None,
            "logfile": scene.logfile if scene else None,
            "date_captured": scene.date_captured if scene else None,
            "split": self.version,
            "ego_x": _num(self._ego_x[row]),
            "ego_y": _num(self._ego_y[row]),
            "ego_speed": _num(self._ego_speed[row]),
        }

    def nbytes(self) -> int:
        """Approximate memory held by the per-image arrays."""
        arrays = (self._filenames, self._sd_tokens, self._sample_tokens)
        return int(sum(a.nbytes for a in arrays) + self._timestamps.nbytes + self._key_frames.nbytes
                   + self._channel_codes.nbytes + self._scene_codes.nbytes + self._keys.nbytes + self._order.nbytes
                   + self._ego_x.nbytes + self._ego_y.nbytes + self._ego_speed.nbytes)


def _num(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


class MetaIndex:
    """Lookups over one or more table versions (first hit wins, in ``version_order``)."""

    def __init__(self, tables: Sequence[NuScenesTables] = ()) -> None:
        self.tables: list[NuScenesTables] = []
        for t in tables:
            self.add(t)

    def add(self, tables: NuScenesTables) -> None:
        if any(t.version == tables.version for t in self.tables):
            return
        both = self.tables + [tables]
        order = version_order(t.version for t in both)
        self.tables = sorted(both, key=lambda t: order.index(t.version))  # one assignment: readers never see a half-sorted list

    def __bool__(self) -> bool:
        return bool(self.tables)

    @property
    def versions(self) -> list[str]:
        return [t.version for t in self.tables]

    @property
    def rows(self) -> int:
        return sum(len(t) for t in self.tables)

    def lookup(self, path: str) -> dict[str, Any] | None:
        for t in self.tables:
            meta = t.lookup(path)
            if meta is not None:
                return meta
        return None

    def scene_of(self, path: str) -> _Scene | None:
        for t in self.tables:
            if path in t:
                return t.scene_of(path)
        return None

    def scene_keys(self) -> set[str]:
        """Every scene name and token known to the tables (for validating ``--scenes``)."""
        out: set[str] = set()
        for t in self.tables:
            for s in t.scenes:
                out.update(k for k in (s.name, s.token) if k is not None)
        return out


@dataclass
class TablesBuilder(TableBuilder):
    """Collects the six tables of one version as they arrive (in any order) and joins them.

    ``keep(filename)`` decides which sample_data rows are kept (default: image files only), so the
    big table never lives whole in memory.
    """

    TABLES: ClassVar[tuple[str, ...]] = NEEDED_TABLES
    version: str
    keep: Callable[[str], bool] = is_image_name
    chunk_bytes: int = CHUNK_BYTES
    _small: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _sd: dict[str, list[Any]] | None = None
    _poses: EgoPoses | None = None
    sample_data_rows_read: int = 0
    seconds: float = 0.0

    def wants(self, table: str) -> bool:
        """True while ``table`` is needed and not yet added."""
        if table == "sample_data":
            return self._sd is None
        if table == "ego_pose":
            return self._poses is None
        return table in NEEDED_TABLES and table not in self._small

    def _parse(self, table: str, source: bytes | Callable[[int], bytes]) -> None:
        if table == "sample_data":
            self._add_sample_data(reader_of(source))
        elif table == "ego_pose":
            poses = EgoPoses()
            poses.add_stream(reader_of(source), self.chunk_bytes)
            self._poses = poses
        else:
            self._small[table] = self._whole(source)

    def _add_sample_data(self, read: Callable[[int], bytes]) -> None:
        cols: dict[str, list[Any]] = {k: [] for k in ("filename", "token", "sample_token", "cs", "timestamp", "key",
                                                      "hash", "ego", "prev", "img_token", "img_ego")}
        for piece in iter_array_slices(read, self.chunk_bytes):
            n, kept, images = decode_sample_data(piece, self.keep, is_image_name)
            self.sample_data_rows_read += n
            if images:
                itok, iego = zip(*images)
                cols["img_token"].append(pa.array(itok, pa.string()))
                cols["img_ego"].append(pa.array(iego, pa.string()))
            if not kept:
                continue
            tok, smp, cs, fn, ts, kf, ego, prev = zip(*kept)
            cols["ego"].append(pa.array(ego, pa.string()))
            cols["prev"].append(pa.array(prev, pa.string()))
            cols["filename"].append(pa.array(fn, pa.string()))
            cols["token"].append(pa.array(tok, pa.string()))
            cols["sample_token"].append(pa.array(smp, pa.string()))
            cols["cs"].append(pa.array(cs, pa.string()))
            cols["timestamp"].append(np.asarray(ts, dtype=np.int64))
            cols["key"].append(np.asarray(kf, dtype=bool))
            cols["hash"].append(np.fromiter((hash(f) for f in fn), dtype=np.int64, count=len(fn)))
        self._sd = cols

    def build(self) -> NuScenesTables:
        """Join the tables; raises TablesError naming what is missing."""
        missing = self.missing()
        if missing:
            raise TablesError(f"{self.version}: missing table(s) {', '.join(m + '.json' for m in missing)}")
        t0 = time.perf_counter()
        assert self._sd is not None
        sd = self._sd

        def cat_str(chunks: list[pa.Array]) -> pa.ChunkedArray:
            return pa.chunked_array(chunks, type=pa.string())  # no copy: the chunks are the storage

        def cat_np(chunks: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(chunks) if chunks else np.zeros(0, dtype)

        self._sd = {}
        # pop each column's chunks as it is joined: at most one numeric column exists twice
        filenames = cat_str(sd.pop("filename"))
        sd_tokens = cat_str(sd.pop("token"))
        sample_tokens = cat_str(sd.pop("sample_token"))
        cs_tokens = cat_str(sd.pop("cs"))
        timestamps = cat_np(sd.pop("timestamp"), np.int64)
        key_frames = cat_np(sd.pop("key"), bool)
        keys = cat_np(sd.pop("hash"), np.int64)
        assert self._poses is not None
        ego = ego_columns(self._poses, cat_str(sd.pop("ego")), cat_str(sd.pop("prev")), cat_str(sd.pop("img_token")),
                          cat_str(sd.pop("img_ego")))
        self._poses = None

        # Joins as vectorised lookups (pyarrow index_in + numpy take): no per-row Python objects.
        sensors = {r["token"]: r.get("channel") for r in self._small["sensor"]}
        cs_rows = self._small["calibrated_sensor"]
        cs_channel = [sensors.get(r.get("sensor_token")) for r in cs_rows]
        channels: list[str | None] = sorted({c for c in cs_channel if c}) + [None]
        ch_code = {c: i for i, c in enumerate(channels)}
        cs_codes = np.array([ch_code[c] for c in cs_channel] + [len(channels) - 1], dtype=np.int16)
        channel_codes = cs_codes[_index_in(cs_tokens, [r["token"] for r in cs_rows])]
        del cs_tokens

        logs = {r["token"]: r for r in self._small["log"]}
        scenes: list[_Scene] = []
        scene_code: dict[str, int] = {}
        for r in self._small["scene"]:
            lg = logs.get(r.get("log_token"), {})
            scene_code[r["token"]] = len(scenes)
            scenes.append(_Scene(token=r["token"], name=r.get("name"), description=r.get("description"),
                                 location=lg.get("location"), logfile=lg.get("logfile"),
                                 date_captured=lg.get("date_captured")))
        samples = self._small["sample"]
        sample_codes = np.array([scene_code.get(r.get("scene_token", ""), -1) for r in samples] + [-1], dtype=np.int32)
        scene_codes = sample_codes[_index_in(sample_tokens, [r["token"] for r in samples])]
        self._small = {}
        tables = NuScenesTables(self.version, filenames, sd_tokens, sample_tokens, timestamps, key_frames,
                                channel_codes, channels, scene_codes, scenes, keys=keys, ego=ego)
        self.seconds += time.perf_counter() - t0
        log.info("nuScenes %s: %d image rows kept of %d sample_data rows (%.1fs, %.0f MB)", self.version,
                 len(tables), self.sample_data_rows_read, self.seconds, tables.nbytes() / 1e6)
        return tables


def _index_in(values: pa.ChunkedArray, tokens: list[str]) -> np.ndarray:
    """Position of each value in ``tokens``; ``len(tokens)`` (a sentinel slot) where it is absent."""
    import pyarrow.compute as pc

    idx = pc.index_in(values, value_set=pa.array(tokens, pa.string()))
    return idx.fill_null(len(tokens)).to_numpy(zero_copy_only=False).astype(np.int64)
