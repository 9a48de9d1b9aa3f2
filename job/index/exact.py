"""Exact nearest neighbours by inner product (cosine on unit vectors): the one exact search of the job — recall truth
for the index, the notebook's neighbours, curation's graph. Faiss brute force: on the GPU (base uploaded once as
float16, queries in tiles, candidates re-scored in float32) when :mod:`job.index._gpu` allows it, else on the CPU."""
from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ._faiss import load_faiss
from ._gpu import GPU_DEVICE, GPU_MAX_K, Placement, gpu_resources

log = logging.getLogger(__name__)

GPU_QUERY_TILE = 16_384  # queries per GPU search call (results: tile x (k + extra)); Faiss tiles the base inside
GPU_ADD_CHUNK = 262_144  # rows uploaded per add (a float32 staging copy of ~0.8 GB at d=768 before fp16 conversion)
# The float16 base finds k + RESCORE_EXTRA candidates; their cosines are recomputed in float32 on the CPU and the best
# k kept, so the cosines returned are exact and a neighbour is lost only if fp16 rounding (~1e-3 of a cosine at
# most at d=768) moved it past RESCORE_EXTRA others (tests/test_index_gpu.py: fake fp16 base, exact cosines back).
RESCORE_EXTRA = 8
WARMUP_QUERIES = 8  # a first search in setup: kernel loading and scratch allocation are one-time, not per query


def single_threaded_blas() -> Any:
    """BLAS on one thread while training: k-means calls thousands of small GEMMs, and OpenBLAS's own
    OpenMP team on top of faiss's made PQ training ~60x slower on a busy 2-core machine (see the benchmark)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _cpu_knn(xq: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    faiss = load_faiss()
    with single_threaded_blas():  # faiss threads over the query blocks; BLAS threads on top cost 25-60 % here
        sims, rows = faiss.knn(np.ascontiguousarray(xq, dtype=np.float32), x, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows.astype(np.int64), sims


def rescore(xq: np.ndarray, x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of the candidate ``rows`` (nq, c) of each query by float32 inner product, best first."""
    sims = np.full(rows.shape, -np.inf, np.float32)
    for j in range(rows.shape[1]):  # a column at a time: one (nq, d) gather, never (nq, c, d)
        col = rows[:, j]
        if (col >= 0).all():
            sims[:, j] = np.einsum("ij,ij->i", xq, x[col])
        else:
            ok = col >= 0
            sims[ok, j] = np.einsum("ij,ij->i", xq[ok], x[col[ok]])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(sims, order, axis=1)


