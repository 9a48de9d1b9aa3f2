"""``job project``: the 2-D UMAP map of a run's embeddings."""
from __future__ import annotations

import argparse

from ..config import JobConfig
from ..project import UmapParams, pick_backend
from ..runfolder import open_run
from ..steps import project_step, rerun_step
from .options import add_common_options, add_projection_options


def _project(cfg: JobConfig, args: argparse.Namespace) -> int:
    ref = open_run(cfg.output.out)
    params = UmapParams.from_config(cfg.project)
    pick_backend(params.backend)  # cuML asked for but missing -> one-line error before any reading
    rerun_step(ref, lambda m: project_step(cfg, ref.layout, m, params))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``project`` subcommand."""
    p = sub.add_parser(
        "project",
        help="2-D UMAP map of a run's embeddings (OUTDIR/umap2d.parquet)",
        description="Project a run's embeddings to 2-D with UMAP (cosine) and write OUTDIR/umap2d.parquet "
                    "(id, x, y). Uses cuML on a GPU when installed, else umap-learn. Runs larger than "
                    "--fit-sample are fitted on a random sample and the rest placed with transform.",
    )
    p.add_argument("--run", required=True, metavar="OUTDIR",
                   help="run folder (local or s3://) or an output's embeddings .parquet")
    add_projection_options(p)
    p.add_argument("--seed", type=int, default=0, help="sample and layout seed (default 0)")
    add_common_options(p)
    p.set_defaults(handler=_project)
