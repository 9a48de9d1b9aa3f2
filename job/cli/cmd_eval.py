"""``job eval``: how well a run's vectors retrieve what nuScenes' own annotations say each image shows."""
from __future__ import annotations

import argparse

from ..config import DEVICES, VISIBILITY_LEVELS, EvalConfig, JobConfig
from ..eval import summary_lines
from ..runfolder import open_run
from ..steps import eval_step, rerun_step
from .options import add_common_options, choice, number, positive_int


def _eval(cfg: JobConfig, args: argparse.Namespace) -> int:
    ref = open_run(args.run)
    info = rerun_step(ref, lambda m: eval_step(cfg, ref.layout, m))
    print("\n".join(summary_lines(info)))
    print(f"-> {ref.layout.eval_dir}/")
    return 0


def add_eval_options(p: argparse.ArgumentParser, *, in_run: bool = False, in_compare: bool = False) -> None:
    """The eval options (``job eval``; ``job run`` and ``job merge`` take the ones that shape their eval step, ``job
    compare`` the ones that shape the scoring of every variant)."""
    e = EvalConfig()
    g = p.add_argument_group("evaluation" + (" (the eval step, when the source has nuScenes annotations)"
                                             if in_run else " (every variant, against the same labels)"
                                             if in_compare else ""))
    if in_run and not in_compare:
        g.add_argument("--no-eval", action="store_true",
                       help="skip the eval step (scores against nuScenes' annotations in eval/; job eval runs it later)")
    g.add_argument("--min-visibility", type=int, choices=VISIBILITY_LEVELS, default=e.min_visibility, metavar="LEVEL",
                   help="a box counts when its nuScenes visibility level is at least this: 1 (0-40 %% of the object "
                        "visible), 2 (40-60 %%), 3 (60-80 %%), 4 (80-100 %%) (default %(default)s)")
    g.add_argument("--min-positives", type=positive_int, default=e.min_positives, metavar="N",
                   help="ask a category, scene word or ego state only when this many images show it "
                        "(default %(default)s)")
    g.add_argument("--image-queries", type=positive_int, default=e.image_queries, metavar="N",
                   help="image→image: query images sampled per category (default %(default)s)")
    g.add_argument("--rare-share", type=number, default=e.rare_share, metavar="SHARE",
                   help="a curated run's subset is scored on the categories fewer than this share of the images show "
                        "(default %(default)s)")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="an edited prompt table (TOML; start from job/eval/prompts.toml)")
    if not in_run and not in_compare:
        g.add_argument("--nuscenes-meta", default=None, metavar="URI",
                       help="where the annotation tables are (a v1.0-* folder, a dataroot or a meta .tgz), when not "
                            "where the run read its tables")
        g.add_argument("--searchad", default=None, metavar="DIR",
                       help="also score SearchAD's benchmark on its nuScenes images in the run, with its protocol: DIR "
                            "is your copy of its annotations (the devkit's SearchAD folder: searchad_annotations_val.json, "
                            "default_queries/); read only, never copied into the run")
        g.add_argument("--anon", action=argparse.BooleanOptionalAction, default=None,
                       help="anonymous S3 access for the tables (default: on for the public nuScenes bucket only)")
        g.add_argument("--device", type=choice("device", DEVICES), default="auto",
                       help="where the text tower embeds the queries: auto, cpu, cuda")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = sub.add_parser("eval", help="score a run's search against nuScenes' own annotations (eval/)",
                       description="Derive ground truth from the run's nuScenes tables (the categories of the boxes "
                                   "each camera image shows, scene words, ego motion), ask text→image and "
                                   "image→image queries of both vector columns, score MAP@100, R-Precision and P@5 "
                                   "(SearchAD's semantics) against what a random ranking scores; writes RUN/eval/ and "
                                   "records it in the manifest.")
    p.add_argument("--run", required=True, metavar="RUN_URI", help="a finished run folder (local or s3://)")
    add_eval_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled query images (default 0)")
    add_common_options(p)
    p.set_defaults(handler=_eval)
