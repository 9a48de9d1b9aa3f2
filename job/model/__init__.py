"""Model stage: which network and weights (``registry``: open_clip names, the seed's aliases, ``--pretrained``
tags, ``hf-hub:``, local and ``s3://`` files), the driving prompts (``prompts``), how a tower pools (``pooling``: CLIP
ViTs' CLS token or SigLIP's attention pool as the trained output, and what ``mean`` is for each), where the text
tokenizer comes from (``tokenizer``: open_clip's, the hub's, or a local folder), and loading and running them
(``load``: ``load_model``, ``ImageEncoder``, ``encode_text``, ``load_run_model``). ``load`` and ``pooling`` import
torch, so they are imported by their full name where a model runs; this face stays light.

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
