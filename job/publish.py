"""Publish stage: copy a finished output of a run folder to S3 (or any fsspec URL), its manifest last."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from typing import Any

from . import fsutil
from .runfolder import RunLayout, read_manifest

log = logging.getLogger(__name__)


def _files(layout: RunLayout) -> list[str]:
    """Paths (relative to the run folder) of the output's files, the manifest excluded."""
    fs, root = fsutil.url_to_fs(layout.run_dir)
    root = root.rstrip("/")
    out: list[str] = []
    for url in layout.owned():
        if url == layout.manifest:
            continue
        sub_fs, sub = fsutil.url_to_fs(url)
        if not sub_fs.exists(sub):
            continue
        found = sub_fs.find(sub) if sub_fs.isdir(sub) else [sub]
        out.extend(p[len(root) + 1:] for p in found
                   if not p.rsplit("/", 1)[-1].startswith(".") and ".tmp-" not in p.rsplit("/", 1)[-1])
    return sorted(out)


def publish_run(run: RunLayout | str, dest: str, *, threads: int = 16) -> dict[str, Any]:
    """Upload the output's files (``run``: a layout, a run folder or an output's ``.parquet``) under ``dest``.

    The files keep their layout and the manifest goes last.
    Readers poll for the manifest, so they never see a half-published run. Re-running after a
    failure uploads everything again (objects are simply overwritten).
    """
    layout = run if isinstance(run, RunLayout) else RunLayout.locate(run)
    read_manifest(layout)  # only a finished output is published (UsageError otherwise)
    src_fs, src = fsutil.url_to_fs(layout.run_dir)
    src = src.rstrip("/")
    body = _files(layout)
    manifest_rel = layout.rel(layout.manifest)
    dest = dest.rstrip("/")
    t0 = time.perf_counter()

    def copy(r: str) -> int:
        with src_fs.open(f"{src}/{r}", "rb") as f:
            data = f.read()
        fsutil.atomic_write_bytes(f"{dest}/{r}", data)
        return len(data)

    total = 0
    with cf.ThreadPoolExecutor(max_workers=threads) as ex:
        for n in ex.map(copy, body):
            total += n
    total += copy(manifest_rel)
    seconds = time.perf_counter() - t0
    log.info("published %d files (%.1f MB) to %s in %.1f s", len(body) + 1, total / 1e6, dest, seconds)
    return {"to": dest + "/", "files": len(body) + 1, "bytes": total, "seconds": round(seconds, 3)}
