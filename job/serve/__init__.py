"""``job serve``: a search page for one run (text, image and id queries, metadata filters, thumbnails, the UMAP map,
and for a curated run: duplicate groups, rarest first, the diverse subset on the map; the run's scores).

``app`` is the web layer (Starlette routes, errors as JSON), ``service`` what the API does without HTTP (a curated
run's groups, rarity and subset through ``job.curate.CurationResults``), ``quality`` the run's scores (``job eval``'s
``eval/``: the page's quality panel); ``job.search.thumbs`` says where the
thumbnails come from; ``static/`` holds the page (plain HTML, CSS and JS: no build step).

May import: the ground floor, ``job.runfolder``, ``job.search``, ``job.curate`` (its reader), ``job.eval`` (the scores).
"""
from .app import create_app, serve
from .service import SearchService

__all__ = ["SearchService", "create_app", "serve"]
