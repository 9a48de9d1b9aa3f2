"""Exact nearest neighbours by inner product (cosine on unit vectors): the one exact search of the job — recall truth
for the index, the notebook's neighbours, curation's graph. Faiss brute force in blocks on the CPU, torch on CUDA."""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ._faiss import load_faiss


def single_threaded_blas() -> Any:
    """BLAS on one thread while training: k-means calls thousands of small GEMMs, and OpenBLAS's own
    OpenMP team on top of faiss's made PQ training ~60x slower on a busy 2-core machine (see the benchmark)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def cuda_torch() -> Any:
    """torch, when a CUDA device is present; else None."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return torch if torch.cuda.is_available() else None


def _topk_torch(torch: Any, xq: Any, xb: Any, k: int, block: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of ``xq`` against ``xb`` (torch tensors), database in blocks."""
    best_s = best_i = None
    for s in range(0, xb.shape[0], block):
        sims = xq @ xb[s:s + block].T
        kk = min(k, sims.shape[1])
        v, i = torch.topk(sims, kk, dim=1)
        i = i + s
        if best_s is None:
            best_s, best_i = v, i
        else:
            cat_s, cat_i = torch.cat([best_s, v], 1), torch.cat([best_i, i], 1)
            best_s, pos = torch.topk(cat_s, min(k, cat_s.shape[1]), dim=1)
            best_i = torch.gather(cat_i, 1, pos)
    assert best_s is not None and best_i is not None
    return best_i.cpu().numpy().astype(np.int64), best_s.float().cpu().numpy()


def exact_search(xq: np.ndarray, x: np.ndarray, k: int, *, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines) of the exact top-k of each query among ``x``: torch on CUDA when present (``device='auto'``;
    ``'torch'`` forces the torch path on whatever device, for tests), else Faiss flat inner product."""
    torch = cuda_torch() if device in ("auto", "cuda") else None
    if device == "torch":
        import torch as torch_mod

        torch = torch_mod
    if torch is not None:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        xb = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
        return _topk_torch(torch, torch.from_numpy(np.ascontiguousarray(xq)).to(dev), xb, k)
    faiss = load_faiss()
    with single_threaded_blas():  # faiss threads over the query blocks; BLAS threads on top cost 25-60 % here
        sims, rows = faiss.knn(np.ascontiguousarray(xq, dtype=np.float32), x, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows.astype(np.int64), sims


def drop_self(rows: np.ndarray, sims: np.ndarray, self_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores): the first k entries per query that are not the query itself (in-index queries; with identical
    vectors the query need not come first); -1 rows score NaN."""
    is_self = rows == self_rows[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")  # self (if present) moves last, others keep their order
    rows = np.take_along_axis(rows, order, axis=1)[:, :k]
    sims = np.take_along_axis(sims, order, axis=1)[:, :k].astype(np.float32)
    sims[rows < 0] = np.nan
    return rows, sims
