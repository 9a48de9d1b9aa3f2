"""``job import``: vectors made elsewhere (``vector_files``: a parquet, or clip-retrieval's output folder) become a real
run folder — parts, ``_run.json``, the completeness check and the manifest last, through ``job.runfolder`` — so
``job index``, ``job curate``, ``job search``, ``job serve`` and the notebook work on them as on an embedded run.

Two passes over the input. The first checks everything and writes nothing: the columns, one dimension for every
vector (and the model's, with ``--model``), no NaN, inf or zero vector, a path on every row; any fault is one line,
exit 2. The second writes the parts under the output's lease. Vectors that are not unit length are normalised (the
run's index and curation assume cosine = inner product), and the log says how many. A path given twice keeps its
first vector (``counts.duplicate_paths_skipped``). Ids are ``path_id`` of the stored path, the path relative to
``--image-root`` (or, for nuScenes paths, to their dataroot: ``samples/CAM_FRONT/…``, the path an embedded run
stores, so the ids agree), and the folder in front of it is the run's source, where thumbnails are read from.
``--nuscenes-meta`` joins nuScenes' metadata by path (scene, channel, time, place, ego pose: what curation's
standing-still, ``--min-gap-s`` and ``--balance`` read), except the columns the input already has.

Without ``--model`` the run has no model: search by id works, text and image queries say they need one. With it,
the model is loaded once to check that it makes vectors of this dimension, and its weights hash is recorded, so a
later search loads the same weights or refuses.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .. import fsutil
from ..config import JobConfig, ModelConfig, SourceConfig
from ..errors import UsageError
from ..runfolder import (
    Counts,
    Lease,
    Manifest,
    ModelInfo,
    Outputs,
    PartKey,
    RunLayout,
    embedding_schema,
    part_url,
    path_id,
    table_bytes,
    write_manifest,
)
from ..runfolder.schema import FAILURES_SCHEMA, HASH_COLUMN, OWN_COLUMNS
from ..values import check_choice
from .attempt import _versions
from .resume import check_complete, prepare_run
from .vector_files import FORMATS, Batch, ClipRetrievalVectors, ParquetVectors, open_vectors

log = logging.getLogger(__name__)

UNIT_TOLERANCE = 1e-3  # a vector whose norm is further than this from 1 is normalised (float16 inputs stay within it)


@dataclass(frozen=True)
class ImportOptions:
    """What only ``job import`` asks (its input is ``cfg.source.sources``, the model that made the vectors
    ``cfg.model``, ``""`` when unknown, the run folder ``cfg.output``): the input's format and columns, and the folder
    its paths are under."""

    format: str = "auto"  # auto: clip-retrieval when the folder holds img_emb/, else parquet
    path_column: str = "path"
    embedding_column: str = "embedding"
    image_root: str | None = None  # paths under it are stored relative to it; thumbnails are read from it

    def __post_init__(self) -> None:
        check_choice("--format", self.format, FORMATS)


@dataclass
class Checked:
    """What the check pass found."""

    rows: int = 0
    dim: int = 0
    unique: int = 0
    duplicates: int = 0
    normalised: int = 0
    norm_range: tuple[float, float] = (np.inf, 0.0)
    roots: dict[str, int] = field(default_factory=dict)  # the folder in front of the stored paths -> images
    common: str | None = None  # the folder every other absolute path is under (stored relative to it)


def _nuscenes_split(p: str) -> tuple[str, str] | None:
    from ..nuscenes import dataroot_relative

    rel = dataroot_relative(p)
    return (rel, p[: -len(rel)].rstrip("/") or "/") if rel != p.lstrip("/") and p.endswith("/" + rel) else None


def stored_path(path: str, image_root: str | None, common: str | None = None) -> tuple[str, str]:
    """(the path a run stores, the folder in front of it): relative to ``image_root`` when under it; a nuScenes path
    (``…/samples/CAM_FRONT/x.jpg``) relative to its dataroot; another absolute path or URL relative to ``common``
    (the folder all of them are under); a relative path as given."""
    p = path.replace("\\", "/")
    if image_root:
        root = image_root.rstrip("/")
        if p.startswith(root + "/"):
            return p[len(root) + 1:], root
    if p.startswith("/") or "://" in p:
        split = _nuscenes_split(p)
        if split is not None:
            return split
        if common is not None and p.startswith(common.rstrip("/") + "/"):
            return p[len(common.rstrip("/")) + 1:], common
    return p, ""


def _common_folder(a: str | None, p: str) -> str:
    """The longest folder (ending before a ``/``) that both ``a`` and ``p``'s folder start with."""
    folder = p.rpartition("/")[0] or "/"
    if a is None:
        return folder
    while a and not (folder == a or folder.startswith(a.rstrip("/") + "/")):
        a = a.rpartition("/")[0]
    return a or "/"


