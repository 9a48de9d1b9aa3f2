"""``job search``: nearest images to a text, an image or an indexed id."""
from __future__ import annotations

import argparse
import json

from ..config import DEVICES, JobConfig, SearchConfig
from ..search import Searcher, compose_where, format_hits, hits_json
from ..values import CAMERA_CHANNELS
from .options import add_common_options, choice, positive_int


def search_where(sc: SearchConfig) -> str | None:
    """The one SQL condition of ``--where`` and the filter shorthands (None: no filter)."""
    return compose_where(sc.where, channels=sc.channels, locations=sc.locations, scenes=sc.scenes,
                         night=sc.night, rain=sc.rain)


def _search(cfg: JobConfig, args: argparse.Namespace) -> int:
    sc = cfg.search
    query: dict[str, object]
    s = Searcher.open(sc.run, index=sc.index, embeddings=sc.embeddings,
                      device=None if sc.device == "auto" else sc.device, search_params=sc.search_params)
    where = search_where(sc)
    matches = len(s.matching(where)) if where else None  # also checks the columns before any model loads
    if sc.id is not None:
        hits, query = s.by_id(sc.id, sc.k, where=where), {"id": sc.id}
    elif sc.text is not None:
        hits, query = s.by_text(sc.text, sc.k, where=where), {"text": sc.text}
    else:
        assert sc.image is not None  # the parser requires one of the three
        hits, query = s.by_image(sc.image, sc.k, where=where), {"image": sc.image}
    if sc.json:
        extra = {"where": where, "matches": matches} if where else {}
        print(json.dumps(hits_json(query, sc.k, s.meta, hits, **extra), default=str))
    else:
        if where:
            print(f"filter: {where} ({matches} matching images)")
        print(format_hits(hits))
    return 0


def _add_filter_options(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("filters (combined with AND; the search runs inside the matching images only)")
    f.add_argument("--where", default=None, metavar="SQL",
                   help="SQL condition over the metadata columns, e.g. \"channel = 'CAM_FRONT' AND location LIKE "
                        "'singapore%%' AND NOT is_key_frame\" (columns: those of embeddings.parquet, plus night "
                        "and rain from the scene description)")
    f.add_argument("--channel", action="append", default=None, metavar="CAM",
                   help=f"camera channel(s), comma-separated: {', '.join(CAMERA_CHANNELS)}")
    f.add_argument("--location", action="append", default=None, metavar="PREFIX",
                   help="location prefix(es), e.g. singapore or boston-seaport")
    f.add_argument("--scene", action="append", default=None, metavar="NAME", help="scene name(s), e.g. scene-0061")
    f.add_argument("--night", action=argparse.BooleanOptionalAction, default=None,
                   help="only night scenes (--no-night: only day scenes), from the scene description")
    f.add_argument("--rain", action=argparse.BooleanOptionalAction, default=None,
                   help="only rain scenes (--no-rain: only dry ones), from the scene description")


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
    _add_filter_options(p)
    p.set_defaults(handler=_search)
