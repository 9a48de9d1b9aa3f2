"""``job curate``: duplicates (exact, standing still, near), rarity and a diverse subset of a run's images."""
from __future__ import annotations

import argparse

from ..config import (
    CURATE_METHODS,
    CURATE_MIN_K,
    CURATE_PAIR_RECALL,
    DEVICES,
    UNIQUENESS_METHODS,
    CurateConfig,
    JobConfig,
)
from ..curate import summary_lines
from ..runfolder import open_run
from ..steps import curate_step, rerun_step
from .options import add_common_options, choice, int_at_least, number, positive_int


def _curate(cfg: JobConfig, args: argparse.Namespace) -> int:
    ref = open_run(args.run)
    info = rerun_step(ref, lambda m: curate_step(cfg, ref.layout, m, build_index=True))
    print("\n".join(summary_lines(info)))
    print(f"-> {ref.layout.curation_dir}/")
    return 0


def add_curate_options(p: argparse.ArgumentParser, *, in_run: bool = False) -> None:
    """The curation options (``job curate``; ``job run --curate`` and ``job merge --curate`` take them too)."""
    c = CurateConfig()
    g = p.add_argument_group("curation" + (" (with --curate)" if in_run else ""))
    if in_run:
        g.add_argument("--curate", action="store_true",
                       help="also find duplicates, rarity and (with --select) a diverse subset: curation/")
    g.add_argument("--k", dest="curate_k", type=int_at_least(CURATE_MIN_K), default=c.k, metavar="K",
                   help=f"neighbours per image in the k-NN graph (default {c.k}, at least {CURATE_MIN_K}: refused when "
                        "the command is parsed)")
    g.add_argument("--knn-method", dest="curate_method", type=choice("k-NN method", CURATE_METHODS),
                   default=c.method, metavar="METHOD",
                   help="exact; partition (a balanced partition, each image compared exactly with its nearest "
                        "lists); index (the run's index); auto: exact when a timed pilot says it takes at most 2 min, "
                        "else partition (default auto). Approximate graphs search deeper until they hold "
                        f"{CURATE_PAIR_RECALL:.0%}% of the pairs above the near threshold")
    g.add_argument("--near-threshold", default="auto", metavar="auto|COS",
                   help="near duplicates: cosine at or above this; auto reads it off the run's own k-NN graph "
                        "(what lies below the bulk of neighbour distances) and says why (default auto)")
    g.add_argument("--still-metres", type=float, default=c.still_metres, metavar="M",
                   help="standing still: frames of a camera whose ego pose stayed within this of the standstill's "
                        f"first frame (default {c.still_metres:g})")
    g.add_argument("--still-cosine", type=float, default=c.still_cosine, metavar="COS",
                   help=f"standing still: and whose vector is within this cosine of that frame's (default "
                        f"{c.still_cosine:g})")
    g.add_argument("--still-gap-s", type=float, default=c.still_gap_s, metavar="S",
                   help=f"standing still: and that follow the previous frame by at most this (default "
                        f"{c.still_gap_s:g} s)")
    g.add_argument("--uniqueness", dest="uniqueness", type=choice("uniqueness", UNIQUENESS_METHODS),
                   default=c.uniqueness, metavar="HOW",
                   help="kept: rarity among the kept images, a copy no longer hiding its original (default); "
                        "fiftyone: today's fiftyone-brain on all images (centred vectors, the nearest skipped)")
    g.add_argument("--uniqueness-weights", default=None, metavar="W1,W2,...",
                   help="weights of the nearest neighbours' distances, nearest first (default "
                        f"{','.join(f'{w:g}' for w in c.uniqueness_weights)}, FiftyOne's)")
    g.add_argument("--select", type=positive_int, default=None, metavar="N",
                   help="pick N images for labelling by greedy farthest-point (k-center) over the unique ones")
    g.add_argument("--balance", action="append", default=None, metavar="COLUMNS",
                   help="with --select: each combination of these columns' values (e.g. location,channel) is a "
                        "stratum that gets its share of the picks (--shares)")
    g.add_argument("--shares", default=None, metavar="proportional|equal|COL=VALUE:SHARE,…",
                   help="with --select: each stratum's share of the picks: proportional to its images (default), "
                        "equal, or given per value, e.g. location=boston-seaport:0.4 (values not named share the "
                        "rest by their images; the columns named are balanced too). Each quota is within one pick "
                        "of its share, and no stratum gets more picks than it has images")
    g.add_argument("--labelled", default=None, metavar="FILE",
                   help="with --select: images labelled already (local or s3://; one sample_data_token, path or id "
                        "a line, or a .parquet with an id, sample_data_token or path column, e.g. an earlier "
                        "selection.parquet). The selection continues from them: none of them, and none of their "
                        "duplicates, is picked again, and the first pick is the image farthest from all of them")
    g.add_argument("--min-gap-s", type=number, default=None, metavar="SECONDS",
                   help="with --select: picks of one scene and camera (and labelled images) at least this many "
                        "seconds apart (nuScenes columns scene_token, channel, timestamp)")
    g.add_argument("--export", default=None, metavar="FILE",
                   help="with --select: write the subset here, one sample_data_token (else path) a line")
    if not in_run:
        g.add_argument("--device", dest="curate_device", type=choice("device", DEVICES), default="auto", metavar="DEVICE",
                       help="where exact neighbour search runs: auto (CUDA when present), cpu, cuda")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``curate`` subcommand."""
    p = sub.add_parser("curate", help="duplicates, rarity and a diverse subset of a run's images (curation/)",
                       description="Build the k-NN graph of a run's image vectors, find exact duplicates (identical "
                                   "bytes), images taken while the car stood still, and near duplicates (at a cosine "
                                   "threshold read off the run's own distances), score every image's rarity "
                                   "(FiftyOne's uniqueness) and with --select pick a diverse subset; writes "
                                   "RUN/curation/ and records it in the manifest.")
    p.add_argument("--run", required=True, metavar="RUN_URI", help="a finished run folder (local or s3://)")
    add_curate_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed for the recall sample and the projection (default 0)")
    add_common_options(p)
    p.set_defaults(handler=_curate)
