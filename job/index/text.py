"""The text-query index: ``OUTDIR/index/text.faiss`` over ``embedding_cls``, planned, tuned and measured like the image index.

CLIP's contrastive loss aligned the text tower with the CLS output of the image tower; with ``--pool mean`` the
run stores that vector too (``embedding_cls``, same forward pass), and text queries search this index.
"""
from __future__ import annotations

import logging
from typing import Any

from .. import fsutil
from ..config import JobConfig
from ..runfolder import TEXT_INDEX_FILE, RunLayout
from ..store import CLS_COLUMN
from .build import build_index_file
from .vectors import open_dataset

log = logging.getLogger(__name__)


def text_index_url(layout: RunLayout) -> str:
    """Where an output's text-query index lives: beside its image index."""
    return fsutil.join(layout.index_dir, TEXT_INDEX_FILE)


def has_text_vectors(emb_url: str) -> bool:
    """True when the embeddings hold the CLS vectors of a ``--pool mean`` run."""
    return CLS_COLUMN in open_dataset(emb_url).schema.names


def build_run_text_index(cfg: JobConfig, layout: RunLayout, *, expected_dim: int | None = None) -> dict[str, Any] | None:
    """``job run`` / ``job index --run``: the text-query index and its ``text.json``; None when there are no text vectors.

    Same index options as the image index (type, memory budget, target recall), so it is chosen and tuned the
    same way and its recall is measured and recorded the same way.
    """
    if not has_text_vectors(layout.embeddings):
        log.info("no %s column (--pool cls, or --text-vectors none): text queries use the image index", CLS_COLUMN)
        return None
    return build_index_file(layout.embeddings, text_index_url(layout), cfg.index, cfg.index.overrides,
                            progress=cfg.progress, expected_dim=expected_dim, column=CLS_COLUMN)
