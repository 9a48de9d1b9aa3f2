"""Notebook helpers: open a finished run, its 2-D map, coloured scatter plots, thumbnails and galleries, and its
curation (duplicate groups, the rarest images, the subset on the map and its coverage), and its scores against
nuScenes' own annotations (``evaluation``).

Used by ``notebooks/umap_visualize.ipynb`` so its cells stay short; everything here works on a run
folder given as a local path or an ``s3://`` URL and is unit-tested without a notebook.

May import: the ground floor, ``job.runfolder``, the stages that read a run (``job.search``, ``job.index``,
``job.model``, ``job.curate``, ``job.eval``) and ``job.project`` (the map).
"""
from .curation import (
    RunCuration,
    coverage,
    duplicate_groups,
    group_members,
    load_curation,
    not_curated_note,
    rarest,
    selected_points,
    skip_reason,
    threshold_png,
)
from .curation_plots import coverage_figure, groups_figure, selection_map
from .evaluation import figure_png, load_eval, per_query, scores_table
from .gallery import (
    gallery_figure,
    hits_table,
    load_text_model,
    neighbours,
    similar_images,
    text_search,
    thumbnails,
)
from .plots import SHADE_ABOVE, marker_style, projection, save_figure, scatter_map, shade, show, show_png
from .run import (
    CAMERA_ORDER,
    MISSING,
    OTHER_COLOR,
    THUMB_WIDTH,
    WEATHER_COLORS,
    WEATHER_ORDER,
    Run,
    RunNotReady,
    check_manifest,
    load_run,
    weather_labels,
)

__all__ = [
    "CAMERA_ORDER", "MISSING", "OTHER_COLOR", "SHADE_ABOVE", "THUMB_WIDTH", "WEATHER_COLORS", "WEATHER_ORDER",
    "Run", "RunNotReady", "check_manifest", "gallery_figure", "hits_table", "load_text_model",
    "marker_style", "load_run", "neighbours", "projection", "save_figure", "scatter_map", "shade", "show",
    "similar_images", "text_search", "thumbnails", "weather_labels",
    "RunCuration", "coverage", "coverage_figure", "duplicate_groups", "group_members", "groups_figure",
    "load_curation", "not_curated_note", "rarest", "selected_points", "selection_map", "show_png", "skip_reason",
    "threshold_png", "figure_png", "load_eval", "per_query", "scores_table",
]
