"""``job merge``: one complete run from the finished shards of ``job run --shard I/N``."""
from __future__ import annotations

import argparse

from ..config import JobConfig
from ..merge import merge_run
from .cmd_curate import add_curate_options
from .cmd_eval import add_eval_options
from .options import add_common_options, add_index_options, add_projection_options


def _merge(cfg: JobConfig, args: argparse.Namespace) -> int:
    merge_run(cfg)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``merge`` subcommand."""
    p = sub.add_parser("merge", help="merge the shards of OUTDIR/shards/*/ into one run, then index and project",
                       description="Check that every shard of OUTDIR (job run --shard I/N) finished with the same "
                                   "options, make OUTDIR one run over all of them (parts linked, or copied server-side "
                                   "on S3), then build the index and the UMAP map as `job run` does; manifest last.")
    p.add_argument("--run", required=True, metavar="OUTDIR", help="the run folder holding shards/0 … shards/N-1")
    add_index_options(p, in_run=True)
    p.add_argument("--no-index", action="store_true", help="skip the Faiss index")
    p.add_argument("--no-project", action="store_true", help="skip the UMAP projection")
    add_projection_options(p)
    p.add_argument("--seed", type=int, default=0, help="sample and layout seed (default 0)")
    add_curate_options(p, in_run=True)
    add_eval_options(p, in_run=True)
    p.add_argument("--publish", default=None, metavar="URI", help="copy the merged run here (e.g. s3://bucket/runs/ID/)")
    add_common_options(p)
    p.set_defaults(handler=_merge)
