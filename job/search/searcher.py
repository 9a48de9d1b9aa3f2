"""Search stage: top-k neighbours of an image, a text or an indexed id, with nuScenes metadata per hit.

``Searcher.open(run)`` loads a run's index (``OUTDIR/index/index.faiss``), checks that it matches the
run's embeddings, and answers queries by vector, id, text or image; text and image queries load the
run's own model (from ``manifest.json``) and refuse other weights.

Two vector spaces: image and id queries search ``embedding`` (the pooled image vectors); text queries search
the vectors the text tower was trained against, the model's trained output (CLIP's CLS token, SigLIP's attention
pool: ``embedding_trained`` of a ``--pool mean`` run — ``embedding_cls`` in older runs —, indexed in
``index/text.faiss``; ``embedding`` itself with ``--pool cls``/``map``). Every query takes an SQL
``where`` over the metadata columns (``job.search.filters``); the search is then restricted inside Faiss
(``job.index.filtered``), so k hits come back whenever k rows match.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .. import fsutil
from ..errors import DataError, NotFound, UsageError
from ..index import RECALL_K, ids_digest, load_index, set_search_params
from ..runfolder import (
    VECTOR_COLUMNS,
    IndexInfo,
    Manifest,
    RunLayout,
    embedding_matrix,
    find_manifest,
    index_info_url,
    open_run,
    read_index_info,
    trained_column,
)
from .hits import make_hits

log = logging.getLogger(__name__)

SHOWN_COLUMNS = ("scene_name", "channel", "location", "timestamp")


@dataclass
class Space:
    """One searchable vector space of a run: its index, search parameters, and what it holds."""

    index: Any
    params: dict[str, int]
    column: str  # the embeddings column the vectors came from
    source: str  # the index file, or how the space was made
    meta: IndexInfo | None = None
    _filtered: Any = None

    def filtered(self) -> Any:
        """The index's FilteredSearch (made on first use: it reads the id map)."""
        if self._filtered is None:
            from ..index.filtered import FilteredSearch

            self._filtered = FilteredSearch(self.index)
        return self._filtered