def _check(reader: ParquetVectors | ClipRetrievalVectors, image_root: str | None) -> Checked:
    """The first pass: every fault found here is a UsageError, and nothing has been written."""
    c = Checked()
    seen: set[str] = set()
    others: list[str] = []
    for b in reader.batches():
        x = b.vectors
        if x.shape[1] == 0:
            raise UsageError(f"{b.where}: the vectors are empty (dimension 0)")
        if c.dim and x.shape[1] != c.dim:
            raise UsageError(f"{b.where}: rows from {b.first_row} have dimension {x.shape[1]}, earlier rows "
                             f"{c.dim}: every vector must have the same dimension")
        c.dim = x.shape[1]
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise UsageError(f"{b.where}: row {b.first_row + bad} ({b.paths[bad]}) has NaN or inf in its vector; "
                             f"{int((~finite).sum())} such rows in this batch")
        norms = np.linalg.norm(x, axis=1)
        if (norms < 1e-12).any():
            bad = int(np.argmin(norms))
            raise UsageError(f"{b.where}: row {b.first_row + bad} ({b.paths[bad]}) is a zero vector; it has no "
                             "direction to compare")
        off = np.abs(norms - 1.0) > UNIT_TOLERANCE
        c.normalised += int(off.sum())
        c.norm_range = (min(c.norm_range[0], float(norms.min())), max(c.norm_range[1], float(norms.max())))
        for i, p in enumerate(b.paths):
            if p is None or not str(p).strip():
                raise UsageError(f"{b.where}: row {b.first_row + i} has no path")
            key, root = stored_path(str(p), image_root)
            if key in seen:
                c.duplicates += 1
                continue
            seen.add(key)
            if key == str(p).replace("\\", "/") and (key.startswith("/") or "://" in key):
                c.common = _common_folder(c.common, key)  # stored relative to the common folder, known at the end
                others.append(key)
            else:
                c.roots[root] = c.roots.get(root, 0) + 1
        c.rows += len(b.paths)
    if not c.rows:
        raise UsageError(f"{reader.description} holds no vectors")
    c.unique = len(seen)
    for key in others:
        root = stored_path(key, image_root, c.common)[1]
        c.roots[root] = c.roots.get(root, 0) + 1
    return c


def _meta_fields(reader: ParquetVectors | ClipRetrievalVectors, nuscenes: bool) -> tuple[list[pa.Field], dict[str, str]]:
    """The metadata columns the run stores, and the input columns renamed (those that clash with the run's own)."""
    from ..nuscenes import META_FIELDS

    renamed: dict[str, str] = {}
    fields: list[pa.Field] = []
    for f in reader.meta_schema:
        own = f.name in OWN_COLUMNS
        fits = (f.name in ("width", "height") and pa.types.is_integer(f.type)) or (
            f.name == HASH_COLUMN and pa.types.is_fixed_size_binary(f.type) and f.type.byte_width == 16)
        if own and not fits:
            renamed[f.name] = f"source_{f.name}"
            fields.append(pa.field(renamed[f.name], f.type))
        elif not own:
            fields.append(f)
    if nuscenes:
        have = {f.name for f in fields}
        fields += [f for f in META_FIELDS if f.name not in have]
    return fields, renamed


