"""``job compare``: the same images under several variants (model and checkpoint, pool, resize, size), each embedded
into its own run folder and scored by ``job eval``; one table and one figure."""
from __future__ import annotations

import argparse

from ..compare import COMPARE_JSON, COMPARE_MD, COMPARE_PNG, compare, markdown
from ..config import VARIANT_KEYS, JobConfig
from .cmd_eval import add_eval_options
from .options import add_common_options, add_decode_options, add_model_options, add_source_options


def _compare(cfg: JobConfig, args: argparse.Namespace) -> int:
    doc = compare(cfg, cfg.output.out)
    print(markdown(doc))
    print(f"-> {cfg.output.out.rstrip('/')}/{{{COMPARE_JSON},{COMPARE_MD},{COMPARE_PNG}}} and one run folder per "
          "variant")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    p = sub.add_parser(
        "compare", help="embed and score the same images under several variants (models, pooling, resize, size)",
        description="Embed the source's images (nuScenes keyframes with annotations; --limit N for the first N) once "
                    "per --variant into OUT/<variant>/ (a run folder: resumable, searchable), score each with job "
                    "eval against the same labels, and write OUT/compare.json, OUT/compare.md and OUT/compare.png.")
    add_source_options(p, default_source=None)
    p.add_argument("--out", required=True, metavar="DIR", help="where the variants' run folders and the table go "
                                                               "(local or s3://)")
    p.add_argument("--variant", action="append", required=True, metavar="SPEC",
                   help="one setup, as key=value pairs separated by commas, keys: " + ", ".join(VARIANT_KEYS) +
                        "; e.g. model=ViT-L-14,pretrained=datacomp_xl_s13b_b90k,pool=mean,resize=pad,size=224 or "
                        "model=ViT-L-16-SigLIP2-256,pretrained=webli,resize=squash (omitted keys: job run's "
                        "defaults; name=… names the run folder). Repeat for each variant")
    p.add_argument("--overwrite", action="store_true", help="embed every variant again, replacing its run folder")
    p.add_argument("--no-index", action="store_true",
                   help="no Faiss index in the variants' run folders (the scores do not use it)")
    add_model_options(p, per_variant=True)
    add_decode_options(p, per_variant=True)
    add_eval_options(p, in_compare=True)
    add_common_options(p)
    p.set_defaults(handler=_compare, _default_source=False)
