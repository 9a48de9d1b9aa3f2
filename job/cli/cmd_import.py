"""``job import``: vectors made elsewhere (a parquet, or clip-retrieval's output folder) into a run folder."""
from __future__ import annotations

import argparse

from ..config import POOLS, JobConfig
from ..embed import IMPORT_FORMATS, ImportOptions, import_vectors
from ..errors import UsageError
from .options import add_common_options, choice, number, positive_int


def _import(cfg: JobConfig, args: argparse.Namespace) -> int:
    if args.pretrained is not None and not args.model:
        raise UsageError("--pretrained names the weights of --model: give --model NAME too")
    options = ImportOptions(format=args.import_format, path_column=args.path_column,
                            embedding_column=args.embedding_column, image_root=args.image_root)
    m = import_vectors(cfg, options)
    src = m.source.get("imported", {})
    print(f"{m.counts.embedded:,} vectors ({m.model.embed_dim}-d) from {src.get('source')} ({src.get('format')}) "
          f"-> {m.run_dir}" + (f"; {src['normalised']:,} normalised" if src.get("normalised") else "")
          + (f"; {m.counts.duplicate_paths_skipped:,} repeated paths skipped" if m.counts.duplicate_paths_skipped
             else ""))
    print(f"next: python -m job index --run {m.run_dir}   (then search, serve, curate)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``import`` subcommand."""
    d = ImportOptions()
    p = sub.add_parser("import", help="turn vectors made elsewhere (parquet, clip-retrieval) into a run folder",
                       description="Check every vector of a parquet (a path column, an embedding column of floats, "
                                   "any metadata columns) or of clip-retrieval's output folder (img_emb/*.npy beside "
                                   "metadata/*.parquet), then write them as a run folder (parts, manifest last) that "
                                   "job index, curate, search and serve read like an embedded run. A wrong dimension, "
                                   "NaN, a missing column: one line, exit 2, nothing written. Vectors that are not "
                                   "unit length are normalised (and the log says how many).")
    p.add_argument("--from", dest="source", action="append", required=True, metavar="URI",
                   help="a parquet file or folder, or clip-retrieval's output folder (local or s3://)")
    p.add_argument("--out", required=True, help="the run folder to write (local or s3://)")
    p.add_argument("--format", dest="import_format", type=choice("--format", IMPORT_FORMATS), default=d.format,
                   help="auto (clip-retrieval when the folder holds img_emb/, else parquet), parquet, clip-retrieval")
    p.add_argument("--path-column", default=d.path_column, help=f"parquet: the images' paths (default {d.path_column})")
    p.add_argument("--embedding-column", default=d.embedding_column,
                   help=f"parquet: the vectors, a list of floats per row (default {d.embedding_column})")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="paths under DIR are stored relative to it, and thumbnails are read from it (default: a "
                        "nuScenes path relative to its dataroot, another absolute path relative to its folder)")
    p.add_argument("--nuscenes-meta", default=None, metavar="URI",
                   help="join nuScenes' metadata by path: a v1.0-* folder, a dataroot or a meta .tgz")
    p.add_argument("--model", default=None,
                   help="the open_clip model that made the vectors (e.g. ViT-B-32 for clip-retrieval's default): "
                        "checked against their dimension, recorded so that text and image queries load it")
    p.add_argument("--pretrained", default=None, help="its weights: an open_clip tag, a file, hf-hub:…, or none "
                   "(default: our default tag for the model)")
    p.add_argument("--pool", type=choice("pool", POOLS), default="cls",
                   help="what the vectors are: cls (CLIP's own image embedding, as clip-retrieval makes them; "
                        "default) or mean")
    p.add_argument("--overwrite", action="store_true", help="replace an output of other options in --out")
    p.add_argument("--shard-size", dest="part_size", type=positive_int, default=None,
                   help="rows per committed part (default 4096)")
    p.add_argument("--lease-timeout", type=number, default=None, metavar="SECONDS",
                   help="another writer's lease counts as abandoned after this long without a heartbeat")
    add_common_options(p)
    p.set_defaults(handler=_import)