class ExactSearcher:
    """Exact top-k of any queries among a fixed base ``x`` (n, d) float32 unit vectors, for one job.

    On the GPU the base is uploaded once, as float16 (``GpuIndexFlatConfig.useFloat16``: half the memory and
    traffic, 2.1 GiB at 1.4M x 768), into a ``GpuIndexFlatIP`` that every :meth:`search` reuses; queries go in
    tiles of ``GPU_QUERY_TILE``, and the float32 re-scoring of a tile's candidates on the CPU overlaps the next tile's
    GPU search. ``setup_s`` is the one-time cost (resources, upload, a warm-up search), kept apart from the per-query
    cost so a pilot can extrapolate the second alone. A GPU failure (at upload or in any tile) falls back to the CPU
    with one warning (``placement``), redoing the failed tile. Use as a context manager (frees the GPU copy).
    Shown on the CPU with fake GPU classes in tests/test_index_gpu.py (one upload, tiles, exact cosines, overlap,
    fallbacks); on a real GPU by its tests marked ``gpu``.
    """

    def __init__(self, x: np.ndarray, *, device: str = "auto", placement: Placement | None = None,
                 step: str = "exact") -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.placement = placement if placement is not None else Placement(device, what="exact search")
        self.step = step
        self._index: Any = None
        t0 = time.perf_counter()
        if self.placement.gpu:
            try:
                self._index = self._upload()
                self._gpu_search(self.x[:WARMUP_QUERIES], min(1, len(self.x)))
            except Exception as exc:  # noqa: BLE001 - any GPU failure: the CPU does the work
                self._index = None
                self.placement.failed(step, exc)
        self.setup_s = time.perf_counter() - t0
        self.placement.ran(step, self.on_gpu)

    @property
    def on_gpu(self) -> bool:
        return self._index is not None

    @property
    def device(self) -> str:
        """Where the searches run now: ``gpu:0`` or ``cpu``."""
        return self.placement.gpu_name if self.on_gpu else "cpu"

    def _upload(self) -> Any:
        faiss = load_faiss()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = GPU_DEVICE
        cfg.useFloat16 = True
        index = faiss.GpuIndexFlatIP(gpu_resources(), self.x.shape[1], cfg)
        for s in range(0, len(self.x), GPU_ADD_CHUNK):
            index.add(self.x[s:s + GPU_ADD_CHUNK])
        log.debug("exact search: %d x %d uploaded to the GPU as float16", *self.x.shape)
        return index

    def _gpu_search(self, xq: np.ndarray, kk: int) -> np.ndarray:
        _, rows = self._index.search(np.ascontiguousarray(xq, dtype=np.float32), kk)
        return rows.astype(np.int64)

    def _fall(self, exc: BaseException) -> None:
        self.placement.failed(self.step, exc)
        self.placement.ran(self.step, False)
        self.close()

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosines) of the exact top-``k`` of each query among the base, best first (k <= n)."""
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        n = len(self.x)
        k = min(k, n)
        kk = min(n, k + RESCORE_EXTRA)
        if not self.on_gpu or kk > GPU_MAX_K or len(xq) == 0:
            if self.on_gpu and kk > GPU_MAX_K:
                log.info("exact search: k=%d is beyond the GPU's k-selection (%d); this search runs on the CPU", k,
                         GPU_MAX_K)
            return _cpu_knn(xq, self.x, k)
        out_rows = np.empty((len(xq), k), np.int64)
        out_sims = np.empty((len(xq), k), np.float32)
        pending: Future[None] | None = None

        def finish(s: int, e: int, cand: np.ndarray) -> None:
            out_rows[s:e], out_sims[s:e] = rescore(xq[s:e], self.x, cand, k)

        with ThreadPoolExecutor(1) as pool:  # re-scoring tile i on the CPU while the GPU searches tile i + 1
            s = 0
            while s < len(xq):
                e = min(len(xq), s + GPU_QUERY_TILE)
                if not self.on_gpu:
                    out_rows[s:], out_sims[s:] = _cpu_knn(xq[s:], self.x, k)
                    break
                try:
                    cand = self._gpu_search(xq[s:e], kk)
                except Exception as exc:  # noqa: BLE001 - this tile and the rest on the CPU
                    self._fall(exc)
                    continue
                if pending is not None:
                    pending.result()
                pending = pool.submit(finish, s, e, cand)
                s = e
            if pending is not None:
                pending.result()
        return out_rows, out_sims

    def close(self) -> None:
        """Free the GPU copy of the base (idempotent)."""
        if self._index is not None:
            with contextlib.suppress(Exception):
                self._index.reset()
            self._index = None

    def __enter__(self) -> ExactSearcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exact_search(xq: np.ndarray, x: np.ndarray, k: int, *, device: str = "auto", placement: Placement | None = None,
                 step: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines) of the exact top-k of each query among ``x``: one :class:`ExactSearcher` for this call alone
    (searching ``x`` more than once? keep an ExactSearcher: the GPU upload is paid once). ``device``: auto | cpu |
    cuda (:mod:`job.index._gpu`), or ``placement``: the job's own (then ``device`` is not read); ``step``: the name
    the placement records this search under."""
    with ExactSearcher(x, device=device, placement=placement, step=step) as searcher:
        return searcher.search(xq, k)


def drop_self(rows: np.ndarray, sims: np.ndarray, self_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores): the first k entries per query that are not the query itself (in-index queries; with identical
    vectors the query need not come first); -1 rows score NaN."""
    is_self = rows == self_rows[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")  # self (if present) moves last, others keep their order
    rows = np.take_along_axis(rows, order, axis=1)[:, :k]
    sims = np.take_along_axis(sims, order, axis=1)[:, :k].astype(np.float32)
    rows = np.where(rows == self_rows[:, None], -1, rows)  # fewer than k others: self must not stay in the last place
    sims[rows < 0] = np.nan
    return rows, sims
