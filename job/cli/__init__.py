"""Command line: ``python -m job {run,embed,index,search,project,publish}``; parses one JobConfig and dispatches."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from typing import Callable, Sequence

from ..errors import UsageError
from ..config import (
    CAMERA_CHANNELS,
    DECODERS,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_RESIZE_MODE,
    DEFAULT_SOURCE,
    LOG_LEVELS,
    DEVICES,
    INDEX_TYPES,
    POOLS,
    PRECISIONS,
    RESIZE_MODES,
    DecodeConfig,
    IndexConfig,
    JobConfig,
    ModelConfig,
    OutputConfig,
    ProjectConfig,
    SourceConfig,
    check_choice,
    split_list,
)

log = logging.getLogger("job")


# Modules that contribute subcommands: each has ``register(subparsers)`` setting ``handler=fn(cfg, args)``.
COMMAND_MODULES: tuple[str, ...] = ("job.embed", "job.model", "job.cli.cmd_index", "job.search", "job.project", "job.publish")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line and exit code 2 (argparse's own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _choice(name: str, choices: Sequence[str], *, upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        v = value.upper() if upper else value.lower()
        try:
            return check_choice(name, v, choices)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``, with a one-line message otherwise."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(
                f"{value!r} must be a positive integer" if minimum == 1 else f"{value!r} must be {minimum} or more")
        return n

    parse.__name__ = "integer"
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Logging and progress options every command takes."""
    g = p.add_argument_group("general")
    g.add_argument("--log-level", type=_choice("log level", LOG_LEVELS, upper=True), default="INFO",
                   help=f"logging verbosity: {', '.join(LOG_LEVELS)} (default INFO)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model/--pretrained/--pool/--image-size/--device/--precision."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="open_clip architecture (ViT-L-14, ViT-B-32, …), an alias (vit_l_14) or hf-hub:org/repo "
                        f"(default {DEFAULT_MODEL})")
    g.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="open_clip tag (laion2b_s32b_b82k, openai, …), 'openclip' (our default tag for the model), "
                        "a checkpoint file, s3://…/checkpoint, hf-hub:…, or 'none' (seeded random init)")
    g.add_argument("--pool", type=_choice("pool", POOLS), default="mean",
                   help="mean: mean over patch tokens (default); cls: the CLS token")
    g.add_argument("--image-size", type=_positive_int, default=None,
                   help="model input size in pixels (default: the model's own, 224 for ViT-L-14)")
    g.add_argument("--device", type=_choice("device", DEVICES), default="auto", help="auto (CUDA if present), cpu, cuda")
    g.add_argument("--precision", type=_choice("precision", PRECISIONS), default="auto",
                   help="auto (bf16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    g.add_argument("--seed", type=int, default=0, help="seed for --pretrained none (default 0)")
    g.add_argument("--compile", action="store_true", help="torch.compile the visual tower (CUDA; pays off on long runs)")
    g.add_argument("--cache-dir", default=None, help="where downloaded weights are kept")


def add_decode_options(p: argparse.ArgumentParser) -> None:
    """--resize-mode/--batch-size/--workers/--decode."""
    g = p.add_argument_group("preprocessing")
    g.add_argument("--resize-mode", type=_choice("resize mode", RESIZE_MODES), default=DEFAULT_RESIZE_MODE,
                   help="pad: whole frame, letterboxed (default; keeps the full 16:9 field of view); "
                        "crop: open_clip's centre crop (drops ~44%% of a 1600x900 frame's width); squash: stretch")
    g.add_argument("--batch-size", type=_positive_int, default=64, help="images per model batch (default 64)")
    g.add_argument("--workers", type=_non_negative_int, default=None,
                   help="decode processes (default: one per core with a GPU; 0, i.e. inline, when the CPU runs "
                        "the model)")
    g.add_argument("--decode", dest="decoder", type=_choice("decoder", DECODERS), default="auto",
                   help="where JPEGs are decoded: auto, cpu (worker processes), gpu (nvJPEG)")


def add_source_options(p: argparse.ArgumentParser, *, default_source: str | None) -> None:
    """--source/--image-dir, metadata and filters."""
    g = p.add_argument_group("input")
    g.add_argument("--source", action="append", default=None, metavar="URI",
                   help="image folder, s3:// prefix, or .tgz/.tar archives (local or s3://, globs allowed); "
                        "repeatable" + (f" (default {default_source})" if default_source else ""))
    g.add_argument("--image-dir", action="append", default=None, metavar="DIR", help="same as --source")
    g.add_argument("--anon", action=argparse.BooleanOptionalAction, default=None,
                   help="anonymous S3 access (default: on for the public nuScenes bucket only)")
    g.add_argument("--nuscenes-meta", default=None, metavar="URI",
                   help="nuScenes tables: a v1.0-* folder, a dataroot, or a meta .tgz (found automatically when the "
                        "source carries them)")
    g.add_argument("--channels", action="append", default=None,
                   help=f"camera channels to embed, comma-separated (default: {','.join(CAMERA_CHANNELS)})")
    kf = g.add_mutually_exclusive_group()
    kf.add_argument("--keyframes-only", dest="keyframes_only", action="store_true", default=True,
                    help="only samples/ keyframes (default)")
    kf.add_argument("--include-sweeps", dest="keyframes_only", action="store_false", help="also sweeps/ (12 Hz)")
    g.add_argument("--scenes", action="append", default=None, help="only these scene names (scene-0061,…)")
    g.add_argument("--limit", type=_positive_int, default=None, help="stop after this many images")


def add_output_options(p: argparse.ArgumentParser, *, out_help: str, default_out: str | None) -> None:
    """--out/--npy/--overwrite/shards."""
    g = p.add_argument_group("output")
    g.add_argument("--out", default=default_out, required=default_out is None, help=out_help)
    g.add_argument("--npy", action="store_true", help="also write the vectors as a .npy matrix (rows in parquet order)")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in --out instead of resuming (a run with other options is refused otherwise)")
    g.add_argument("--shard-size", type=_positive_int, default=4096, help="images per committed shard (default 4096)")
    g.add_argument("--shard-seconds", type=float, default=120.0,
                   help="commit a shard at least this often, in seconds (default 120)")


def add_index_options(p: argparse.ArgumentParser, *, in_run: bool = False) -> None:
    """Faiss options: ``--type`` for ``job index``, ``--index-type`` inside ``job run``."""
    g = p.add_argument_group("index")
    g.add_argument("--index-type" if in_run else "--type", dest="index_type",
                   type=_choice("index type", INDEX_TYPES), default="auto",
                   help=f"Faiss index: {', '.join(INDEX_TYPES)} (default auto)")
    g.add_argument("--factory", default=None, help="any Faiss index-factory string (overrides the type)")
    g.add_argument("--max-memory", default=None, help="memory budget for auto, e.g. 4G (default: half the memory available now)")
    g.add_argument("--target-recall", type=float, default=0.95,
                   help="tune nprobe/efSearch to reach this recall@10 (default 0.95)")


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """The one JobConfig of this invocation, from whatever options its subcommand defined."""
    a = vars(args)
    d = JobConfig()

    def get(name: str, default: object) -> object:
        v = a.get(name)
        return default if v is None else v

    sources = split_list((a.get("source") or []) + (a.get("image_dir") or [])) if (a.get("source") or a.get("image_dir")) else ()
    channels = tuple(c.upper() for c in split_list(a.get("channels"))) or CAMERA_CHANNELS
    for c in channels:
        check_choice("channel", c, CAMERA_CHANNELS + ("LIDAR_TOP",))
    if "LIDAR_TOP" in channels:
        raise UsageError("channel 'LIDAR_TOP' is not a camera; valid choices: " + ", ".join(CAMERA_CHANNELS))
    run_dir, emb_name = a.get("out") or d.output.run_dir, d.output.embeddings_name
    if run_dir.rstrip("/").endswith(".parquet"):
        # ``--out vectors/embeddings.parquet``: the run folder is its parent.
        parent, _, emb_name = run_dir.rstrip("/").rpartition("/")
        run_dir = parent or "."
    cfg = JobConfig(
        model=ModelConfig(
            model=get("model", d.model.model),
            pretrained=get("pretrained", d.model.pretrained),
            pool=get("pool", d.model.pool),
            image_size=a.get("image_size"),
            device=get("device", d.model.device),
            precision=get("precision", d.model.precision),
            seed=get("seed", d.model.seed),
            compile=bool(a.get("compile", False)),
            cache_dir=a.get("cache_dir"),
        ),
        decode=DecodeConfig(
            resize_mode=get("resize_mode", d.decode.resize_mode),
            workers=a.get("workers"),
            decoder=get("decoder", d.decode.decoder),
            batch_size=get("batch_size", d.decode.batch_size),
        ),
        source=SourceConfig(
            sources=sources or ((DEFAULT_SOURCE,) if a.get("_default_source") else ()),
            anon=a.get("anon"),
            nuscenes_meta=a.get("nuscenes_meta"),
            channels=channels,
            keyframes_only=bool(get("keyframes_only", True)),
            scenes=split_list(a.get("scenes")),
            limit=a.get("limit"),
        ),
        output=OutputConfig(
            run_dir=run_dir,
            embeddings_name=emb_name,
            shard_size=get("shard_size", d.output.shard_size),
            shard_seconds=get("shard_seconds", d.output.shard_seconds),
            npy=bool(a.get("npy", False)),
            overwrite=bool(a.get("overwrite", False)),
            publish=a.get("publish"),
        ),
        index=IndexConfig(
            index_type=get("index_type", d.index.index_type),
            factory=a.get("factory"),
            max_memory=a.get("max_memory"),
            target_recall=get("target_recall", d.index.target_recall),
            enabled=not a.get("no_index", False),
        ),
        project=ProjectConfig(
            enabled=not a.get("no_project", False),
            fit_sample=get("fit_sample", d.project.fit_sample),
            thumbnails=bool(a.get("thumbnails", False)),
            seed=get("seed", d.project.seed),
        ),
        log_level=get("log_level", "INFO"),
        progress=not a.get("no_progress", False),
    )
    if not 0.0 < cfg.index.target_recall <= 1.0:
        raise UsageError(f"--target-recall {cfg.index.target_recall} must be in (0, 1]")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    parser = _Parser(
        prog="python -m job",
        description="Embed camera images (nuScenes) with OpenCLIP, index them with Faiss, project them with UMAP.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
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
    """Entry point; returns the process exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        cfg = config_from_args(args)
        return int(args.handler(cfg, args) or 0)
    except UsageError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted; committed shards are kept and the same command resumes")
        return 130


def replace(cfg: JobConfig, **sections: object) -> JobConfig:
    """Copy of ``cfg`` with some sections replaced (dataclasses.replace for the nested config)."""
    return dataclasses.replace(cfg, **sections)
