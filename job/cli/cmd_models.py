"""``job models``: the model registry (architectures, aliases, pretrained tags)."""
from __future__ import annotations

import argparse

from ..config import JobConfig
from ..model import DEFAULT_TAGS, MODEL_ALIASES, resolve_model_name
from .options import add_common_options


def _models(cfg: JobConfig, args: argparse.Namespace) -> int:
    import open_clip

    if args.tags_for:
        name = resolve_model_name(args.tags_for)
        default = DEFAULT_TAGS.get(name)
        for tag in open_clip.list_pretrained_tags_by_model(name):
            print(f"{tag}{'  (openclip: our default)' if tag == default else ''}")
        return 0
    for alias, target in sorted(MODEL_ALIASES.items()):
        print(f"{alias} -> {target}")
    for name in open_clip.list_models():
        print(name)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand."""
    p = sub.add_parser("models", help="list model names and aliases, or a model's pretrained tags",
                       description="List the models --model accepts, or with --tags MODEL the tags --pretrained accepts.")
    p.add_argument("--tags", dest="tags_for", metavar="MODEL", default=None, help="list this model's pretrained tags")
    add_common_options(p)
    p.set_defaults(handler=_models)
