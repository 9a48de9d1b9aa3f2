"""Model stage: which network and weights (``registry``: open_clip names, the seed's aliases, ``--pretrained``
tags, ``hf-hub:``, local and ``s3://`` files), the driving prompts (``prompts``), and loading and running them
(``load``: ``load_model``, pooling, ``ImageEncoder``, ``encode_text``, ``load_run_model``). ``load`` imports torch,
so it is imported as ``job.model.load`` where a model runs; this face stays light.

May import: the ground floor and ``job.runfolder`` (a run's manifest says which model made its vectors).
"""
from __future__ import annotations

from .prompts import prompts
from .registry import (
    DEFAULT_TAGS,
    MODEL_ALIASES,
    WeightsSpec,
    available_models,
    cached_tag_weights,
    resolve_model_name,
    resolve_pretrained,
)

__all__ = ["DEFAULT_TAGS", "MODEL_ALIASES", "WeightsSpec", "available_models", "cached_tag_weights", "prompts",
           "resolve_model_name", "resolve_pretrained"]
