"""The columns of a run's tables, owned here beside the tables (``job.runfolder.tables``) rather than by their writer
(``job.embed.parts``): readers (search, the index, the model, the notebook, the steps) learn the names from here.

* embeddings: ``id``, ``path``, ``embedding``, ``width``, ``height``, ``content_hash``, ``embedding_cls`` (with
  ``--pool mean`` unless ``--text-vectors none``), then the nuScenes metadata columns (``job.nuscenes.META_FIELDS``);
* failures: ``path``, ``reason``;
* thumbnails: ``id``, ``path``, ``jpeg``.
"""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa

FAILURES_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("reason", pa.string())])
THUMBNAILS_SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("path", pa.string()), pa.field("jpeg", pa.binary())])
CLS_COLUMN = "embedding_cls"  # with --pool mean: the CLS-pooled vector of the same forward pass (text queries)
VECTOR_COLUMNS = ("embedding", CLS_COLUMN)
HASH_COLUMN = "content_hash"  # BLAKE2b-128 of the file's bytes (decode.content_hash): exact duplicates
OWN_COLUMNS = ("id", "path", "width", "height", HASH_COLUMN, *VECTOR_COLUMNS)  # the writer's own; the rest: metadata


def embedding_schema(dim: int, meta_fields: Sequence[pa.Field] = (), *, text_vectors: bool = False) -> pa.Schema:
    """Schema of the embeddings table for vectors of ``dim`` floats plus optional metadata columns.

    ``text_vectors`` adds ``embedding_cls`` (same type as ``embedding``) after ``height``.
    """
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field(HASH_COLUMN, pa.binary(16)),
            *([pa.field(CLS_COLUMN, pa.list_(pa.float32(), dim), nullable=False)] if text_vectors else []),
            *meta_fields,
        ]
    )