def _model(mc: ModelConfig, dim: int) -> ModelInfo:
    """The model named by ``--model`` (loaded to check its dimension and hash its weights), or an unknown one."""
    if not mc.model:
        return ModelInfo(name="", pretrained="", weights_sha256="", pool=mc.pool, image_size=0, embed_dim=dim)
    from ..model.load import load_model

    lm = load_model(dataclasses.replace(mc, device="cpu", precision="fp32", compile=False))
    if lm.embed_dim != dim:
        raise UsageError(f"the vectors are {dim}-d, but {mc.model} makes {lm.embed_dim}-d vectors: they were not "
                         "made by this model (name the one that made them with --model / --pretrained)")
    return ModelInfo(**{**lm.describe(), "pool": mc.pool, "device": "unknown (imported)", "load_seconds": 0.0})


def import_vectors(cfg: JobConfig, ic: ImportOptions) -> Manifest:
    """``job import``: check the input (nothing written on a fault), write the run's parts, then the manifest."""
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    if len(cfg.source.sources) != 1:
        raise UsageError("give one --from: a parquet (path, embedding, …) or clip-retrieval's output folder")
    source, nuscenes_meta, mc = cfg.source.sources[0], cfg.source.nuscenes_meta, cfg.model
    layout = RunLayout.for_output(cfg.output.out)
    reader = open_vectors(source, ic.format, ic.path_column, ic.embedding_column)
    meta_index = _nuscenes(nuscenes_meta) if nuscenes_meta else None
    checked = _check(reader, ic.image_root)
    model = _model(mc, checked.dim)
    fields, renamed = _meta_fields(reader, meta_index is not None)
    schema = embedding_schema(checked.dim, fields)
    fmt = "clip-retrieval" if isinstance(reader, ClipRetrievalVectors) else "parquet"
    imported = {"source": source, "format": fmt, "path_column": ic.path_column if fmt == "parquet" else
                "image_path", "embedding_column": ic.embedding_column if fmt == "parquet" else "img_emb",
                "image_root": ic.image_root, "nuscenes_meta": nuscenes_meta}
    identity = {"table": 3, "imported": imported, "model": mc.model or None, "pretrained": mc.pretrained if mc.model else None,
                "weights_sha256": model.weights_sha256, "dim": checked.dim}
    if checked.normalised:
        log.warning("%d of %d vectors were not unit length (norms %.4g to %.4g): normalised", checked.normalised,
                    checked.rows, *checked.norm_range)
    if checked.duplicates:
        log.warning("%d rows repeat a path given earlier: the first vector of each path is kept", checked.duplicates)
    with Lease.for_output(layout.lease, cfg.output.lease_timeout) as lease:
        state = prepare_run(layout, identity, overwrite=cfg.output.overwrite, attempt=lease.owner)
        written = _write(reader, layout, schema, renamed, meta_index, (ic.image_root, checked.common), state.done_paths,
                         state.next_part, cfg.output.part_size, lease, identity)
        lease.check()
        ledger = check_complete(layout, state.done_paths | written, lease.owner, command="job import")
        roots = tuple(r for r in checked.roots if r)
        named = ModelConfig(model=mc.model, pretrained=mc.pretrained if mc.model else "", pool=mc.pool)
        config = dataclasses.replace(cfg, model=named, source=SourceConfig(sources=roots, nuscenes_meta=nuscenes_meta))
        manifest = Manifest(
            status="succeeded", started=started.isoformat(), finished=dt.datetime.now(dt.timezone.utc).isoformat(),
            host=platform.node(), run_dir=layout.run_dir,
            outputs=Outputs(embeddings=layout.embeddings_name, failures=layout.rel(layout.failures),
                            state=layout.rel(layout.state)),
            config=config.to_dict(), model=model,
            counts=Counts(seen=checked.rows, embedded=ledger.rows, failed=0, embedded_this_attempt=len(written),
                          resumed_from_earlier_attempts=len(state.done_paths),
                          duplicate_paths_skipped=checked.duplicates),
            source={"description": f"imported from {reader.description}", "imported": {
                **imported, "rows": checked.rows, "normalised": checked.normalised, "image_roots": checked.roots}},
            timings={"import_s": round(time.perf_counter() - t0, 3)}, versions=_versions())
        write_manifest(layout, manifest)
    log.info("imported %d vectors (%d-d) from %s into %s in %.1f s", ledger.rows, checked.dim, reader.description,
             layout.run_dir, time.perf_counter() - t0)
    return manifest


