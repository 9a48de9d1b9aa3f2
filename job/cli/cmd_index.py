"""``job index``: the command line of the index stage (options → IndexOverrides → ``job.index.build_index_file``)."""
from __future__ import annotations

import argparse

from ..config import EVAL_QUERIES, REFINE_CHOICES, JobConfig
from ..errors import UsageError
from ..index import build_index_file
from ..index.plan import DEFAULT_TRAIN_MAX, HNSW_EF_CONSTRUCTION, HNSW_M
from ..runfolder import RunLayout, RunRef, find_manifest, index_info_url, open_run
from ..steps import index_step, rerun_step
from .options import add_common_options, add_index_options, positive_int


def _index_command(cfg: JobConfig, args: argparse.Namespace) -> int:
    ix = cfg.index
    if args.run:
        ref = open_run(args.run)
        layout, manifest = ref.layout, ref.manifest
        emb = RunLayout.locate(ix.embeddings).embeddings if ix.embeddings else layout.embeddings
    elif ix.embeddings:
        layout = RunLayout.locate(ix.embeddings)
        manifest, emb = find_manifest(layout), layout.embeddings
    else:
        raise UsageError("give --embeddings PARQUET (with --index-out FILE) or --run OUTDIR")
    out = ix.index_out or layout.index
    if out == layout.index and emb == layout.embeddings:  # the output's own index (and its text-query index)
        built = rerun_step(RunRef(layout, manifest), lambda m: index_step(cfg, layout, m))
        urls = (layout.index, layout.text_index)
    else:
        dim = manifest.model.embed_dim if manifest is not None else None
        built = (build_index_file(emb, out, ix, ix.overrides, progress=cfg.progress, expected_dim=dim), None)
        urls = (out, "")
    for url, m in zip(urls, built):
        if m is not None:
            print(f"{url}: {m.factory} n={m.n} d={m.d} column={m.column} recall@10={m.recall_at_10} "
                  f"search={m.search_params or 'exact'} -> {index_info_url(url)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``index`` subcommand."""
    p = sub.add_parser("index", help="build a Faiss index over a run's embeddings",
                       description="Build a Faiss index (cosine / inner product) over an embeddings parquet, tune its "
                                   "search parameters to --target-recall, and write it with a .json description.")
    add_common_options(p)
    g = p.add_argument_group("input/output")
    g.add_argument("--run", default=None, metavar="OUTDIR", help="a run folder: reads its embeddings, writes OUTDIR/index/")
    g.add_argument("--embeddings", default=None, metavar="PARQUET",
                   help="embeddings parquet (file or dataset folder, local or s3://)")
    g.add_argument("--index-out", default=None, metavar="FILE",
                   help="where the index goes (a .json with the same stem is written beside it)")
    add_index_options(p)
    t = p.add_argument_group("index parameters (default: derived from the number of vectors and dimension)")
    t.add_argument("--nlist", type=positive_int, default=None, help="IVF lists (default 4*sqrt(n) as a power of 2)")
    t.add_argument("--pq-m", type=positive_int, default=None, help="PQ sub-quantizers, must divide d (default d/8)")
    t.add_argument("--pq-bits", type=positive_int, default=None, help="bits per PQ code (default 8)")
    t.add_argument("--refine", default=None, metavar="CODES", help=f"ivfpq re-ranking codes: {', '.join(REFINE_CHOICES)} (default SQ8)")
    t.add_argument("--hnsw-m", type=positive_int, default=None, help=f"HNSW links per node (default {HNSW_M})")
    t.add_argument("--ef-construction", type=positive_int, default=None,
                   help=f"HNSW build beam (default {HNSW_EF_CONSTRUCTION})")
    t.add_argument("--train-size", type=positive_int, default=None,
                   help=f"training sample (default max(40*nlist, {DEFAULT_TRAIN_MAX}) capped at n)")
    t.add_argument("--search-params", default=None,
                   help="fixed search parameters instead of tuning, e.g. efSearch=128 or nprobe=32,k_factor=8")
    t.add_argument("--queries", type=positive_int, default=EVAL_QUERIES,
                   help=f"held-out queries for tuning and recall (default {EVAL_QUERIES})")
    t.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
    p.set_defaults(handler=_index_command)
