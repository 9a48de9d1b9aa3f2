"""Search stage: top-k neighbours of an image, a text or an indexed id, with nuScenes metadata per hit.

``Searcher.open(run)`` loads a run's index (``OUTDIR/index/index.faiss``), checks that it matches the
run's embeddings, and answers queries by vector, id, text or image; text and image queries load the
run's own model (from ``manifest.json``) and refuse other weights.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from . import fsutil
from .errors import DataError, UsageError
from .index import (
    RECALL_K,
    ids_digest,
    load_index,
    meta_url,
    parse_params,
    set_search_params,
)
from .runfolder import Manifest, RunLayout, embedding_matrix, find_manifest, open_run

log = logging.getLogger(__name__)

SHOWN_COLUMNS = ("scene_name", "channel", "location", "timestamp")


def _time_text(us: Any) -> str | None:
    if us is None:
        return None
    try:
        return dt.datetime.fromtimestamp(int(us) / 1e6, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return None


class Searcher:
    """An index, the metadata of every vector in it, and (lazily) the model that made the vectors."""

    def __init__(self, index: Any, meta: dict[str, Any], table: pa.Table, *, emb_url: str,
                 manifest: Manifest | None, device: str | None = None) -> None:
        self.index = index
        self.meta = meta
        self.table = table  # metadata columns (no embedding), one row per vector
        self.emb_url = emb_url
        self.manifest = manifest
        self.device = device
        self.d = int(index.d)
        ids = table.column("id").to_numpy().astype(np.int64, copy=False)
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        self._lm: Any = None

    # ------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, run: str | None = None, *, index: str | None = None, embeddings: str | None = None,
             device: str | None = None, search_params: str | None = None) -> Searcher:
        """Open a run folder (local or ``s3://``), or an index file whose ``.json`` names its embeddings."""
        manifest: Manifest | None = None
        if run:
            ref = open_run(run)
            manifest = ref.manifest
            index = index or ref.layout.index
            embeddings = embeddings or ref.layout.embeddings
        if not index:
            raise UsageError("give --run OUTDIR, or --index FILE (its .json names the embeddings)")
        murl = meta_url(index)
        if not fsutil.exists(murl):
            hint = f"python -m job index --run {run}" if run else "python -m job index"
            raise UsageError(f"no index at {index} (missing {murl}); build it with: {hint}")
        meta = fsutil.read_json(murl)
        emb_layout = RunLayout.locate(embeddings or meta.get("embeddings") or "")
        embeddings = emb_layout.embeddings
        if manifest is None:
            manifest = find_manifest(emb_layout)
        idx = load_index(index)
        from .index import open_dataset

        dataset = open_dataset(embeddings)
        table = dataset.to_table(columns=[c for c in dataset.schema.names if c != "embedding"])
        if "id" not in table.column_names:
            raise UsageError(f"{embeddings} has no id column; it is not an embeddings table")
        _check_match(idx, meta, table, index, embeddings)
        if search_params:
            set_search_params(idx, parse_params(search_params))
        elif meta.get("search_params"):
            set_search_params(idx, parse_params(meta["search_params"]))
        return cls(idx, meta, table, emb_url=embeddings, manifest=manifest, device=device)

    # ------------------------------------------------------------------------------------- queries
    def by_vector(self, q: np.ndarray, k: int = 10) -> list[dict[str, Any]]:
        """Top-k hits of one query vector (normalised here), best first."""
        return self.by_vectors(np.asarray(q, np.float32).reshape(1, -1), k)[0]

    def by_vectors(self, qs: np.ndarray, k: int = 10) -> list[list[dict[str, Any]]]:
        """Top-k hits for each row of ``qs``."""
        qs = np.ascontiguousarray(np.asarray(qs, np.float32).reshape(len(qs), -1))
        if qs.shape[1] != self.d:
            raise UsageError(f"query vectors have dimension {qs.shape[1]}, the index holds {self.d}-d vectors")
        self._check_k(k)
        if not np.isfinite(qs).all():
            raise UsageError("query vector contains NaN or inf")
        norms = np.linalg.norm(qs, axis=1, keepdims=True)
        if (norms == 0).any():
            raise UsageError("query vector is all zeros")
        # The search parameters were tuned for top-10 (re-ranking depth scales with k): never ask for less.
        kk = min(max(k, RECALL_K), self.index.ntotal)
        scores, labels = self.index.search(qs / norms, kk)
        return [self._hits(s[:k], lab[:k]) for s, lab in zip(scores, labels)]

    def by_id(self, id_: int, k: int = 10) -> list[dict[str, Any]]:
        """Top-k neighbours of an indexed image (the image itself comes first)."""
        self._check_k(k)
        return self.by_vector(self.vector(id_), k)

    def by_text(self, text: str, k: int = 10) -> list[dict[str, Any]]:
        """Top-k images for a text query, embedded with the run's own text tower."""
        from .model import encode_text

        if not text.strip():
            raise UsageError("--text is empty")
        self._check_k(k)
        lm = self.model()
        return self.by_vector(encode_text(lm, [text])[0], k)

    def by_image(self, image: str | bytes, k: int = 10) -> list[dict[str, Any]]:
        """Top-k images for an image file (local path, URL, or bytes), preprocessed as the run did."""
        from .decode import DecodeError, decode_image
        from .model import ImageEncoder

        self._check_k(k)
        if isinstance(image, (bytes, bytearray)):
            data = bytes(image)
        else:
            fs, path = fsutil.url_to_fs(image)
            if not fs.exists(path):
                raise UsageError(f"image {image} does not exist")
            data = fs.cat_file(path)
        lm = self.model()
        resize_mode = self.manifest.resize_mode if self.manifest else "pad"
        try:
            arr = decode_image(data, lm.image_size, resize_mode, lm.interpolation)[0]
        except DecodeError as exc:
            raise UsageError(f"image {image if isinstance(image, str) else '(bytes)'}: {exc}") from None
        return self.by_vector(ImageEncoder(lm)(arr[None].copy())[0], k)

    # ------------------------------------------------------------------------------------- helpers
    def row_of(self, id_: int) -> int:
        """Row number of ``id_`` in the embeddings table."""
        pos = int(np.searchsorted(self._sorted_ids, id_))
        if pos >= len(self._sorted_ids) or self._sorted_ids[pos] != id_:
            raise UsageError(f"id {id_} is not in {self.emb_url}")
        return int(self._order[pos])

    def vector(self, id_: int) -> np.ndarray:
        """The stored embedding of ``id_`` (reads only the matching row's embedding)."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        self.row_of(id_)
        fs, path = fsutil.url_to_fs(self.emb_url)
        t = ds.dataset(path, filesystem=fs, format="parquet").to_table(
            columns=["embedding"], filter=pc.field("id") == pa.scalar(int(id_), pa.int64()))
        return embedding_matrix(t)[0]

    def model(self) -> Any:
        """The run's model (loaded once through ``model.load_run_model``, with its checks)."""
        if self._lm is None:
            from .model import load_run_model

            if self.manifest is None:
                raise UsageError(f"no manifest beside {self.emb_url}; text and image queries need the run's model "
                                 "(search by --id works)")
            self._lm = load_run_model(self.manifest, device=self.device)
            if self._lm.embed_dim != self.d:
                raise DataError(f"model {self._lm.name} makes {self._lm.embed_dim}-d vectors, the index holds "
                                f"{self.d}-d vectors")
        return self._lm

    def _check_k(self, k: int) -> None:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise UsageError(f"k must be a positive integer, got {k!r}")
        if k > self.index.ntotal:
            raise UsageError(f"k={k} is larger than the index ({self.index.ntotal} vectors); use -k {self.index.ntotal} or less")

    def _hits(self, scores: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
        keep = labels >= 0
        labels, scores = labels[keep], scores[keep]
        if not len(labels):
            return []
        pos = np.searchsorted(self._sorted_ids, labels)
        pos = np.clip(pos, 0, len(self._sorted_ids) - 1)
        if not (self._sorted_ids[pos] == labels).all():
            raise DataError("the index returned ids that are not in the embeddings; rebuild the index")
        rows = self._order[pos]
        meta = self.table.take(pa.array(rows)).to_pylist()
        out = []
        for rank, (score, m) in enumerate(zip(scores.tolist(), meta), 1):
            hit = {"rank": rank, "score": round(float(score), 6), **m}
            hit["time"] = _time_text(m.get("timestamp"))
            out.append(hit)
        return out


def hits_table(hits: Sequence[dict[str, Any]]) -> pa.Table:
    """Hits as a pyarrow table (``.to_pandas()`` for a DataFrame)."""
    return pa.Table.from_pylist(list(hits))


def _check_match(index: Any, meta: dict[str, Any], table: pa.Table, index_url: str, emb_url: str) -> None:
    """Refuse an index that was not built from these embeddings."""
    rebuild = f"rebuild it: python -m job index --embeddings {emb_url} --index-out {index_url}"
    n = table.num_rows
    if index.ntotal != n or meta.get("n") not in (None, n):
        raise DataError(f"index {index_url} holds {index.ntotal} vectors but {emb_url} has {n} rows; {rebuild}")
    if meta.get("d") not in (None, index.d):
        raise DataError(f"index {index_url} is {index.d}-d but its .json says {meta.get('d')}; {rebuild}")
    digest = meta.get("ids_sha256")
    if digest and digest != ids_digest(table.column("id").to_numpy()):
        raise DataError(f"index {index_url} was built from other embeddings than {emb_url} (ids differ); {rebuild}")


# ------------------------------------------------------------------------------------------- output


def format_hits(hits: Sequence[dict[str, Any]]) -> str:
    """Human-readable table of hits."""
    head = f"{'rank':>4}  {'score':>7}  {'scene':<12} {'channel':<16} {'location':<24} {'time (UTC)':<23}  {'id':<19}  path"
    lines = [head]
    for h in hits:
        lines.append(f"{h['rank']:>4}  {h['score']:>7.4f}  {h.get('scene_name') or '-'!s:<12} "
                     f"{h.get('channel') or '-'!s:<16} {h.get('location') or '-'!s:<24} "
                     f"{h.get('time') or '-'!s:<23}  {h.get('id'):<19}  {h.get('path')}")
    return "\n".join(lines)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, bytes):
        return None
    return v


def hits_json(query: dict[str, Any], k: int, meta: dict[str, Any], hits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON object ``job search --json`` prints."""
    clean = [{key: _json_safe(v) for key, v in h.items()} for h in hits]
    return {"query": query, "k": k, "index": meta.get("factory"), "search_params": meta.get("search_params"),
            "hits": clean}
