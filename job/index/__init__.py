"""Index stage: plan, build, tune and load Faiss indexes over a run's embeddings (cosine = inner product).

``plan`` (which index, which parameters: no Faiss needed), ``build`` (create, train, add, save, load), ``tune``
(recall on held-out queries, search parameters), ``exact`` (the one exact search), ``vectors``, ``text`` (the
text-query index over ``embedding_cls``), ``filtered`` (top-k among a filter's ids inside Faiss), ``_gpu`` (where
Faiss runs: the GPU when present and ``--device`` allows, one-warning fallback), ``ivf_gpu`` (IVF training and adding
on the GPU, saved as a CPU index).

May import: the ground floor and ``job.runfolder``.
"""
from __future__ import annotations

from ..runfolder import INDEX_FILE, open_dataset
from .build import (
    build_from_arrays,
    build_index,
    build_index_file,
    build_run_index,
    load_index,
    save_index,
)
from .exact import exact_search
from .plan import (
    IndexPlan,
    default_nlist,
    default_pq_bits,
    default_pq_m,
    default_train_size,
    estimate_bytes,
    plan_index,
)
from .text import build_run_text_index, has_text_vectors
from .tune import (
    RECALL_K,
    EvalSet,
    current_search_params,
    evaluate,
    format_params,
    held_out,
    make_eval_set,
    recall_at,
    search_space,
    set_search_params,
    tune,
)
from .vectors import check_vectors, ids_digest, load_vectors

__all__ = [
    "INDEX_FILE",
    "RECALL_K",
    "EvalSet",
    "IndexPlan",
    "build_from_arrays",
    "build_index",
    "build_index_file",
    "build_run_index",
    "build_run_text_index",
    "check_vectors",
    "current_search_params",
    "default_nlist",
    "default_pq_bits",
    "default_pq_m",
    "default_train_size",
    "estimate_bytes",
    "evaluate",
    "exact_search",
    "format_params",
    "has_text_vectors",
    "held_out",
    "ids_digest",
    "load_index",
    "load_vectors",
    "make_eval_set",
    "open_dataset",
    "plan_index",
    "recall_at",
    "save_index",
    "search_space",
    "set_search_params",
    "tune",
]
