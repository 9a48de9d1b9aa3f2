"""The source of one run: each ``--source`` an input, read by threads into one stream, nuScenes metadata joined.

``open_source(cfg)`` turns every ``--source`` (repeatable, globs allowed) into an input:

* a local or mounted folder (``LocalDir``): walked once, records carry the file path (``url``);
* an ``s3://`` prefix of loose files (``S3Prefix``): listed once, objects read by a bounded thread
  pool, records carry the bytes;
* a ``.tgz`` / ``.tar`` archive, local or ``s3://`` (``Archive``): one sequential stream
  (``archive_reader``), records carry the member bytes. ``*_meta.tgz`` archives only supply tables.

Every path is relative to the nuScenes dataroot (``samples/CAM_FRONT/x.jpg``), whichever input
delivered it, so rows, ids and metadata are identical across sources. The inputs run in reader
threads feeding one bounded queue (``fanin``): up to ``MAX_PARALLEL`` at once, or one after the
other in the order given when ``--limit`` asks for "the first N".

nuScenes metadata (``job.nuscenes``) comes from ``--nuscenes-meta``, from the ``v1.0-*`` folder of
a dataroot source, from ``*_meta.tgz`` sources, or from the table members of an archive that
carries them (``v1.0-mini.tgz``; see ``archive``).
"""
from __future__ import annotations

import glob
import os
import time
from typing import AbstractSet, Any, Iterator

import fsspec
import pyarrow as pa

from .. import fsutil
from ..config import SourceConfig
from ..errors import DataError, UsageError
from ..nuscenes import META_FIELDS, MetaIndex, NuScenesTables, TablesError, load_tables_dir
from .archive import (
    META_ARCHIVE_RE,
    Archive,
    NoTablesError,
    is_archive_name,
    tables_from_archive,
    tables_from_location,
)
from .base import VALID_KINDS, ImageRecord, Input, ReadPass, Selection, unreachable
from .fanin import fan_in
from .local import LocalDir
from .s3 import S3Prefix

MAX_PARALLEL = 4  # archives / prefixes read at the same time