class Searcher:
    """An index, the metadata of every vector in it, and (lazily) the model and the text-query space."""

    def __init__(self, index: Any, meta: IndexInfo, table: pa.Table, *, emb_url: str,
                 manifest: Manifest | None, device: str | None = None, text_index_url: str | None = None,
                 search_params: str | None = None) -> None:
        self.index = index
        self.meta = meta
        self.table = table  # metadata columns (no vectors), one row per vector
        self.emb_url = emb_url
        self.manifest = manifest
        self.device = device
        self.d = int(index.d)
        ids = table.column("id").to_numpy().astype(np.int64, copy=False)
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        self._lm: Any = None
        self._filter: Any = None
        self._text: Space | None = None
        self._text_index_url = text_index_url
        self._search_params = search_params
        self.image = Space(index, _current(index), "embedding", meta.index or "index", meta)

    # ------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, run: str | None = None, *, index: str | None = None, embeddings: str | None = None,
             device: str | None = None, search_params: str | None = None) -> Searcher:
        """Open a run folder (local or ``s3://``), or an index file whose ``.json`` names its embeddings."""
        manifest: Manifest | None = None
        text_url = None
        if run:
            ref = open_run(run)
            manifest = ref.manifest
            text_url = None if index else ref.layout.text_index
            index = index or ref.layout.index
            embeddings = embeddings or ref.layout.embeddings
        if not index:
            raise UsageError("give --run OUTDIR, or --index FILE (its .json names the embeddings)")
        murl = index_info_url(index)
        if not fsutil.exists(murl):
            hint = f"python -m job index --run {run}" if run else "python -m job index"
            raise UsageError(f"no index at {index} (missing {murl}); build it with: {hint}")
        meta = read_index_info(index)
        emb_layout = RunLayout.locate(embeddings or meta.embeddings or "")
        embeddings = emb_layout.embeddings
        if manifest is None:
            manifest = find_manifest(emb_layout)
        idx = load_index(index)
        from ..index import open_dataset

        dataset = open_dataset(embeddings)
        table = dataset.to_table(columns=[c for c in dataset.schema.names if c not in VECTOR_COLUMNS])
        if "id" not in table.column_names:
            raise UsageError(f"{embeddings} has no id column; it is not an embeddings table")
        _check_match(idx, meta, table, index, embeddings)
        _apply_params(idx, search_params or meta.search_params)
        return cls(idx, meta, table, emb_url=embeddings, manifest=manifest, device=device, text_index_url=text_url,
                   search_params=search_params)

    # ------------------------------------------------------------------------------------- spaces
    def text_space(self) -> Space:
        """Where text queries search: the text index, else an exact search over the trained outputs, else the image
        index."""
        if self._text is None:
            self._text = self._open_text_space()
        return self._text

    def _open_text_space(self) -> Space:
        url = self._text_index_url
        if url and fsutil.exists(index_info_url(url)) and fsutil.exists(url):
            meta = read_index_info(url)
            idx = load_index(url)
            _check_match(idx, meta, self.table, url, self.emb_url)
            _apply_params(idx, self._search_params or meta.search_params)
            column = meta.column or trained_column(_schema_names(self.emb_url)) or "embedding"
            return Space(idx, _current(idx), column, url, meta)
        stored = trained_column(_schema_names(self.emb_url))
        if stored is not None:
            column = stored
            from ..index import load_vectors
            from ..index._faiss import load_faiss

            faiss = load_faiss()
            log.info("no text index beside the image index: text queries search %s exactly", column)
            x, ids = load_vectors(self.emb_url, column=column)
            flat = faiss.IndexIDMap(faiss.IndexFlatIP(x.shape[1]))
            flat.add_with_ids(x, ids)
            return Space(flat, {}, column, f"exact search over {column}",
                         IndexInfo(index="", column=column, factory="IDMap,Flat", n=len(ids), d=x.shape[1]))
        if self.manifest is not None and self.manifest.model.pool == "mean":
            log.warning("this run has no trained-output column (no embedding_trained: made before it existed, or "
                        "with --text-vectors none): text queries search the mean-pooled image vectors, which the "
                        "text tower was not trained against")
        return self.image

    # ------------------------------------------------------------------------------------- filters
    def columns(self) -> list[str]:
        """The metadata columns a ``where`` can use (stored and derived)."""
        return list(self.meta_filter().columns)

    def meta_filter(self) -> Any:
        """The run's ``filters.MetaFilter`` (DuckDB over the metadata; made on first use)."""
        if self._filter is None:
            from .filters import MetaFilter

            self._filter = MetaFilter(self.table)
        return self._filter

    def matching(self, where: str) -> np.ndarray:
        """Sorted ids of the rows matching ``where`` (SQL over the metadata; UsageError naming the columns)."""
        return self.meta_filter().ids(where)

    # ------------------------------------------------------------------------------------- queries
    def by_vector(self, q: np.ndarray, k: int = 10, *, where: str | None = None,
                  space: Space | None = None) -> list[dict[str, Any]]:
        """Top-k hits of one query vector (normalised here), best first, among the rows matching ``where``."""
        return self.by_vectors(np.asarray(q, np.float32).reshape(1, -1), k, where=where, space=space)[0]

    def by_vectors(self, qs: np.ndarray, k: int = 10, *, where: str | None = None,
                   space: Space | None = None) -> list[list[dict[str, Any]]]:
        """Top-k hits for each row of ``qs`` (in the image space unless ``space`` says otherwise)."""
        space = space or self.image
        qs = np.ascontiguousarray(np.asarray(qs, np.float32).reshape(len(qs), -1))
        if qs.shape[1] != self.d:
            raise UsageError(f"query vectors have dimension {qs.shape[1]}, the index holds {self.d}-d vectors")
        self._check_k(k)
        if not np.isfinite(qs).all():
            raise UsageError("query vector contains NaN or inf")
        norms = np.linalg.norm(qs, axis=1, keepdims=True)
        if (norms == 0).any():
            raise UsageError("query vector is all zeros")
        qs = qs / norms
        if where is not None:
            ids = self.matching(where)
            # The search parameters were tuned for top-10 (re-ranking depth scales with k): never ask for less.
            res = space.filtered().search(qs, max(k, RECALL_K), ids, space.params)
            scores, labels = res.scores, res.ids
        else:
            scores, labels = space.index.search(qs, min(max(k, RECALL_K), space.index.ntotal))
        return [self._hits(s[:k], lab[:k]) for s, lab in zip(scores, labels)]

    def by_id(self, id_: int, k: int = 10, *, where: str | None = None) -> list[dict[str, Any]]:
        """Top-k neighbours of an indexed image (the image itself comes first when it matches ``where``)."""
        self._check_k(k)
        return self.by_vector(self.vector(id_), k, where=where)

    def by_text(self, text: str, k: int = 10, *, where: str | None = None) -> list[dict[str, Any]]:
        """Top-k images for a text query, embedded with the run's own text tower, in the text-query space."""
        from ..model.load import encode_text

        if not text.strip():
            raise UsageError("--text is empty")
        self._check_k(k)
        lm = self.model()
        return self.by_vector(encode_text(lm, [text])[0], k, where=where, space=self.text_space())

    def by_image(self, image: str | bytes, k: int = 10, *, where: str | None = None) -> list[dict[str, Any]]:
        """Top-k images for an image file (local path, URL, or bytes), preprocessed as the run did."""
        from ..decode import DecodeError, decode_image
        from ..model.load import ImageEncoder

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
        return self.by_vector(ImageEncoder(lm)(arr[None].copy())[0], k, where=where)

    # ------------------------------------------------------------------------------------- helpers
    def row_of(self, id_: int) -> int:
        """Row number of ``id_`` in the embeddings table."""
        pos = int(np.searchsorted(self._sorted_ids, id_))
        if pos >= len(self._sorted_ids) or self._sorted_ids[pos] != id_:
            raise NotFound(f"id {id_} is not in {self.emb_url}")
        return int(self._order[pos])

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of many ids at once (-1 for an id that is not in the embeddings)."""
        ids = np.asarray(ids, np.int64)
        pos = np.clip(np.searchsorted(self._sorted_ids, ids), 0, max(0, len(self._sorted_ids) - 1))
        found = self._sorted_ids[pos] == ids if len(self._sorted_ids) else np.zeros(len(ids), bool)
        return np.where(found, self._order[pos], -1)

    def vector(self, id_: int, column: str = "embedding") -> np.ndarray:
        """The stored vector of ``id_`` (reads only the matching row of ``column``)."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        self.row_of(id_)
        fs, path = fsutil.url_to_fs(self.emb_url)
        t = ds.dataset(path, filesystem=fs, format="parquet").to_table(
            columns=[column], filter=pc.field("id") == pa.scalar(int(id_), pa.int64()))
        return embedding_matrix(t, column)[0]

    def model(self) -> Any:
        """The run's model (loaded once through ``model.load_run_model``, with its checks)."""
        if self._lm is None:
            from ..model.load import load_run_model

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
        return make_hits(scores.tolist(), self.table.take(pa.array(self._order[pos])).to_pylist())


def _current(index: Any) -> dict[str, int]:
    from ..index import current_search_params

    return current_search_params(index)


def _apply_params(index: Any, params: str | None) -> None:
    if params:
        set_search_params(index, params)


def _schema_names(emb_url: str) -> list[str]:
    from ..index import open_dataset

    return list(open_dataset(emb_url).schema.names)


def _check_match(index: Any, meta: IndexInfo, table: pa.Table, index_url: str, emb_url: str) -> None:
    """Refuse an index that was not built from these embeddings."""
    rebuild = f"rebuild it: python -m job index --embeddings {emb_url} --index-out {index_url}"
    n = table.num_rows
    if index.ntotal != n or meta.n not in (0, n):
        raise DataError(f"index {index_url} holds {index.ntotal} vectors but {emb_url} has {n} rows; {rebuild}")
    if meta.d not in (0, index.d):
        raise DataError(f"index {index_url} is {index.d}-d but its .json says {meta.d}; {rebuild}")
    digest = meta.ids_sha256
    if digest and digest != ids_digest(table.column("id").to_numpy()):
        raise DataError(f"index {index_url} was built from other embeddings than {emb_url} (ids differ); {rebuild}")