def _nuscenes(uri: str) -> Any:
    """nuScenes' tables from ``--nuscenes-meta`` (every camera, keyframes and sweeps)."""
    from ..errors import DataError
    from ..nuscenes import MetaIndex, TablesError
    from ..sources import NoTablesError, Selection, tables_from_location

    try:
        return MetaIndex(tables_from_location(uri, None, Selection(keyframes_only=False)))
    except (NoTablesError, FileNotFoundError) as exc:
        raise UsageError(f"--nuscenes-meta {uri!r}: {exc}") from None
    except TablesError as exc:
        raise DataError(f"--nuscenes-meta {uri!r}: {exc}") from None


def _write(reader: ParquetVectors | ClipRetrievalVectors, layout: RunLayout, schema: pa.Schema,
           renamed: dict[str, str], meta_index: Any, roots: tuple[str | None, str | None], done: set[str], next_part: int,
           part_size: int, lease: Lease, identity: dict[str, Any]) -> set[str]:
    """The second pass: rows not committed yet, in parts (failures file, then embeddings file); their paths."""
    written: set[str] = set()
    pending: list[pa.Table] = []
    count = 0
    number = next_part

    def commit() -> None:
        nonlocal pending, count, number
        if not count:
            return
        lease.check()
        if not fsutil.exists(layout.state):
            fsutil.write_json(layout.state, identity)
        key = PartKey(number, lease.owner)
        fsutil.atomic_write_bytes(part_url(layout.failures, key), table_bytes(FAILURES_SCHEMA.empty_table()))
        fsutil.atomic_write_bytes(part_url(layout.embeddings, key), table_bytes(pa.concat_tables(pending)))
        number, pending, count = number + 1, [], 0

    for b in reader.batches():
        table = _rows(b, schema, renamed, meta_index, roots, (done, written))
        if not table.num_rows:
            continue
        written.update(table.column("path").to_pylist())
        for s in range(0, table.num_rows, part_size):
            piece = table.slice(s, part_size)
            while piece.num_rows:
                take = min(piece.num_rows, part_size - count)
                pending.append(piece.slice(0, take))
                count += take
                piece = piece.slice(take)
                if count >= part_size:
                    commit()
    commit()
    return written


def _rows(b: Batch, schema: pa.Schema, renamed: dict[str, str], meta_index: Any, roots: tuple[str | None, str | None],
          skip: tuple[set[str], ...]) -> pa.Table:
    """One batch as rows of the run's embeddings table (normalised; paths committed earlier, or earlier in the
    input, left out)."""
    keep, paths = [], []
    batch_seen: set[str] = set()
    for i, p in enumerate(b.paths):
        rel = stored_path(str(p), *roots)[0]
        if rel in batch_seen or any(rel in s for s in skip):
            continue
        batch_seen.add(rel)
        keep.append(i)
        paths.append(rel)
    if not keep:
        return schema.empty_table()
    idx = np.asarray(keep)
    x = b.vectors[idx]
    x = x / np.linalg.norm(x, axis=1, keepdims=True).astype(np.float32)
    meta = b.meta.take(pa.array(idx)).rename_columns([renamed.get(c, c) for c in b.meta.column_names])
    joined = [meta_index.lookup(p) or {} for p in paths] if meta_index is not None else None
    cols: dict[str, Any] = {}
    for f in schema:
        if f.name == "id":
            cols[f.name] = pa.array([path_id(p) for p in paths], pa.int64())
        elif f.name == "path":
            cols[f.name] = pa.array(paths, pa.string())
        elif f.name == "embedding":
            cols[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
        elif f.name in meta.column_names:
            cols[f.name] = meta.column(f.name).cast(f.type)
        elif joined is not None and any(f.name in j for j in joined):
            cols[f.name] = pa.array([j.get(f.name) for j in joined], f.type)
        else:
            cols[f.name] = pa.nulls(len(paths), f.type)
    return pa.table(cols, schema=schema)
