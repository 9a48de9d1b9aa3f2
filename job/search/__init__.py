"""Search stage: a run's vectors queried by text, image or id (``searcher.Searcher``: image space ``embedding``,
text space the trained output ``embedding_trained``), SQL filters over the metadata (``filters``: DuckDB, file access off), one hit shape
(``hits``) and the thumbnails of a run's images (``thumbs``). Reads a run only.

May import: the ground floor, ``job.runfolder``, ``job.index``, ``job.model``, ``job.decode``.
"""
from __future__ import annotations

from .filters import MetaFilter, compose_where
from .hits import format_hits, hits_json, hits_table, json_safe, make_hits, time_text
from .searcher import SHOWN_COLUMNS, Searcher, Space
from .thumbs import THUMB_PX, Thumbnails

__all__ = ["SHOWN_COLUMNS", "THUMB_PX", "MetaFilter", "Searcher", "Space", "Thumbnails", "compose_where",
           "format_hits", "hits_json", "hits_table", "json_safe", "make_hits", "time_text"]
