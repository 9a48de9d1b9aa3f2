"""Option groups and argument types shared by the subcommands; every default comes from ``job.config``."""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

from ..config import (
    CAMERA_CHANNELS,
    DECODERS,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_RESIZE_MODE,
    DEVICES,
    INDEX_TYPES,
    LOG_LEVELS,
    POOLS,
    PRECISIONS,
    RESIZE_MODES,
    TEXT_VECTORS,
    DecodeConfig,
    IndexConfig,
    OutputConfig,
)
from ..errors import UsageError
from ..values import check_choice, parse_size


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line and exit code 2 (argparse's own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def choice(name: str, choices: Sequence[str], *, upper: bool = False) -> Callable[[str], str]:
    """argparse type: one of ``choices`` (case-folded), with the one-line message listing them otherwise."""

    def parse(value: str) -> str:
        v = value.upper() if upper else value.lower()
        try:
            return check_choice(name, v, choices)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
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


def size(value: str) -> int:
    """argparse type: a memory size (``job.values.parse_size``: 4G, 512M, 1.5GiB, bytes) in bytes."""
    try:
        n = parse_size(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--max-memory ")) from None
    assert n is not None
    return n


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def number(value: str) -> float:
    """argparse type: a finite float."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return x


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Logging and progress options every command takes."""
    g = p.add_argument_group("general")
    g.add_argument("--log-level", type=choice("log level", LOG_LEVELS, upper=True), default="INFO",
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
    g.add_argument("--pool", type=choice("pool", POOLS), default="mean",
                   help="mean: mean over patch tokens (default); cls: the CLS token")
    g.add_argument("--text-vectors", type=choice("--text-vectors", TEXT_VECTORS), default="cls",
                   help="with --pool mean, also store the CLS output of the same forward pass (embedding_cls), the "
                        "vector CLIP's text tower was trained against, for text queries (default cls; none: don't)")
    g.add_argument("--image-size", type=positive_int, default=None,
                   help="model input size in pixels (default: the model's own, 224 for ViT-L-14)")
    g.add_argument("--device", type=choice("device", DEVICES), default="auto",
                   help="auto (CUDA if present), cpu, cuda; in job run also where Faiss builds the index (see job index)")
    g.add_argument("--precision", type=choice("precision", PRECISIONS), default="auto",
                   help="auto (bf16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    g.add_argument("--seed", type=int, default=0, help="seed for --pretrained none and the UMAP sample (default 0)")
    g.add_argument("--compile", action="store_true", help="torch.compile the visual tower (CUDA; pays off on long runs)")
    g.add_argument("--cache-dir", default=None, help="where downloaded weights are kept")
    g.add_argument("--weights-cache", default=None, metavar="URI",
                   help="a shared cache for open_clip tag weights (e.g. s3://bucket/cache/weights): the first run "
                        "stores the checkpoint under URI/<model>/<tag>/, later runs load it from there")


def add_decode_options(p: argparse.ArgumentParser) -> None:
    """--resize-mode/--batch-size/--workers/--decode."""
    d = DecodeConfig()
    g = p.add_argument_group("preprocessing")
    g.add_argument("--resize-mode", type=choice("resize mode", RESIZE_MODES), default=DEFAULT_RESIZE_MODE,
                   help="pad: whole frame, letterboxed (default; keeps the full 16:9 field of view); "
                        "crop: open_clip's centre crop (drops ~44%% of a 1600x900 frame's width); squash: stretch")
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help=f"images per model batch (default {d.batch_size})")
    g.add_argument("--workers", type=non_negative_int, default=None,
                   help="decode processes (default: one per core with a GPU; 0, i.e. inline, when the CPU runs "
                        "the model)")
    g.add_argument("--decode", dest="decoder", type=choice("decoder", DECODERS), default="auto",
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
    g.add_argument("--limit", type=positive_int, default=None, help="stop after this many images")


def add_output_options(p: argparse.ArgumentParser, *, out_help: str, default_out: str | None) -> None:
    """--out/--npy/--overwrite/shards."""
    o = OutputConfig()
    g = p.add_argument_group("output")
    g.add_argument("--out", default=default_out, required=default_out is None, help=out_help)
    g.add_argument("--npy", action="store_true", help="also write the vectors as a .npy matrix (rows in parquet order)")
    g.add_argument("--overwrite", action="store_true",
                   help="start this output over instead of resuming (a run with other options is refused otherwise); "
                        "other outputs in the same folder are left alone")
    g.add_argument("--shard-size", dest="part_size", type=positive_int, default=o.part_size,
                   help=f"images per committed part, i.e. parquet file (default {o.part_size})")
    g.add_argument("--shard-seconds", dest="part_seconds", type=number, default=o.part_seconds,
                   help=f"commit a part at least this often, in seconds (default {o.part_seconds:g})")
    g.add_argument("--lease-timeout", type=number, default=o.lease_timeout, metavar="SECONDS",
                   help="one writer per output: another writer's lease (_LEASE) counts as abandoned after this long "
                        f"without a heartbeat and is taken over (default {o.lease_timeout:g}); a live one makes this "
                        "command stop at once with exit 75")


def add_index_options(p: argparse.ArgumentParser, *, in_run: bool = False) -> None:
    """Faiss options: ``--type`` for ``job index``, ``--index-type`` inside ``job run``."""
    ix = IndexConfig()
    g = p.add_argument_group("index")
    g.add_argument("--index-type" if in_run else "--type", dest="index_type",
                   type=choice("index type", INDEX_TYPES), default=ix.index_type,
                   help=f"Faiss index: {', '.join(INDEX_TYPES)} (default {ix.index_type})")
    g.add_argument("--factory", default=None, help="any Faiss index-factory string (overrides the type)")
    g.add_argument("--max-memory", type=size, default=None,
                   help="memory budget for auto, e.g. 4G, 512M, 1.5GiB (default: half the memory available now)")
    g.add_argument("--target-recall", type=number, default=ix.target_recall,
                   help=f"tune nprobe/efSearch to reach this recall@10 (default {ix.target_recall})")
    if not in_run:  # in job run, --device (the model's) places Faiss too
        g.add_argument("--device", type=choice("device", DEVICES), default=ix.device,
                       help="where Faiss trains and fills IVF indexes and runs the exact search for recall: auto (the "
                            "GPU when Faiss sees one), cpu, cuda (a GPU required); HNSW and flat build on the CPU")


def add_projection_options(p: argparse.ArgumentParser) -> None:
    """UMAP knobs for ``job run`` and ``job project``."""
    from ..config import UMAP_BACKENDS, ProjectConfig

    pc = ProjectConfig()
    g = p.add_argument_group("UMAP projection")
    g.add_argument("--fit-sample", type=int, default=pc.fit_sample,
                   help=f"fit UMAP on at most this many points, transform the rest (default {pc.fit_sample})")
    g.add_argument("--n-neighbors", type=int, default=pc.n_neighbors,
                   help=f"UMAP neighbourhood size (default {pc.n_neighbors})")
    g.add_argument("--min-dist", type=number, default=pc.min_dist, help=f"UMAP min_dist (default {pc.min_dist})")
    g.add_argument("--n-epochs", type=int, default=None,
                   help="UMAP optimisation epochs (default: umap-learn's, 200 above 10k points)")
    g.add_argument("--backend", type=choice("UMAP backend", UMAP_BACKENDS), default=pc.backend,
                   help="auto (cuML on a GPU if installed), umap-learn, cuml")