class MultiSource:
    """The inputs of one run, read by threads into one stream of records; metadata joined on the way."""

    def __init__(self, inputs: list[Input], meta_archives: list[str], cfg: SourceConfig, sel: Selection, *,
                 shard_mode: str | None = None) -> None:
        self.inputs = inputs
        self.meta_archives = meta_archives
        self.cfg = cfg
        self.sel = sel
        self.scenes = frozenset(cfg.scenes)
        self.nuscenes = bool(cfg.nuscenes_meta or meta_archives or any(
            isinstance(pt, Archive) or getattr(pt, "layout", False) or pt.table_dirs() for pt in inputs))
        self.meta_fields: tuple[pa.Field, ...] = META_FIELDS if self.nuscenes else ()
        names = [pt.url for pt in inputs] + meta_archives
        self.description = (names[0] if len(names) == 1 else f"{len(names)} sources ({', '.join(names)})")
        self._pass: ReadPass | None = None
        self._meta_info: dict[str, Any] = {}
        self._tables: list[NuScenesTables] | None = None
        self._warnings: list[str] = []
        self.shard_mode = shard_mode  # "archives" | "hash" with --shard

    @property
    def total(self) -> int | None:
        """Wanted images before resume (for progress bars), when every input listed its files."""
        if self.scenes or any(pt.total is None for pt in self.inputs):
            return None
        n = sum(pt.total or 0 for pt in self.inputs)
        return min(n, self.cfg.limit) if self.cfg.limit else n

    def estimated_total(self) -> int | None:
        """``total`` when known; else, while ``records()`` streams archives, an estimate from the bytes read: images
        met so far plus the rest of the archives' bytes at the density seen so far. None where the scene filter makes
        the density meaningless or nothing was read yet."""
        exact = self.total
        if exact is not None or self.scenes:
            return exact
        archives = [pt for pt in self.inputs if isinstance(pt, Archive)]
        if any(pt.total is None for pt in self.inputs if not isinstance(pt, Archive)) or \
                any(not pt.size for pt in archives):
            return None
        seen = read = 0
        for pt in archives:
            n, b = pt.read_so_far()
            seen, read = seen + n, read + b
        if read == 0:
            return None
        rest = sum(pt.size or 0 for pt in archives) - read
        n = sum(pt.total or 0 for pt in self.inputs if not isinstance(pt, Archive)) + seen + round(seen * rest / read)
        return min(n, self.cfg.limit) if self.cfg.limit else n

    def prepare(self) -> None:
        """Load the tables known up front and check ``--scenes`` (before the runner writes anything)."""
        p = ReadPass(self.sel, frozenset(), None, self.scenes, MetaIndex(), self.nuscenes)
        t0 = time.perf_counter()
        origin = self._load_meta_option(p) if self.cfg.nuscenes_meta else self._load_found_tables(p)
        self._meta_info = {"from": origin, "load_seconds": round(time.perf_counter() - t0, 2)}
        self._check_scenes(p)
        self._tables = list(p.meta.tables)
        self._warnings = list(p.warnings)

    def _load_meta_option(self, p: ReadPass) -> list[str]:
        """The tables ``--nuscenes-meta`` names: UsageError where it holds none, DataError where they are broken."""
        m = self.cfg.nuscenes_meta
        assert m is not None
        try:
            for t in tables_from_location(m, self.cfg.anon, self.sel):
                p.add_tables(t)
        except (NoTablesError, FileNotFoundError) as exc:
            raise UsageError(f"--nuscenes-meta {m!r}: {exc}") from None
        except TablesError as exc:
            raise DataError(f"--nuscenes-meta {m!r}: {exc}") from None
        return [m]

    def _load_found_tables(self, p: ReadPass) -> list[str]:
        """The tables of ``*_meta.tgz`` sources and of dataroot sources; unusable ones only warn."""
        origin: list[str] = []
        for url in self.meta_archives:
            try:
                for t in tables_from_archive(url, self.cfg.anon, self.sel):
                    p.add_tables(t)
                origin.append(url)
            except TablesError as exc:
                p.warn(f"{url}: {exc}")
        for pt in self.inputs:
            for fs, d in pt.table_dirs():
                try:
                    p.add_tables(load_tables_dir(fs, d, keep=self.sel.wants))
                    origin.append(d if fsutil.is_local(fs) else fs.unstrip_protocol(d))  # a URL eval reads again
                except TablesError as exc:
                    p.warn(f"{d}: unusable nuScenes tables ({exc}); metadata stays empty")
        return origin

    def _check_scenes(self, p: ReadPass) -> None:
        if not self.scenes:
            return
        if p.meta:
            unknown = sorted(s for s in self.scenes if s not in p.meta.scene_keys())
            if unknown and not any(pt.may_carry_tables for pt in self.inputs):
                names = sorted(s.name for t in p.meta.tables for s in t.scenes if s.name is not None)
                raise UsageError(f"unknown scene(s) {', '.join(unknown)}; valid: "
                                 f"{', '.join(names[:12])}{' …' if len(names) > 12 else ''}")
            return
        if not any(pt.may_carry_tables for pt in self.inputs):
            raise UsageError("--scenes needs the nuScenes tables: give --nuscenes-meta (a v1.0-* folder, "
                             "a dataroot or a meta .tgz) or a source that carries them")

    def records(self, skip: AbstractSet[str] = frozenset()) -> Iterator[ImageRecord]:
        """Every wanted image not in ``skip``, with its metadata; ``--limit`` reads the inputs one after the other."""
        if self._tables is None:
            self.prepare()
        p = ReadPass(self.sel, skip, self.cfg.limit, self.scenes, MetaIndex(self._tables or []), self.nuscenes)
        p.warnings.extend(self._warnings)
        self._pass = p
        if self.nuscenes and not p.meta and not any(pt.may_carry_tables for pt in self.inputs):
            p.warn("no nuScenes tables found; metadata columns stay empty (pass --nuscenes-meta)")
        sequential = self.cfg.limit is not None or len(self.inputs) == 1
        yield from fan_in(self.inputs, p, skip, 1 if sequential else min(MAX_PARALLEL, len(self.inputs)))
        missing = p.counts["images_without_metadata"]
        if missing and p.meta:
            p.warn(f"{missing} image(s) have no sample_data row in the nuScenes tables; "
                   "they are kept with empty metadata columns")

    def stats(self) -> dict[str, Any]:
        """What the source read and found, for the manifest (counts only after ``records()`` ran)."""
        p = self._pass
        out: dict[str, Any] = {
            "kind": "nuscenes" if self.nuscenes else "images",
            "inputs": [pt.stats() for pt in self.inputs],
            "channels": sorted(self.sel.channels),
            "keyframes_only": self.sel.keyframes_only,
        }
        if self.cfg.shard is not None:
            out["shard"] = {"index": self.cfg.shard[0], "count": self.cfg.shard[1], "mode": self.shard_mode}
        if self.meta_archives:
            out["meta_archives"] = list(self.meta_archives)
        if p is not None:
            out.update(self._pass_stats(p))
        return out

    def _pass_stats(self, p: ReadPass) -> dict[str, Any]:
        out: dict[str, Any] = {k: int(v) for k, v in sorted(p.counts.items())}
        out.setdefault("images", 0)
        if self.nuscenes:
            out.setdefault("images_without_metadata", 0)
            in_stream = [pt.url for pt in self.inputs if isinstance(pt, Archive) and pt.counts["tables_found"]]
            info = dict(self._meta_info)
            info["from"] = list(info.get("from", [])) + in_stream
            out["metadata"] = {**info, "versions": p.meta.versions, "image_rows": p.meta.rows}
        out["warnings"] = list(p.warnings)
        out["errors"] = list(p.errors)
        archives = [pt for pt in self.inputs if isinstance(pt, Archive) and pt.reader is not None]
        if archives:
            read = [pt.reader.stats for pt in archives if pt.reader is not None]
            out["archives_read"] = len(archives)
            out["bytes_read"] = sum(s.bytes_read for s in read)
            out["bytes_decompressed"] = sum(s.bytes_decompressed for s in read)
            out["members_skipped"] = sum(pt.counts["members_skipped"] for pt in archives)
        return out


