"""``job serve``: the search page for one run, in the browser (``job.serve``)."""
from __future__ import annotations

import argparse

from ..config import DEVICES, JobConfig, ServeConfig
from ..errors import UsageError
from .options import add_common_options, choice, int_at_least


def _serve(cfg: JobConfig, args: argparse.Namespace) -> int:
    try:
        from ..serve import serve
    except ImportError as exc:  # the `serve` extra is not installed (e.g. in the job image)
        raise UsageError(f"job serve needs the serve extra ({exc.name} is missing): "
                         "pip install 'vit-embedding-drivedata[serve]' (make setup installs it)") from None
    sc = cfg.search
    if not sc.run:
        raise UsageError("give --run OUTDIR (a finished run folder, local or s3://)")
    serve(sc.run, host=cfg.serve.host, port=cfg.serve.port, device=None if sc.device == "auto" else sc.device)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    d = ServeConfig()
    p = sub.add_parser("serve", help="a search page for a run in the browser (text / image / id, filters, map)",
                       description="Serve one web page and a JSON API over a finished run: text, image and id "
                                   "queries, metadata filters, thumbnails, and the UMAP map with the hits. "
                                   "Reads the run only; binds to 127.0.0.1 unless told otherwise.")
    add_common_options(p)
    p.add_argument("--run", required=True, metavar="RUN_URI", help="run folder, local or s3://")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}: this machine only)")
    p.add_argument("--port", type=int_at_least(1), default=d.port, help=f"port (default {d.port})")
    p.add_argument("--device", type=choice("device", DEVICES), default="auto",
                   help="where the text/image model runs: auto, cpu, cuda")
    p.set_defaults(handler=_serve)
