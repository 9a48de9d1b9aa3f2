"""Filtered search: the top-k among a set of ids (a metadata filter's matches), restricted inside Faiss.

Three ways; ``auto`` picks by index type and by the share s of vectors the filter keeps (``bench/filter_bench.py``,
docs/benchmarks.md):

* ``scan``: an exact scan of only the matching vectors in the index's own full-precision (or re-ranking) codes
  (``IndexFlat`` itself, HNSW's flat storage, IVF-PQ's ``Refine`` codes), with a bitmap ``IDSelector``: one bit
  test per vector plus one dot product per match. Exact; flat indexes always use it, the others for selective
  filters (when the post-filter below would have to fetch more than ``POST_MAX`` candidates).
* ``post``: the index's ordinary search for ``POST_FACTOR·k/s`` candidates (efSearch / nprobe widened as much),
  kept when they hold k matches; those are then the exact filtered top-k up to the index's own recall. When they do
  not (the filter keeps scenes far from the query), the scan answers instead.
* ``index``: the index's search with the selector in its ``SearchParameters``, the coverage raised by 1/s
  (``nprobe/s`` lists, ``efSearch/s``). Kept for indexes without full codes (IVF-PQ without re-ranking), where it
  falls back to every list; on filters that keep whole scenes or cameras it lost most of its recall in the
  benchmark (HNSW and IVF alike search where the query is, not where the matches are).

Either way k hits come back whenever k ids match.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import UsageError
from ._faiss import load_faiss

log = logging.getLogger(__name__)

POST_FACTOR = 2  # candidates fetched per hit wanted, per share kept: 2·k/s (twice the expected need)
POST_MAX = 512  # beyond this many candidates (filters keeping < ~4% at k=10) the scan is the cheaper, exact way
EF_SEARCH_MAX = 4096  # HNSW beam cap under a filter (``index`` method)


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
        self.always_scan = isinstance(self.inner, faiss.IndexFlat)

    # ------------------------------------------------------------------------------------------- selectors
    def _selector(self, ids: np.ndarray) -> tuple[Any, list[Any], Callable[[np.ndarray], np.ndarray]]:
        """An IDSelector over ``ids`` in the ids the inner index stores, the arrays it points into, and a
        membership test for labels the inner index returns."""
        faiss = load_faiss()
        if self._id_map is None:
            arr = np.ascontiguousarray(ids, np.int64)
            return (faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr)), [arr],
                    lambda labels: np.isin(labels, arr) & (labels >= 0))
        pos = np.searchsorted(self._sorted, ids)
        pos = np.clip(pos, 0, max(0, self.n - 1))
        found = self._sorted[pos] == ids if self.n else np.zeros(len(ids), bool)
        mask = np.zeros(self.n, bool)
        mask[self._order[pos[found]]] = True
        bits = np.packbits(mask, bitorder="little")
        return (faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits)), [bits],
                lambda labels: (labels >= 0) & mask[np.clip(labels, 0, None)])

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
    def _choose(self, s: float, kk: int) -> str:
        if self.always_scan:
            return "scan"
        if math.ceil(POST_FACTOR * kk / s) <= min(POST_MAX, self.n):
            return "post"
        return "scan" if self.scan_codes is not None else "index"

    def _post(self, xq: np.ndarray, kk: int, s: float, params: dict[str, int], keep: list[Any],
              member: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """Ordinary search for 2·k/s candidates, matches kept; None when some query got fewer than k of them.

        The beam / lists grow with the depth asked (efSearch and nprobe times fetch/k): the tuned parameters
        give their recall for the top k, not for the top fetch.
        """
        fetch = min(self.n, max(kk, math.ceil(POST_FACTOR * kk / s)))
        p = self._params(self.inner, None, params, kk / fetch, kk, keep, exhaustive=False)
        scores, labels = self.inner.search(xq, fetch, params=p)
        ok = member(labels)
        out_s = np.full((len(xq), kk), -np.inf, np.float32)
        out_l = np.full((len(xq), kk), -1, np.int64)
        for i in range(len(xq)):
            cols = np.flatnonzero(ok[i])[:kk]
            if len(cols) < kk:
                return None
            out_s[i], out_l[i] = scores[i, cols], labels[i, cols]
        return out_s, out_l

    def search(self, xq: np.ndarray, k: int, ids: np.ndarray, params: dict[str, int] | None = None,
               *, method: str = "auto") -> FilteredResult:
        """Top-``k`` of the (n, d) queries ``xq`` among ``ids`` (sorted int64); ``method``: auto, scan, post, index."""
        m = len(ids)
        kk = min(k, m)
        if kk == 0:
            return FilteredResult(np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64), "empty")
        s = max(m / max(self.n, 1), 1e-9)
        params = params or {}
        method = self._choose(s, kk) if method == "auto" else method
        sel, keep, member = self._selector(ids)
        found = None
        if method == "post":
            found = self._post(xq, kk, s, params, keep, member)
            if found is None:  # the nearest candidates hold too few matches: search all of them
                log.debug("post-filter kept fewer than %d of %d matches; scanning", kk, m)
                method = "post/scan" if self.scan_codes is not None else "post/index"
        elif method == "index":
            p = self._params(self.inner, sel, params, s, k, keep, exhaustive=False)
            found = self.inner.search(xq, kk, params=p)
            if (found[1] < 0).any():  # the beam / lists held fewer than k matches: search every match
                found, method = None, "index/scan" if self.scan_codes is not None else "index/all lists"
        if found is None:
            if method.endswith("scan"):
                if self.scan_codes is None:
                    raise UsageError(f"this {type(self.inner).__name__} index keeps no full codes to scan")
                found = self.scan_codes.search(xq, kk, params=faiss_params(sel, keep))
            else:
                p = self._params(self.inner, sel, params, s, k, keep, exhaustive=True)
                found = self.inner.search(xq, kk, params=p)
        return FilteredResult(found[0], self._to_ids(found[1]), method)


def faiss_params(sel: Any, keep: list[Any]) -> Any:
    """Plain SearchParameters carrying ``sel`` (kept alive in ``keep``)."""
    p = load_faiss().SearchParameters(sel=sel)
    keep.append(p)
    return p
