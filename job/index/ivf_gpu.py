"""IVF training and adding on the GPU: the index's IVF part is cloned to the GPU (``index_cpu_to_gpu``), trained
(coarse k-means and the PQ codebooks) and filled there through the CPU wrappers around it (IDMap, PreTransform,
Refine), then cloned back (``index_gpu_to_cpu``) into the same place: the saved index is a CPU index, readable
without a GPU. Flat and HNSW indexes build on the CPU (Faiss has no GPU HNSW build; CAGRA needs the cuVS build).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from ._faiss import load_faiss
from ._gpu import GPU_DEVICE, GPU_PQ_M, gpu_resources
from .tune import walk_index

log = logging.getLogger(__name__)


def ivf_slot(index: Any) -> tuple[Any, Any, str | None]:
    """(the IVF inside ``index``, the wrapper holding it, the wrapper's attribute) — (ivf, None, None) when the IVF
    is ``index`` itself, (None, None, None) when there is none."""
    faiss = load_faiss()
    parent, attr = None, None
    ix = faiss.downcast_index(index)
    while True:
        if isinstance(ix, faiss.IndexIVF):
            return ix, parent, attr
        if isinstance(ix, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            parent, attr = ix, "index"
        elif isinstance(ix, faiss.IndexRefine):
            parent, attr = ix, "base_index"
        else:
            return None, None, None
        ix = faiss.downcast_index(getattr(parent, attr))


def gpu_unsupported(index: Any) -> str | None:
    """Why this index is built on the CPU even with a GPU (None: its IVF part trains and fills on the GPU)."""
    faiss = load_faiss()
    ivf, _, _ = ivf_slot(index)
    if ivf is None:
        if any(isinstance(ix, faiss.IndexHNSW) for ix in walk_index(index)):
            return "HNSW builds on the CPU (Faiss has no GPU HNSW build)"
        return "no IVF part: nothing to train, adding is a copy"
    if not all(ix.own_fields for ix in walk_index(index) if not isinstance(ix, faiss.IndexIVF)):
        return "a wrapper that does not own its index (not made by the index factory)"
    if isinstance(ivf, faiss.IndexIVFPQ) and type(ivf) is faiss.IndexIVFPQ:
        if ivf.pq.nbits != 8 or ivf.pq.M not in GPU_PQ_M:
            return (f"PQ{ivf.pq.M}x{ivf.pq.nbits}: the GPU IVF-PQ takes 8-bit codes and "
                    f"{', '.join(map(str, sorted(GPU_PQ_M)))} sub-quantizers")
        return None
    if type(ivf) in (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer):
        return None
    return f"{type(ivf).__name__} has no GPU version in Faiss"


def build_on_gpu(index: Any, work: Callable[[Any], None]) -> Any:
    """Run ``work(index)`` (train, add) with the IVF part of ``index`` on the GPU; returns the CPU index to keep
    (``index`` itself, its IVF part replaced by the trained, filled CPU clone; or the clone when ``index`` is the
    IVF). On an exception the original CPU IVF is put back and the exception raised: the caller rebuilds on the CPU.
    """
    faiss = load_faiss()
    ivf, parent, attr = ivf_slot(index)
    co = faiss.GpuClonerOptions()
    co.useFloat16 = True  # float16 PQ lookup tables: the GPU IVF-PQ refuses 56-96 sub-quantizers without them
    gpu = faiss.index_cpu_to_gpu(gpu_resources(), GPU_DEVICE, ivf, co)
    cp = ivf.cp  # the clone does not carry the k-means parameters (niter, seed, points per centroid)
    gpu.cp.niter, gpu.cp.seed, gpu.cp.max_points_per_centroid = cp.niter, cp.seed, cp.max_points_per_centroid
    if parent is None or attr is None:
        work(gpu)
        return faiss.index_gpu_to_cpu(gpu)
    # The wrapper owns its IVF (gpu_unsupported checked it). While the GPU index sits in the wrapper, the wrapper must
    # not delete it: ownership off, the untrained CPU IVF handed to Python, and back once the CPU clone is in place.
    parent.own_fields = False
    original = faiss.downcast_index(getattr(parent, attr))
    original.thisown = True
    setattr(parent, attr, gpu)
    try:
        work(index)
        cpu = faiss.index_gpu_to_cpu(gpu)
    except BaseException:
        setattr(parent, attr, original)
        original.thisown = False
        parent.own_fields = True
        raise
    setattr(parent, attr, cpu)
    cpu.thisown = False
    parent.own_fields = True
    return index
