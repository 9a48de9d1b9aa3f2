"""Filtered search: the top-k among a set of ids (a metadata filter's matches), restricted inside Faiss.

Two ways, chosen per index and per query from how selective the filter is (``bench/filter_bench.py``,
docs/benchmarks.md):

* ``scan``: an exact scan of only the matching vectors in the index's own full-precision (or re-ranking) codes
  (``IndexFlat`` itself, HNSW's flat storage, IVF-PQ's ``Refine`` codes), with a bitmap ``IDSelector``. Its cost
  is one bit test per vector plus one dot product per match, and it is exact. Flat and HNSW indexes always
  scan: HNSW's graph search with a selector lost most of its recall when the filter keeps whole scenes or
  cameras (recall@10 0.39-0.52 at 200k), while the scan of 200k vectors stays within tens of milliseconds.
* ``index``: the index's own search with the same selector in its ``SearchParameters``, the coverage parameter
  raised by the inverse selectivity (``nprobe/s`` lists for IVF, ``efSearch/s`` for HNSW) so that about as many
  matching candidates are scored as without a filter. IVF indexes use it for filters keeping more than
  ``SCAN_MAX_SELECTIVITY`` of the vectors.

Either way k hits come back whenever k ids match: an index search that returns fewer falls back to the scan
(or to all inverted lists when the index keeps no full codes).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from ._faiss import load_faiss

log = logging.getLogger(__name__)

# IVF indexes answer filters keeping at most this share of the vectors by the exact scan of their re-ranking codes,
# broader ones by IVF search with the selector (bench/filter_bench.py, docs/benchmarks.md).
SCAN_MAX_SELECTIVITY = 0.10
EF_SEARCH_MAX = 4096  # HNSW beam cap under a filter (beyond, the scan is cheaper anyway)


@dataclass
class FilteredResult:
    """Scores and ids (best first, -1 padded) and how they were found."""

    scores: np.ndarray
    ids: np.ndarray
    method: str


def _scan_codes(inner: Any) -> Any | None:
    """A flat-like index over the same internal ids and space as ``inner`` (for the exact scan), if it has one."""
    faiss = load_faiss()
    if isinstance(inner, (faiss.IndexFlat, faiss.IndexScalarQuantizer)):
        return inner
    if isinstance(inner, faiss.IndexHNSW):
        storage = faiss.downcast_index(inner.storage)
        return storage if isinstance(storage, (faiss.IndexFlat, faiss.IndexScalarQuantizer)) else None
    if isinstance(inner, faiss.IndexRefine):
        refine = faiss.downcast_index(inner.refine_index)
        return refine if isinstance(refine, (faiss.IndexFlat, faiss.IndexScalarQuantizer)) else None
    return None


class FilteredSearch:
    """Search one index restricted to given ids (``search``); built once per index (it reads the id map)."""

    def __init__(self, index: Any) -> None:
        faiss = load_faiss()
        self.index = index
        top = faiss.downcast_index(index)
        self.n = int(index.ntotal)
        self._id_map: np.ndarray | None = None
        if isinstance(top, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            # below an IDMap the vectors have internal ids 0..n-1: select them with a bitmap, map hits back
            self.inner = faiss.downcast_index(top.index)
            self._id_map = faiss.vector_to_array(top.id_map).astype(np.int64)
            self._order = np.argsort(self._id_map, kind="stable")
            self._sorted = self._id_map[self._order]
        else:
            self.inner = top  # IVF with its own ids: select them by value
        self.scan_codes = _scan_codes(self.inner)
        self.always_scan = isinstance(self.inner, (faiss.IndexFlat, faiss.IndexHNSW))

    # ------------------------------------------------------------------------------------------- selectors
    def _selector(self, ids: np.ndarray) -> tuple[Any, list[Any]]:
        """An IDSelector over ``ids`` in the ids the inner index stores, and the arrays it points into."""
        faiss = load_faiss()
        if self._id_map is None:
            arr = np.ascontiguousarray(ids, np.int64)
            return faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr)), [arr]
        pos = np.searchsorted(self._sorted, ids)
        pos = np.clip(pos, 0, max(0, self.n - 1))
        found = self._sorted[pos] == ids if self.n else np.zeros(len(ids), bool)
        mask = np.zeros(self.n, bool)
        mask[self._order[pos[found]]] = True
        bits = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits)), [bits]

    def _to_ids(self, labels: np.ndarray) -> np.ndarray:
        if self._id_map is None:
            return labels
        return np.where(labels >= 0, self._id_map[np.clip(labels, 0, None)], -1)

    # ------------------------------------------------------------------------------------------- params
    def _params(self, ix: Any, sel: Any, base: dict[str, int], s: float, k: int, keep: list[Any],
                exhaustive: bool) -> Any:
        """SearchParameters for ``ix`` (and what it wraps) carrying ``sel``, coverage raised by 1/s."""
        faiss = load_faiss()
        ix = faiss.downcast_index(ix)
        if isinstance(ix, faiss.IndexIVF):
            nprobe = int(ix.nlist) if exhaustive else min(int(ix.nlist), math.ceil(base.get("nprobe", ix.nprobe) / s))
            p: Any = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        elif isinstance(ix, faiss.IndexHNSW):
            ef = min(EF_SEARCH_MAX, math.ceil(max(base.get("efSearch", ix.hnsw.efSearch), k) / s))
            p = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        elif isinstance(ix, faiss.IndexRefine):
            inner = self._params(ix.base_index, sel, base, s, k, keep, exhaustive)
            p = faiss.IndexRefineSearchParameters(k_factor=float(base.get("k_factor", ix.k_factor)),
                                                  base_index_params=inner)
        elif isinstance(ix, faiss.IndexPreTransform):
            inner = self._params(ix.index, sel, base, s, k, keep, exhaustive)
            p = faiss.SearchParametersPreTransform(index_params=inner)
        elif isinstance(ix, (faiss.IndexFlat, faiss.IndexScalarQuantizer)):
            p = faiss.SearchParameters(sel=sel)
        else:
            raise UsageError(f"filters are not supported on a {type(ix).__name__} index; rebuild it with "
                             "python -m job index --type flat, hnsw or ivfpq")
        keep.append(p)
        return p

    # ------------------------------------------------------------------------------------------- search
    def search(self, xq: np.ndarray, k: int, ids: np.ndarray, params: dict[str, int] | None = None,
               *, method: str = "auto") -> FilteredResult:
        """Top-``k`` of the (1, d) query ``xq`` among ``ids`` (sorted int64); ``method``: auto, scan or index."""
        m = len(ids)
        kk = min(k, m)
        if kk == 0:
            return FilteredResult(np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64), "empty")
        s = max(m / max(self.n, 1), 1e-9)
        if method == "auto":
            scan = self.always_scan or s <= SCAN_MAX_SELECTIVITY
            method = "scan" if self.scan_codes is not None and scan else "index"
        sel, keep = self._selector(ids)
        if method == "scan":
            if self.scan_codes is None:
                raise UsageError(f"this {type(self.inner).__name__} index keeps no full codes to scan")
            scores, labels = self.scan_codes.search(xq, kk, params=faiss_params(sel, keep))
        else:
            p = self._params(self.inner, sel, params or {}, s, k, keep, exhaustive=False)
            scores, labels = self.inner.search(xq, kk, params=p)
            if (labels < 0).any():  # the beam / lists held fewer than k matches: search every match
                log.debug("filtered index search found fewer than %d of %d matches; scanning", kk, m)
                method = "scan" if self.scan_codes is not None else "index (all lists)"
                if self.scan_codes is not None:
                    scores, labels = self.scan_codes.search(xq, kk, params=faiss_params(sel, keep))
                else:
                    p = self._params(self.inner, sel, params or {}, s, k, keep, exhaustive=True)
                    scores, labels = self.inner.search(xq, kk, params=p)
        return FilteredResult(scores, self._to_ids(labels), method)


def faiss_params(sel: Any, keep: list[Any]) -> Any:
    """Plain SearchParameters carrying ``sel`` (kept alive in ``keep``)."""
    p = load_faiss().SearchParameters(sel=sel)
    keep.append(p)
    return p
