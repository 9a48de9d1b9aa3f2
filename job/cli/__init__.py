"""Command line: ``python -m job COMMAND``; parses one checked JobConfig and hands it to the command's handler.

The CLI is the top layer: it imports the stages, and no stage imports it. Each ``cmd_*`` module adds
its subcommands with ``register(subparsers)`` and sets ``handler=fn(cfg, args) -> exit code``.

May import: everything below it (the run-level modules, the stages, the ground floor); nothing imports it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .. import fsutil
from ..errors import JobError
from .args import config_from_args
from .options import Parser

log = logging.getLogger("job")

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    from . import (
        cmd_compare,
        cmd_curate,
        cmd_embed,
        cmd_eval,
        cmd_import,
        cmd_index,
        cmd_merge,
        cmd_models,
        cmd_project,
        cmd_publish,
        cmd_search,
        cmd_serve,
        cmd_status,
    )

    parser = Parser(
        prog="python -m job",
        description="Embed camera images (nuScenes) with OpenCLIP, index them with Faiss, project them with UMAP.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in (cmd_embed, cmd_import, cmd_merge, cmd_models, cmd_index, cmd_search, cmd_serve, cmd_project, cmd_curate,
                   cmd_eval, cmd_compare, cmd_publish, cmd_status):
        module.register(sub)
    return parser


def _setup_logging(level: str) -> None:
    """Our loggers at ``level``; libraries (open_clip logs through the root logger) at WARNING unless DEBUG."""
    numeric = getattr(logging, level)
    logging.basicConfig(level=logging.DEBUG if numeric <= logging.DEBUG else max(numeric, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    logging.getLogger("job").setLevel(numeric)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code: 0 done, 2 bad input (nothing written), 1 a data or runtime fault."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        cfg = config_from_args(args)
        return int(args.handler(cfg, args) or 0)
    except JobError as exc:
        log.debug("%s failed", args.command, exc_info=True)
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if not fsutil.is_transport_error(exc):
            raise
        # a storage or network fault that no step turned into a StorageError: still one line, no traceback
        log.debug("%s failed", args.command, exc_info=True)
        where = next((str(v) for v in (getattr(args, k, None) for k in ("out", "run", "to")) if v), "")
        print(f"{parser.prog} {args.command}: error: storage or network fault{f' on {where}' if where else ''} "
              f"({fsutil.describe_fault(exc)}); committed work is kept: run the same command to resume "
              "(--log-level DEBUG shows where)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log.warning("interrupted; committed shards are kept and the same command resumes")
        return 130
