"""What an output's committed parts hold, and the rules that keep it whole across attempts.

* **Resume** (:func:`prepare_run`): refuse a folder made with other options, remove temporary files and orphaned
  failures/thumbnails files of a part whose embeddings file never landed, and collect every committed path so it is
  not embedded again.
* **One copy per path** (:func:`settle`): parts are named after the attempt that wrote them, so no attempt's commit
  replaces another's; if two writers ever met (one that lost its lease kept committing), a path may be committed
  twice. The rule: an embedded copy beats a failure, and among copies in the same table the part first in key order
  (number, then attempt id) keeps it. Parts holding a losing copy are rewritten without it under a new key, then the
  old part is deleted (a kill in between only repeats the rewrite next time).
* **Completeness** (:func:`check_complete`): before the manifest, every image the source listed this attempt and every
  image earlier attempts committed is in the embeddings or the failures exactly once; else a DataError names how many
  are missing and how to resume, and no manifest is written.

Every writer runs these while holding the output's lease (``job.runfolder.lease``), so nobody else commits meanwhile.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import fsutil
from ..errors import DataError, UsageError
from ..runfolder import PartKey, RunLayout, list_parts, part_url, table_bytes

log = logging.getLogger(__name__)


@dataclass
class ResumeState:
    """What earlier attempts at this output committed."""

    done_paths: set[str]
    next_part: int
    rows: int
    failures: int


@dataclass
class Ledger:
    """The committed parts of an output and the path each row holds, after :func:`settle`."""

    embedded: dict[PartKey, list[str]] = field(default_factory=dict)
    failed: dict[PartKey, list[str]] = field(default_factory=dict)
    rewritten: int = 0

    @property
    def rows(self) -> int:
        return sum(len(v) for v in self.embedded.values())

    @property
    def failures(self) -> int:
        return sum(len(v) for v in self.failed.values())

    def paths(self) -> set[str]:
        out: set[str] = set()
        for group in (self.embedded, self.failed):
            for paths in group.values():
                out.update(paths)
        return out

    @property
    def next_part(self) -> int:
        return max((k.number for k in self.embedded), default=-1) + 1


def _paths(fs: Any, url: str) -> list[str]:
    with fsutil.faults("reading", url):
        return pq.read_table(url, columns=["path"], filesystem=fs).column("path").to_pylist()


def _remove_debris(layout: RunLayout) -> dict[str, dict[PartKey, str]]:
    """Delete temporary files and orphaned failures/thumbnails files; the committed parts of each table."""
    fs, _ = fsutil.url_to_fs(layout.run_dir)
    for folder in (layout.embeddings, layout.failures, layout.thumbnails):
        sub_fs, sub = fsutil.url_to_fs(folder)
        with fsutil.faults("cleaning up", folder):
            if sub_fs.exists(sub):
                for p in sub_fs.ls(sub, detail=False):
                    if ".tmp-" in p.rsplit("/", 1)[-1]:
                        sub_fs.rm(p)
    parts = {"embeddings": list_parts(layout.embeddings), "failures": list_parts(layout.failures),
             "thumbnails": list_parts(layout.thumbnails)}
    for table in ("failures", "thumbnails"):
        for key, p in list(parts[table].items()):
            if key not in parts["embeddings"]:
                log.info("removing orphaned file %s of an interrupted part", p)
                with fsutil.faults("removing", p):
                    fs.rm(p)
                del parts[table][key]
    return parts


def settle(layout: RunLayout, attempt: str) -> Ledger:
    """Read what every committed part holds and leave one copy of each path (see the module docstring)."""
    fs, _ = fsutil.url_to_fs(layout.run_dir)
    parts = _remove_debris(layout)
    ledger = Ledger(embedded={k: _paths(fs, u) for k, u in parts["embeddings"].items()},
                    failed={k: _paths(fs, u) for k, u in parts["failures"].items()})
    seen: set[str] = set()
    drop: dict[PartKey, set[str]] = {}
    for group in (ledger.embedded, ledger.failed):  # embedded copies first: they beat failures
        for key, paths in group.items():
            for p in paths:
                if p in seen:
                    drop.setdefault(key, set()).add(p)
                seen.add(p)
    if not drop:
        return ledger
    number = ledger.next_part
    for key in sorted(drop):
        new = PartKey(number, attempt)
        number += 1
        _rewrite(fs, layout, parts, key, new, drop[key], ledger)
    log.warning("%s: %d paths were committed twice (two writers met); kept one copy of each, rewrote %d parts",
                layout.run_dir, sum(len(v) for v in drop.values()), ledger.rewritten)
    return ledger


def _rewrite(fs: Any, layout: RunLayout, parts: Mapping[str, dict[PartKey, str]], old: PartKey, new: PartKey,
             drop: set[str], ledger: Ledger) -> None:
    """Part ``old`` again as ``new`` without the rows of ``drop`` (thumbnails, failures, then embeddings), then
    ``old`` deleted (embeddings first)."""
    folders = {"thumbnails": layout.thumbnails, "failures": layout.failures, "embeddings": layout.embeddings}
    keep = None
    for table in ("thumbnails", "failures", "embeddings"):
        url = parts[table].get(old)
        if url is None:
            continue
        t = pq.read_table(url, filesystem=fs)
        keep = pc.invert(pc.is_in(t.column("path"), value_set=_array(drop)))
        fsutil.atomic_write_bytes(part_url(folders[table], new), table_bytes(t.filter(keep)))
    for table in ("embeddings", "failures", "thumbnails"):
        url = parts[table].get(old)
        if url is not None:
            fs.rm(url)
    for group in (ledger.embedded, ledger.failed):
        if old in group:
            group[new] = [p for p in group.pop(old) if p not in drop]
    ledger.rewritten += 1


def _array(values: Iterable[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())


def prepare_run(layout: RunLayout, identity: Mapping[str, Any], *, overwrite: bool = False,
                attempt: str = "") -> ResumeState:
    """Check the output and return what is already done there (``PartWriter`` records ``identity``).

    A folder holding a run with other vector-shaping options is refused (unless ``overwrite``); temporary files,
    orphans and double copies are cleaned up (:func:`settle`), and the paths of all committed parts are collected so
    they are not embedded again.
    """
    fs, root = fsutil.url_to_fs(layout.run_dir)
    with fsutil.faults("removing the earlier output (--overwrite) in", layout.run_dir):
        if overwrite and fs.exists(root):
            for url in layout.owned():
                sub_fs, sub = fsutil.url_to_fs(url)
                if sub_fs.exists(sub):
                    sub_fs.rm(sub, recursive=True)
    identity = dict(identity)
    if fsutil.exists(layout.state):
        previous = fsutil.read_json(layout.state)
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise UsageError(
                f"{layout.run_dir} holds a run made with other options ({', '.join(changed)}); "
                "use another --out or pass --overwrite"
            )
    ledger = settle(layout, attempt)
    if ledger.embedded:
        log.info("resuming: %d parts already committed (%d rows, %d failures)", len(ledger.embedded), ledger.rows,
                 ledger.failures)
    return ResumeState(done_paths=ledger.paths(), next_part=ledger.next_part, rows=ledger.rows,
                       failures=ledger.failures)


def check_complete(layout: RunLayout, expected: set[str], attempt: str, *, command: str = "") -> Ledger:
    """Every path of ``expected`` (listed this attempt, or committed by an earlier one) is in the embeddings or the
    failures exactly once; returns the settled ledger, or raises a DataError naming what is missing."""
    ledger = settle(layout, attempt)
    have = ledger.paths()
    missing = expected - have
    if missing:
        example = sorted(missing)[0]
        raise DataError(f"{len(missing)} of {len(expected)} images are neither in {layout.rel(layout.embeddings)} "
                        f"nor in {layout.rel(layout.failures)} of {layout.run_dir} (e.g. {example}: a committed part "
                        "went missing); no manifest was written. Run the same command"
                        f"{f' ({command})' if command else ''} to resume: it embeds what is missing")
    extra = len(have - expected)
    if extra:
        log.warning("%s holds %d images this attempt did not list (another writer's?); they are kept",
                    layout.run_dir, extra)
    return ledger
