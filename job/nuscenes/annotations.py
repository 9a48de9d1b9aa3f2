"""nuScenes' annotation tables as columns: the 3D boxes of every keyframe sample, their category, attributes and
visibility, and the camera geometry (ego pose, calibrated sensor) that says which camera sees which box.

:class:`AnnotationBuilder` takes the tables one by one as their bytes arrive (a file, an S3 object or an archive member,
in any order, like :class:`job.nuscenes.TablesBuilder`) and keeps them as numpy arrays: tokens become 64-bit keys
(Python's string hash within this process, the same keys every table uses), numbers float64 matrices, names small
integer codes. Nothing is held as one Python object per row; ``sample_annotation`` (1.2M rows in trainval) and
``ego_pose`` (2.6M) are parsed in slices of ``CHUNK_BYTES``. Only the ``sample_data`` rows the caller asks for (the
run's images, by token) are kept, and once they are known only their ego poses. Which boxes a camera sees:
:mod:`job.nuscenes.boxes`. Measured on trainval-sized tables: ``docs/benchmarks.md`` (``bench/eval_bench.py``).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import msgspec
import numpy as np
import pyarrow as pa

from .jsonstream import CHUNK_BYTES, iter_array_slices, reader_of
from .keys import positions as _positions
from .keys import token_keys
from .schema import TablesError
from .sink import TableBuilder

log = logging.getLogger(__name__)

# The tables the labels need (sample, scene and log are not: the run's rows carry the scene).
ANNOTATION_TABLES: tuple[str, ...] = ("sample_annotation", "instance", "category", "attribute", "visibility",
                                      "calibrated_sensor", "sensor", "ego_pose", "sample_data")
_SMALL = ("instance", "category", "attribute", "visibility", "calibrated_sensor", "sensor")
_LEVEL_RE = re.compile(r"v(\d+)-(\d+)")


class _AnnRow(msgspec.Struct):
    sample_token: str
    instance_token: str
    translation: list[float]
    size: list[float]
    rotation: list[float]
    visibility_token: str = ""
    attribute_tokens: list[str] = []


class _PoseRow(msgspec.Struct):
    token: str
    translation: list[float]
    rotation: list[float]


class _SdRow(msgspec.Struct):
    token: str
    sample_token: str
    ego_pose_token: str
    calibrated_sensor_token: str
    width: int = 0
    height: int = 0
    is_key_frame: bool = False


_DECODERS: dict[str, Any] = {
    "sample_annotation": msgspec.json.Decoder(list[_AnnRow]),
    "ego_pose": msgspec.json.Decoder(list[_PoseRow]),
    "sample_data": msgspec.json.Decoder(list[_SdRow]),
}


def visibility_rank(token: str, level: str | None) -> int:
    """1..4 for nuScenes' visibility levels v0-40, v40-60, v60-80, v80-100 (from the level, else the token)."""
    m = _LEVEL_RE.fullmatch(level or "")
    if m:
        return {0: 1, 40: 2, 60: 3, 80: 4}.get(int(m.group(1)), 0)
    return int(token) if token.isdigit() else 0


