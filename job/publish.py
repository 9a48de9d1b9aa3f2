"""Publish stage: copy a finished run folder to S3 (or any fsspec URL), the manifest last."""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import time
from typing import Any

from . import fsutil
from .errors import UsageError
from .config import JobConfig
from .store import RunLayout

log = logging.getLogger(__name__)


def publish_run(run_dir: str, dest: str, *, threads: int = 16) -> dict[str, Any]:
    """Upload every file of ``run_dir`` under ``dest`` with the same layout; ``manifest.json`` goes last.

    Readers poll for the manifest, so they never see a half-published run. Re-running after a
    failure uploads everything again (objects are simply overwritten).
    """
    src_fs, src = fsutil.url_to_fs(run_dir)
    layout = RunLayout(run_dir)
    if not fsutil.exists(layout.manifest):
        raise UsageError(f"{run_dir} has no manifest.json: only a finished run can be published")
    files = [p for p in src_fs.find(src) if not p.rsplit("/", 1)[-1].startswith(".")]
    rel = sorted(p[len(src.rstrip("/")) + 1:] for p in files)
    body = [r for r in rel if r != "manifest.json" and ".tmp-" not in r]
    dest = dest.rstrip("/")
    t0 = time.perf_counter()
    total = 0

    def copy(r: str) -> int:
        with src_fs.open(f"{src.rstrip('/')}/{r}", "rb") as f:
            data = f.read()
        fsutil.atomic_write_bytes(f"{dest}/{r}", data)
        return len(data)

    with cf.ThreadPoolExecutor(max_workers=threads) as ex:
        for n in ex.map(copy, body):
            total += n
    total += copy("manifest.json")
    seconds = time.perf_counter() - t0
    log.info("published %d files (%.1f MB) to %s in %.1f s", len(body) + 1, total / 1e6, dest, seconds)
    return {"to": dest + "/", "files": len(body) + 1, "bytes": total, "seconds": round(seconds, 3)}


def _publish_command(cfg: JobConfig, args: argparse.Namespace) -> int:
    publish_run(args.run, args.to)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``publish`` subcommand."""
    from .cli import add_common_options

    p = sub.add_parser("publish", help="copy a finished run folder to S3",
                       description="Copy a finished run folder to S3 (or any fsspec URL); manifest.json last.")
    p.add_argument("--run", required=True, help="the finished run folder")
    p.add_argument("--to", required=True, help="destination, e.g. s3://bucket/runs/ID/")
    add_common_options(p)
    p.set_defaults(handler=_publish_command)
