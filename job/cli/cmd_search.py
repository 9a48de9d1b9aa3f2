"""``job search``: nearest images to a text, an image or an indexed id."""
from __future__ import annotations

import argparse
import json

from ..config import DEVICES, JobConfig
from ..search import Searcher, format_hits, hits_json
from .options import add_common_options, choice, positive_int


def _search(cfg: JobConfig, args: argparse.Namespace) -> int:
    sc = cfg.search
    query: dict[str, object]
    s = Searcher.open(sc.run, index=sc.index, embeddings=sc.embeddings,
                      device=None if sc.device == "auto" else sc.device, search_params=sc.search_params)
    if sc.id is not None:
        hits, query = s.by_id(sc.id, sc.k), {"id": sc.id}
    elif sc.text is not None:
        hits, query = s.by_text(sc.text, sc.k), {"text": sc.text}
    else:
        assert sc.image is not None  # the parser requires one of the three
        hits, query = s.by_image(sc.image, sc.k), {"image": sc.image}
    if sc.json:
        print(json.dumps(hits_json(query, sc.k, s.meta, hits), default=str))
    else:
        print(format_hits(hits))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``search`` subcommand."""
    p = sub.add_parser("search", help="nearest images to an image, a text or an indexed id",
                       description="Top-k images of a run by image, text (the run's OpenCLIP text tower) or id.")
    add_common_options(p)
    g = p.add_argument_group("where")
    g.add_argument("--run", default=None, metavar="OUTDIR", help="run folder (local or s3://) with index/ and embeddings")
    g.add_argument("--index", default=None, metavar="FILE", help="an index file instead of OUTDIR/index/index.faiss")
    g.add_argument("--embeddings", default=None, metavar="PARQUET", help="embeddings (default: from the index .json)")
    q = p.add_argument_group("query (one of)").add_mutually_exclusive_group(required=True)
    q.add_argument("--image", default=None, metavar="PATH", help="an image file (local or s3://)")
    q.add_argument("--text", default=None, help='a text query, e.g. "night, rain, intersection"')
    q.add_argument("--id", type=int, default=None, help="the id of an indexed image")
    p.add_argument("-k", "--k", type=positive_int, default=10, help="number of hits (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--device", type=choice("device", DEVICES), default="auto",
                   help="where the text/image model runs: auto, cpu, cuda")
    p.add_argument("--search-params", default=None, help="override the stored search parameters, e.g. efSearch=256")
    p.set_defaults(handler=_search)