# --------------------------------------------------------------------------- building

def _expand(uri: str, anon: bool | None) -> list[str]:
    """The URIs a (possibly globbed) ``--source`` names; UsageError when it names nothing usable."""
    protocol = fsspec.utils.get_protocol(uri)
    if protocol not in ("file", "local", "s3", "s3a"):
        raise UsageError(f"unsupported source {uri!r} (scheme {protocol}://); valid: {VALID_KINDS}")
    if not glob.has_magic(uri):
        return [uri]
    if protocol in ("file", "local"):
        local = uri.split("://", 1)[1] if "://" in uri else uri
        matches = sorted(glob.glob(os.path.expanduser(local)))
    else:
        fs, path = fsutil.url_to_fs(uri, anon)
        try:
            matches = sorted(f"{protocol}://{m}" for m in fs.glob(path))
        except Exception as exc:
            raise unreachable("listing", uri, exc) from None
    if not matches:
        raise UsageError(f"source {uri!r} matches nothing; valid: {VALID_KINDS}")
    return matches


def _check_meta_option(m: str) -> None:
    """UsageError for a ``--nuscenes-meta`` that cannot name tables: a missing local path, an unsupported scheme."""
    if fsspec.utils.get_protocol(m) in ("file", "local"):
        if not os.path.exists(os.path.expanduser(m.split("://", 1)[-1])):
            raise UsageError(f"--nuscenes-meta {m!r} does not exist; valid: a v1.0-* folder, a dataroot "
                             "or a meta .tgz (local or s3://)")
    elif fsspec.utils.get_protocol(m) not in ("s3", "s3a"):
        raise UsageError(f"--nuscenes-meta {m!r}: unsupported scheme; valid: a local path or s3://")


def _inputs(urls: list[str], sel: Selection, anon: bool | None, decoder: str) -> tuple[list[Input], list[str]]:
    """(the image inputs, the ``*_meta.tgz`` archives) for the expanded source URIs, in order."""
    inputs: list[Input] = []
    meta_archives: list[str] = []
    for u in urls:
        if is_archive_name(u):
            archive = Archive(u, sel, anon, decoder=decoder)
            if archive.is_meta:
                meta_archives.append(u)
                continue
            inputs.append(archive)
        elif fsspec.utils.get_protocol(u) in ("file", "local"):
            inputs.append(LocalDir(u.split("://", 1)[1] if "://" in u else u, sel))
        else:
            inputs.append(S3Prefix(u, sel, anon))
    return inputs, meta_archives


def open_source(cfg: SourceConfig, *, decoder: str = "isal") -> MultiSource:
    """Build the source that ``cfg.sources`` names.

    Validates every input and loads the nuScenes tables known up front (``--nuscenes-meta``, a
    dataroot's ``v1.0-*``, ``*_meta.tgz`` sources), so bad input fails here with a UsageError,
    before the runner writes anything. Local paths touch no network.
    """
    if not cfg.sources:
        raise UsageError(f"no --source given; valid: {VALID_KINDS}")
    urls: list[str] = []
    for uri in cfg.sources:
        for u in _expand(uri, cfg.anon):
            if u not in urls:
                urls.append(u)
    urls, shard_mode = _shard_urls(urls, cfg.shard)
    sel = Selection(frozenset(cfg.channels), cfg.keyframes_only, cfg.shard if shard_mode == "hash" else None)
    inputs, meta_archives = _inputs(urls, sel, cfg.anon, decoder)
    if not inputs:
        raise UsageError("only nuScenes metadata archives given (" + ", ".join(meta_archives) +
                         "); add the image archives, e.g. v1.0-trainval01_keyframes.tgz")
    if cfg.nuscenes_meta:
        _check_meta_option(cfg.nuscenes_meta)
    source = MultiSource(inputs, meta_archives, cfg, sel, shard_mode=shard_mode)
    source.prepare()
    return source


def _shard_urls(urls: list[str], shard: tuple[int, int] | None) -> tuple[list[str], str | None]:
    """(the URLs shard I of N reads, the mode): whole archives when every image source is an archive and there are
    at least N of them (archive k, in sorted order, goes to shard k mod N), else every URL and a stable hash of the
    path (``Selection.shard``). ``*_meta`` archives go to every shard."""
    if shard is None:
        return urls, None
    index, count = shard
    data = sorted(u for u in urls if not _is_meta_archive(u))
    if data and all(is_archive_name(u) for u in data) and len(data) >= count:
        mine = set(data[index::count])
        return [u for u in urls if u in mine or _is_meta_archive(u)], "archives"
    return urls, "hash"


def _is_meta_archive(url: str) -> bool:
    return is_archive_name(url) and bool(META_ARCHIVE_RE.search(url.rstrip("/").rsplit("/", 1)[-1]))
