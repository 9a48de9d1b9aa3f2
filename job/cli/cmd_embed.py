"""``job embed`` (embed images into one output) and ``job run`` (embed, index, project, publish)."""
from __future__ import annotations

import argparse
import logging

from ..config import DEFAULT_SOURCE, JobConfig
from ..embed import embed
from ..pipeline import run_pipeline
from ..runfolder import RunLayout
from ..steps import summary
from .cmd_curate import add_curate_options
from .cmd_eval import add_eval_options
from .options import (
    add_common_options,
    add_decode_options,
    add_index_options,
    add_model_options,
    add_output_options,
    add_projection_options,
    add_source_options,
)

log = logging.getLogger(__name__)


def _embed(cfg: JobConfig, args: argparse.Namespace) -> int:
    layout = RunLayout.for_run(cfg.output.out, cfg.source.shard)
    manifest = embed(cfg)
    log.info(summary(manifest, layout))
    return 0


def _run(cfg: JobConfig, args: argparse.Namespace) -> int:
    run_pipeline(cfg)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``embed`` and ``run`` subcommands."""
    p = sub.add_parser("embed", help="embed images into a parquet dataset",
                       description="Embed every image of a source with an OpenCLIP model. Resumes a killed run.")
    add_source_options(p, default_source=None)
    add_model_options(p)
    add_decode_options(p)
    add_output_options(p, out_help="output: a run folder, or an embeddings path ending in .parquet (its sidecars "
                                   "are named after it: X.failures.parquet, X.manifest.json, …)", default_out=None)
    p.add_argument("--thumbnails", action="store_true", help="also store a 128-px JPEG of each image")
    add_common_options(p)
    p.set_defaults(handler=_embed, _default_source=False)

    r = sub.add_parser("run", help="the whole pipeline: embed, index, project, publish",
                       description="Embed, index (Faiss) and project (UMAP) a source into OUTDIR, then publish it. "
                                   "With no --source it embeds nuScenes v1.0-mini from the public bucket.")
    add_source_options(r, default_source=DEFAULT_SOURCE)
    add_model_options(r)
    add_decode_options(r)
    add_output_options(r, out_help="run folder, local or s3:// (default runs/latest)", default_out="runs/latest")
    add_index_options(r, in_run=True)
    r.add_argument("--no-index", action="store_true", help="skip the Faiss index")
    r.add_argument("--no-project", action="store_true", help="skip the UMAP projection")
    add_projection_options(r)
    r.add_argument("--thumbnails", action="store_true", help="also store a 128-px JPEG of each image (for the notebook)")
    add_curate_options(r, in_run=True)
    add_eval_options(r, in_run=True)
    r.add_argument("--publish", default=None, metavar="URI", help="copy the finished run here (e.g. s3://bucket/runs/ID/)")
    r.add_argument("--shard", default=None, metavar="I/N",
                   help="embed only the I-th of N deterministic parts into OUTDIR/shards/I/ (whole archives per shard "
                        "when there are at least N archives, else a stable hash of the path); then `job merge`. I may be $VAR, "
                        "an environment variable holding it (AWS Batch: $AWS_BATCH_JOB_ARRAY_INDEX)")
    add_common_options(r)
    r.set_defaults(handler=_run, _default_source=True)
