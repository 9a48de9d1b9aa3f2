"""``job status RUN_URI``: what a run (local or ``s3://``) is doing: phase, progress, ETA, why it stopped, log tail."""
from __future__ import annotations

import argparse
import json
import sys
import time

from ..config import JobConfig
from ..errors import Interrupted
from ..status import TERMINAL, format_status, read_log_tail, read_run_status
from .options import add_common_options, number, positive_int

_EXIT = {"succeeded": 0, "failed": 1, "interrupted": Interrupted.exit_code}


def _show(run: str, as_json: bool, lines: int) -> str:
    doc = read_run_status(run)  # a split run (shards/): every shard's status and the merge's
    tail = read_log_tail(run, lines)
    if as_json:
        print(json.dumps({**doc, "log_tail": tail}), flush=True)
    else:
        print(format_status(doc, tail), flush=True)
    return str(doc["status"])


def _status(cfg: JobConfig, args: argparse.Namespace) -> int:
    sc = cfg.status
    assert sc.run is not None  # a required positional
    state = _show(sc.run, sc.json, sc.lines)
    if sc.watch is None:
        return 0
    while state not in TERMINAL:
        time.sleep(sc.watch)
        if not sc.json:
            print("-" * 72, file=sys.stdout)
        state = _show(sc.run, sc.json, sc.lines)
    return _EXIT[state]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``status`` subcommand."""
    p = sub.add_parser("status", help="what a run is doing: phase, progress, ETA, why it stopped",
                       description="Print a run's _STATUS (local or s3://): status, phase, images done/total, "
                                   "images/s, ETA, why it stopped, and the last lines of the instance's bootstrap "
                                   "log. For a run split into shards (OUTDIR/shards/I/, e.g. on AWS Batch): every "
                                   "shard's status and progress, the merge's, and the sums (slowest ETA). With "
                                   "--watch, refresh until the run ends; the exit code is then 0 (succeeded), 1 "
                                   "(failed) or 75 (interrupted, resumable).")
    p.add_argument("run", metavar="RUN_URI", help="the run folder, e.g. s3://bucket/runs/ID/ or runs/mini")
    p.add_argument("--watch", type=number, nargs="?", const=30.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 30) until the run ends")
    p.add_argument("--json", action="store_true", help="one JSON object per refresh (the _STATUS document + log_tail)")
    p.add_argument("--lines", type=positive_int, default=10, help="bootstrap log lines to show (default 10)")
    add_common_options(p)
    p.set_defaults(handler=_status)