@dataclass
class Annotations:
    """The run's keyframe images with their camera geometry, and every box of their samples.

    Images (rows ``i``): ``sd_tokens``, ``sample_keys``, ``width``/``height`` (pixels), ``camera`` (the sensor is a
    camera), the ego pose (``ego_t`` (n, 3) metres, ``ego_q`` (n, 4) w x y z) and the calibrated sensor (``cs_t``,
    ``cs_q``, ``intrinsic`` (n, 3, 3)). Boxes (rows ``j``, sorted by sample): ``ann_sample_keys``, ``category``
    (codes into ``categories``, sorted by name), ``visibility`` (1..4, 0 unknown), ``attr_offsets``/``attr_codes``
    (ragged codes into ``attributes``), ``center`` (n, 3), ``wlh`` (n, 3), ``rotation`` (n, 4) in the global frame.
    """

    version: str
    sd_tokens: pa.Array
    sample_keys: np.ndarray
    width: np.ndarray
    height: np.ndarray
    camera: np.ndarray
    ego_t: np.ndarray
    ego_q: np.ndarray
    cs_t: np.ndarray
    cs_q: np.ndarray
    intrinsic: np.ndarray
    ann_sample_keys: np.ndarray
    category: np.ndarray
    visibility: np.ndarray
    attr_offsets: np.ndarray
    attr_codes: np.ndarray
    center: np.ndarray
    wlh: np.ndarray
    rotation: np.ndarray
    categories: list[str]
    attributes: list[str]
    seconds: float = 0.0

    @property
    def n_images(self) -> int:
        return len(self.sample_keys)

    @property
    def n_boxes(self) -> int:
        return len(self.ann_sample_keys)

    def box_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of each image's sample's boxes (boxes are sorted by sample key)."""
        start = np.searchsorted(self.ann_sample_keys, self.sample_keys, side="left")
        end = np.searchsorted(self.ann_sample_keys, self.sample_keys, side="right")
        return start.astype(np.int64), end.astype(np.int64)

    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in vars(self).values() if isinstance(v, (np.ndarray, pa.Array))))


@dataclass
class _Boxes:
    sample: list[np.ndarray] = field(default_factory=list)
    instance: list[np.ndarray] = field(default_factory=list)
    visibility: list[np.ndarray] = field(default_factory=list)  # key of the visibility token
    attr_counts: list[np.ndarray] = field(default_factory=list)
    attr_keys: list[np.ndarray] = field(default_factory=list)
    center: list[np.ndarray] = field(default_factory=list)
    wlh: list[np.ndarray] = field(default_factory=list)
    rotation: list[np.ndarray] = field(default_factory=list)

    def add(self, rows: list[_AnnRow]) -> None:
        self.sample.append(token_keys(r.sample_token for r in rows))
        self.instance.append(token_keys(r.instance_token for r in rows))
        self.visibility.append(token_keys(r.visibility_token for r in rows))
        self.attr_counts.append(np.fromiter((len(r.attribute_tokens) for r in rows), np.int64, len(rows)))
        self.attr_keys.append(token_keys(t for r in rows for t in r.attribute_tokens))
        self.center.append(np.array([r.translation for r in rows], np.float64).reshape(-1, 3))
        self.wlh.append(np.array([r.size for r in rows], np.float64).reshape(-1, 3))
        self.rotation.append(np.array([r.rotation for r in rows], np.float64).reshape(-1, 4))


def _cat(chunks: list[np.ndarray], dtype: Any, width: int = 0) -> np.ndarray:
    if chunks:
        return np.concatenate(chunks)
    return np.zeros((0, width) if width else 0, dtype)


class AnnotationBuilder(TableBuilder):
    """Collects the annotation tables of one version as they arrive (any order) and joins them (:meth:`build`).

    ``sd_tokens``: the ``sample_data`` tokens whose images are wanted (the run's rows); None keeps every keyframe.
    Same protocol as ``TablesBuilder`` (``wants``, ``add``, ``missing``, ``complete``, ``build``), so the sources read
    it from a folder, an ``s3://`` prefix or an archive alike (``job.sources.fill_from_location``).
    """

    TABLES: ClassVar[tuple[str, ...]] = ANNOTATION_TABLES
    PARSE_ERRORS: ClassVar[tuple[type[BaseException], ...]] = (ValueError, KeyError, TypeError, msgspec.DecodeError)

    def __init__(self, version: str, sd_tokens: Iterable[str] | None = None, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.version = version
        self.chunk_bytes = chunk_bytes
        self._wanted = None if sd_tokens is None else np.unique(token_keys(sd_tokens))
        self._small: dict[str, list[dict[str, Any]]] = {}
        self._boxes: _Boxes | None = None
        self._poses: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._sd: dict[str, Any] | None = None
        self.rows_read: dict[str, int] = {}
        self.seconds = 0.0

    def wants(self, table: str) -> bool:
        if table == "sample_annotation":
            return self._boxes is None
        if table == "ego_pose":
            return self._poses is None
        if table == "sample_data":
            return self._sd is None
        return table in _SMALL and table not in self._small

    def _parse(self, table: str, source: bytes | Callable[[int], bytes]) -> None:
        if table in _DECODERS:
            self._add_big(table, reader_of(source))
        else:
            rows = self._whole(source)
            self._small[table] = rows
            self.rows_read[table] = len(rows)

    def _add_big(self, table: str, read: Callable[[int], bytes]) -> None:
        decoder = _DECODERS[table]
        boxes = _Boxes()
        pose_k: list[np.ndarray] = []
        pose_t: list[np.ndarray] = []
        pose_q: list[np.ndarray] = []
        sd: dict[str, list[Any]] = {k: [] for k in ("token", "key", "sample", "ego", "cs", "w", "h")}
        need_poses = None if self._sd is None else np.unique(self._sd["ego"])
        n = 0
        for piece in iter_array_slices(read, self.chunk_bytes):
            rows = decoder.decode(piece)
            n += len(rows)
            if table == "sample_annotation":
                if rows:
                    boxes.add(rows)
            elif table == "ego_pose":
                keys = token_keys(r.token for r in rows)
                keep = np.ones(len(rows), bool) if need_poses is None else np.isin(keys, need_poses)
                idx = np.flatnonzero(keep)
                pose_k.append(keys[idx])
                pose_t.append(np.array([rows[i].translation for i in idx], np.float64).reshape(-1, 3))
                pose_q.append(np.array([rows[i].rotation for i in idx], np.float64).reshape(-1, 4))
            else:
                self._keep_sample_data(rows, sd)
        self.rows_read[table] = n
        if table == "sample_annotation":
            self._boxes = boxes
        elif table == "ego_pose":
            self._poses = (_cat(pose_k, np.int64), _cat(pose_t, np.float64, 3), _cat(pose_q, np.float64, 4))
        else:
            self._sd = {"token": pa.chunked_array(sd["token"], pa.string()).combine_chunks(),
                        **{k: _cat(sd[k], np.int64) for k in ("key", "sample", "ego", "cs", "w", "h")}}
            if self._poses is not None:  # poses came first: keep only the ones of the wanted images
                k, t, q = self._poses
                keep = np.isin(k, self._sd["ego"])
                self._poses = (k[keep], t[keep], q[keep])

    def _keep_sample_data(self, rows: list[_SdRow], sd: dict[str, list[Any]]) -> None:
        keys = token_keys(r.token for r in rows)
        if self._wanted is not None:
            keep = np.isin(keys, self._wanted)
        else:
            keep = np.fromiter((r.is_key_frame for r in rows), bool, len(rows))
        idx = np.flatnonzero(keep)
        if not len(idx):
            return
        sel = [rows[i] for i in idx]
        sd["token"].append(pa.array([r.token for r in sel], pa.string()))
        sd["key"].append(keys[idx])
        sd["sample"].append(token_keys(r.sample_token for r in sel))
        sd["ego"].append(token_keys(r.ego_pose_token for r in sel))
        sd["cs"].append(token_keys(r.calibrated_sensor_token for r in sel))
        sd["w"].append(np.fromiter((r.width for r in sel), np.int64, len(sel)))
        sd["h"].append(np.fromiter((r.height for r in sel), np.int64, len(sel)))

    def build(self) -> Annotations:
        """Join the tables; raises TablesError naming what is missing."""
        missing = self.missing()
        if missing:
            raise TablesError(f"{self.version}: missing table(s) {', '.join(m + '.json' for m in missing)}")
        t0 = time.perf_counter()
        assert self._sd is not None and self._poses is not None and self._boxes is not None
        sd, (pk, pt, pq), b = self._sd, self._poses, self._boxes
        small = self._small
        # images: ego pose and calibrated sensor by key
        at = _positions(sd["ego"], pk)
        nan3, nan4 = np.full(3, np.nan), np.full(4, np.nan)
        ego_t = np.where((at >= 0)[:, None], pt[np.clip(at, 0, None)] if len(pk) else nan3, nan3)
        ego_q = np.where((at >= 0)[:, None], pq[np.clip(at, 0, None)] if len(pk) else nan4, nan4)
        cs_rows = small["calibrated_sensor"]
        modality = {hash(r["token"]): r.get("modality") for r in small["sensor"]}
        cs_keys = token_keys(r["token"] for r in cs_rows)
        cs_tab_t = np.array([r.get("translation") or [np.nan] * 3 for r in cs_rows], np.float64).reshape(-1, 3)
        cs_tab_q = np.array([r.get("rotation") or [np.nan] * 4 for r in cs_rows], np.float64).reshape(-1, 4)
        cs_tab_k = np.array([r.get("camera_intrinsic") or [[np.nan] * 3] * 3 for r in cs_rows],
                            np.float64).reshape(-1, 3, 3)
        cs_cam = np.array([modality.get(hash(r.get("sensor_token", ""))) == "camera" for r in cs_rows], bool)
        ci = _positions(sd["cs"], cs_keys)
        has = ci >= 0
        cj = np.clip(ci, 0, None)

        def pick(tab: np.ndarray, fill: np.ndarray) -> np.ndarray:
            if not len(tab):
                return np.broadcast_to(fill, (len(ci), *fill.shape)).copy()
            return np.where(has.reshape(-1, *([1] * fill.ndim)), tab[cj], fill)

        cs_t, cs_q = pick(cs_tab_t, nan3), pick(cs_tab_q, nan4)
        intrinsic = pick(cs_tab_k, np.full((3, 3), np.nan))
        camera = has & (cs_cam[cj] if len(cs_cam) else np.zeros(len(ci), bool))

        # boxes: category via instance, visibility rank, attribute codes; sorted by sample
        categories = sorted({r["name"] for r in small["category"]})
        cat_code = {hash(r["token"]): categories.index(r["name"]) for r in small["category"]}
        inst_keys = token_keys(r["token"] for r in small["instance"])
        inst_cat = np.array([cat_code.get(hash(r.get("category_token", "")), -1) for r in small["instance"]], np.int64)
        attributes = sorted({r["name"] for r in small["attribute"]})
        attr_code = {hash(r["token"]): attributes.index(r["name"]) for r in small["attribute"]}
        vis_rank = {hash(r["token"]): visibility_rank(r["token"], r.get("level")) for r in small["visibility"]}
        sample = _cat(b.sample, np.int64)
        order = np.argsort(sample, kind="stable")
        ii = _positions(_cat(b.instance, np.int64), inst_keys)
        category = np.where(ii >= 0, inst_cat[np.clip(ii, 0, None)] if len(inst_cat) else -1, -1)
        vkeys = _cat(b.visibility, np.int64)
        visibility = np.array([vis_rank.get(int(k), 0) for k in vkeys], np.int8) if len(vkeys) else np.zeros(0, np.int8)
        counts = _cat(b.attr_counts, np.int64)
        akeys = _cat(b.attr_keys, np.int64)
        codes = np.array([attr_code.get(int(k), -1) for k in akeys], np.int64) if len(akeys) else np.zeros(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        counts_sorted = counts[order]
        new_offsets = np.concatenate([[0], np.cumsum(counts_sorted)]).astype(np.int64)
        gather = (np.repeat(starts[order] - new_offsets[:-1], counts_sorted) + np.arange(new_offsets[-1])
                  if len(order) else np.zeros(0, np.int64))
        out = Annotations(
            version=self.version, sd_tokens=sd["token"], sample_keys=sd["sample"], width=sd["w"], height=sd["h"],
            camera=camera, ego_t=ego_t, ego_q=ego_q, cs_t=cs_t, cs_q=cs_q, intrinsic=intrinsic,
            ann_sample_keys=sample[order], category=category[order].astype(np.int16),
            visibility=visibility[order], attr_offsets=new_offsets, attr_codes=codes[gather].astype(np.int16),
            center=_cat(b.center, np.float64, 3)[order], wlh=_cat(b.wlh, np.float64, 3)[order],
            rotation=_cat(b.rotation, np.float64, 4)[order], categories=categories, attributes=attributes)
        self._boxes = None
        self._poses = None
        self.seconds += time.perf_counter() - t0
        out.seconds = self.seconds
        log.info("nuScenes %s annotations: %d boxes, %d images (%.1f s, %.0f MB)", self.version, out.n_boxes,
                 out.n_images, self.seconds, out.nbytes() / 1e6)
        return out
