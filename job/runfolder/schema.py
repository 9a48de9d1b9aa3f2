"""The columns of a run's tables, owned here beside the tables (``job.runfolder.tables``) rather than by their writer
(``job.embed.parts``): readers (search, the index, the model, the eval, the notebook, the steps) learn the names here.

* embeddings: ``id``, ``path``, ``embedding``, ``width``, ``height``, ``content_hash``, ``embedding_trained`` (with
  ``--pool mean`` unless ``--text-vectors none``), then the nuScenes metadata columns (``job.nuscenes.META_FIELDS``);
* failures: ``path``, ``reason``;
* thumbnails: ``id``, ``path``, ``jpeg``.

Two vectors per image: ``embedding`` (the ``--pool`` of the run: by default the mean over patch tokens) and the
model's **trained output** — the vector its text tower was trained against, which text queries search: the CLS token
of a CLIP ViT, the attention-pool head of SigLIP (``job.model.pooling`` says how each is computed). A ``--pool mean``
run stores the trained output of the same forward pass in ``embedding_trained``; a run whose ``--pool`` *is* the
trained output (``cls``, ``map``) has only ``embedding``. Runs made before SigLIP was supported named that column
``embedding_cls`` (``LEGACY_TRAINED_COLUMNS``): readers find either through ``trained_column``
(``tests/test_search.py::test_an_old_run_with_embedding_cls_still_searches_by_text``).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pyarrow as pa

FAILURES_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("reason", pa.string())])
THUMBNAILS_SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("path", pa.string()), pa.field("jpeg", pa.binary())])
IMAGE_COLUMN = "embedding"  # the run's --pool vector: image and id queries, the image index, curation, the map
TRAINED_COLUMN = "embedding_trained"  # with --pool mean: the model's trained output of the same pass (text queries)
LEGACY_TRAINED_COLUMNS = ("embedding_cls",)  # TRAINED_COLUMN's name in runs written before it was renamed
VECTOR_COLUMNS = (IMAGE_COLUMN, TRAINED_COLUMN, *LEGACY_TRAINED_COLUMNS)
HASH_COLUMN = "content_hash"  # BLAKE2b-128 of the file's bytes (decode.content_hash): exact duplicates
OWN_COLUMNS = ("id", "path", "width", "height", HASH_COLUMN, *VECTOR_COLUMNS)  # the writer's own; the rest: metadata


def trained_column(names: Iterable[str]) -> str | None:
    """The column holding the trained output in a table with these column names (``embedding_trained``, or
    ``embedding_cls`` in an older run); None when the table has none (``--pool cls``/``map``, ``--text-vectors none``)."""
    have = set(names)
    return next((c for c in (TRAINED_COLUMN, *LEGACY_TRAINED_COLUMNS) if c in have), None)


def embedding_schema(dim: int, meta_fields: Sequence[pa.Field] = (), *, text_vectors: bool = False) -> pa.Schema:
    """Schema of the embeddings table for vectors of ``dim`` floats plus optional metadata columns.

    ``text_vectors`` adds ``embedding_trained`` (same type as ``embedding``) after ``content_hash``.
    """
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field(IMAGE_COLUMN, pa.list_(pa.float32(), dim), nullable=False),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field(HASH_COLUMN, pa.binary(16)),
            *([pa.field(TRAINED_COLUMN, pa.list_(pa.float32(), dim), nullable=False)] if text_vectors else []),
            *meta_fields,
        ]
    )
