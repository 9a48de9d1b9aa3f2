"""``job publish``: copy a finished run to S3 (or any fsspec URL), its manifest last."""
from __future__ import annotations

import argparse

from ..config import JobConfig
from ..publish import publish_run
from ..runfolder import RunLayout
from .options import add_common_options


def _publish(cfg: JobConfig, args: argparse.Namespace) -> int:
    assert cfg.output.publish is not None  # --to is required
    publish_run(RunLayout.locate(cfg.output.out), cfg.output.publish)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``publish`` subcommand."""
    p = sub.add_parser("publish", help="copy a finished run folder to S3",
                       description="Copy a finished run (folder, or an output's .parquet) to S3 or any fsspec URL; "
                                   "its manifest last.")
    p.add_argument("--run", required=True, help="the finished run folder (or an output's embeddings .parquet)")
    p.add_argument("--to", required=True, help="destination, e.g. s3://bucket/runs/ID/")
    add_common_options(p)
    p.set_defaults(handler=_publish)
