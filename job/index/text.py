"""The text-query index: ``OUTDIR/index/text.faiss`` over the trained output (``embedding_trained``; ``embedding_cls`` in
older runs), planned, tuned and measured like the image index.

The contrastive loss aligned the text tower with the image tower's trained output (CLIP's CLS token, SigLIP's
attention pool); with ``--pool mean`` the run stores that vector too (same forward pass), and text queries search
this index. Text vectors
are not like the image vectors they search (the modality gap), so it is tuned on text: the vectors of the prompts in
``job/model/prompts.py`` (``index/text_queries.npy``).
"""
from __future__ import annotations

import logging

import numpy as np

from ..config import JobConfig
from ..runfolder import TEXT_QUERIES_FILE, IndexInfo, RunLayout, open_dataset, read_npy, trained_column
from .build import build_index_file

log = logging.getLogger(__name__)


def has_text_vectors(emb_url: str) -> bool:
    """True when the embeddings hold the trained outputs of a ``--pool mean`` run."""
    return trained_column(open_dataset(emb_url).schema.names) is not None


def build_run_text_index(cfg: JobConfig, layout: RunLayout, *, expected_dim: int | None = None) -> IndexInfo | None:
    """``job run`` / ``job index --run``: the text-query index and its ``text.json``; None when there are no text vectors.

    Same index options as the image index (type, memory budget, target recall), so it is chosen the same way; it is
    tuned and measured with text queries (the prompts' vectors) where the embedding step wrote them.
    """
    column = trained_column(open_dataset(layout.embeddings).schema.names)
    if column is None:
        log.info("no trained-output column (--pool cls/map, or --text-vectors none): text queries use the image index")
        return None
    return build_index_file(layout.embeddings, layout.text_index, cfg.index, cfg.index.overrides,
                            progress=cfg.progress, expected_dim=expected_dim, column=column,
                            queries=text_queries(layout, expected_dim))


def text_queries(layout: RunLayout, dim: int | None) -> tuple[np.ndarray, str] | None:
    """The prompts' text vectors the embedding step wrote (``RunLayout.text_queries``) and what they are; None
    (tune on in-index vectors, as the image index) when there are none or they do not fit."""
    q = read_npy(layout.text_queries)
    if q is None:
        return None
    if q.ndim != 2 or len(q) < 2 or (dim is not None and q.shape[1] != dim):
        log.warning("ignoring %s (shape %s, the vectors are %s-d): the text index is tuned on in-index vectors",
                    layout.text_queries, q.shape, dim)
        return None
    return q, f"text-tower vectors of {len(q)} driving prompts ({TEXT_QUERIES_FILE}, job/model/prompts.py)"
