"""The run folder: where every file of a run lives (``RunLayout``), the typed documents it stores (the manifest, the
index descriptions, ``_STATUS``'s shape), its tables (parquet parts, their columns, ``.npy``) and the writer's lease.

It is the contract between the stages: embed writes parts through it, index/curate/eval/search/serve/viz read them
through it, and no other module builds a run path or spells a stored key.

May import: ``job.errors``, ``job.values``, ``job.config``, ``job.fsutil`` (the ground floor) — nothing else of the job.
"""
from __future__ import annotations

from .documents import JSON_KEYS, READABLE_VERSIONS, SCHEMA_VERSION, Counts, IndexInfo, ModelInfo, Outputs, Projection
from .layout import (
    BATCH_NOTES,
    BOOTSTRAP_LOG,
    INDEX_FILE,
    LAUNCH_NOTE,
    SHARDS_DIR,
    STATUS_FILE,
    TEXT_INDEX_FILE,
    TEXT_QUERIES_FILE,
    CurationFiles,
    RunLayout,
    RunRef,
    find_manifest,
    index_info_url,
    manifest_from_json,
    open_run,
    path_id,
    read_index_info,
    read_manifest,
    write_index_info,
    write_manifest,
)
from .lease import HEARTBEAT_S, Lease, LeaseHeld, LeaseInfo, LeaseLost
from .manifest import Manifest
from .records import (
    Curation,
    Evaluation,
    GraphInfo,
    GraphTrial,
    LabelledInfo,
    Score,
    SelectionInfo,
    StratumInfo,
    ThresholdInfo,
)
from .schema import (
    FAILURES_SCHEMA,
    HASH_COLUMN,
    IMAGE_COLUMN,
    LEGACY_TRAINED_COLUMNS,
    THUMBNAILS_SCHEMA,
    TRAINED_COLUMN,
    VECTOR_COLUMNS,
    embedding_schema,
    trained_column,
)
from .status_doc import StatusDoc, Waiting
from .tables import (
    PartKey,
    count_rows,
    embedding_matrix,
    list_parts,
    open_dataset,
    part_url,
    read_npy,
    read_table,
    read_vectors,
    table_bytes,
    write_npy,
    write_table,
)

__all__ = [
    "BATCH_NOTES", "BOOTSTRAP_LOG", "FAILURES_SCHEMA", "HASH_COLUMN", "HEARTBEAT_S", "IMAGE_COLUMN", "INDEX_FILE",
    "JSON_KEYS", "LAUNCH_NOTE", "LEGACY_TRAINED_COLUMNS", "READABLE_VERSIONS", "SCHEMA_VERSION", "SHARDS_DIR",
    "STATUS_FILE", "TEXT_INDEX_FILE", "TEXT_QUERIES_FILE", "THUMBNAILS_SCHEMA", "TRAINED_COLUMN", "VECTOR_COLUMNS",
    "Counts", "Curation", "CurationFiles", "Evaluation", "GraphInfo", "GraphTrial", "IndexInfo", "LabelledInfo",
    "Lease", "LeaseHeld", "LeaseInfo", "LeaseLost", "Manifest", "ModelInfo", "Outputs", "PartKey", "Projection",
    "RunLayout", "RunRef", "Score", "SelectionInfo", "StatusDoc", "StratumInfo", "ThresholdInfo", "Waiting",
    "count_rows", "embedding_matrix", "embedding_schema", "find_manifest", "index_info_url", "list_parts",
    "manifest_from_json", "open_dataset", "open_run", "part_url", "path_id", "read_index_info", "read_manifest",
    "read_npy", "read_table", "read_vectors", "table_bytes", "trained_column", "write_index_info", "write_manifest",
    "write_npy", "write_table",
]
