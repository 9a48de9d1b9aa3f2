"""Fake Faiss GPU classes for the CPU tests of the GPU branches (job.index._gpu, exact, ivf_gpu, curate.graph).

``install(monkeypatch)`` makes ``faiss.get_num_gpus()`` report one GPU and replaces the GPU classes the job uses
with stand-ins that do the work with CPU Faiss and record every call: ``GpuIndexFlatIP`` keeps its base rounded to
float16 (as ``useFloat16`` stores it), ``index_cpu_to_gpu`` / ``index_gpu_to_cpu`` return real CPU clones (so the
wrappers around an IVF work on them as on a GPU index). ``fail`` names calls that raise, like a GPU fault would.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pytest


@dataclass
class Recorder:
    """Every fake GPU call in order, which of them fail, and the "GPU" indexes made."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # call name -> fail on its n-th occurrence (1 = first)
    upload_delay_s: float = 0.0  # per add call: a slow upload, for the pilot's accounting
    search_delay_s: float = 0.0  # per search call: the GPU busy (the GIL released, as Faiss' calls release it)
    gpu_indexes: list[Any] = field(default_factory=list)

    def hit(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if self.fail.get(name) == self.count(name):
            raise RuntimeError(f"fake GPU failure in {name} (CUDA error 2: out of memory)")

    def count(self, name: str) -> int:
        return sum(1 for c in self.calls if c[0] == name)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def install(monkeypatch: pytest.MonkeyPatch, *, gpus: int = 1, fail: dict[str, int] | None = None,
            upload_delay_s: float = 0.0, search_delay_s: float = 0.0) -> Recorder:
    """Patch the faiss module the job imports; returns the recorder."""
    rec = Recorder(fail=dict(fail or {}), upload_delay_s=upload_delay_s, search_delay_s=search_delay_s)

    class StandardGpuResources:
        def __init__(self) -> None:
            rec.hit("resources")

    class GpuIndexFlatConfig:
        def __init__(self) -> None:
            self.device = -1
            self.useFloat16 = False

    class GpuIndexFlatIP:
        def __init__(self, res: Any, d: int, cfg: GpuIndexFlatConfig) -> None:
            rec.hit("flat_ip", d, cfg.useFloat16, cfg.device)
            self.fp16 = cfg.useFloat16
            self.cpu = faiss.IndexFlatIP(d)

        @property
        def ntotal(self) -> int:
            return int(self.cpu.ntotal)

        def add(self, x: np.ndarray) -> None:
            rec.hit("upload", len(x))
            time.sleep(rec.upload_delay_s)
            self.cpu.add(x.astype(np.float16).astype(np.float32) if self.fp16 else x)

        def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            rec.hit("search", len(xq), k)
            time.sleep(rec.search_delay_s)
            q = xq.astype(np.float16).astype(np.float32) if self.fp16 else xq
            return self.cpu.search(q, k)

        def reset(self) -> None:
            rec.hit("free")
            self.cpu.reset()

    class GpuClonerOptions:
        def __init__(self) -> None:
            self.useFloat16 = False

    def index_cpu_to_gpu(res: Any, device: int, index: Any, co: Any = None) -> Any:
        rec.hit("to_gpu", type(faiss.downcast_index(index)).__name__, device, getattr(co, "useFloat16", None))
        clone = faiss.clone_index(index)  # downcast and owned by its proxy, as the real clone is
        rec.gpu_indexes.append(clone)
        return clone

    def index_gpu_to_cpu(index: Any) -> Any:
        rec.hit("to_cpu", type(faiss.downcast_index(index)).__name__)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: gpus)
    for name, value in [("StandardGpuResources", StandardGpuResources), ("GpuIndexFlatConfig", GpuIndexFlatConfig),
                        ("GpuIndexFlatIP", GpuIndexFlatIP), ("GpuClonerOptions", GpuClonerOptions),
                        ("index_cpu_to_gpu", index_cpu_to_gpu), ("index_gpu_to_cpu", index_gpu_to_cpu)]:
        monkeypatch.setattr(faiss, name, value, raising=False)
    import job.index._gpu as gpu_module

    monkeypatch.setattr(gpu_module, "_resources", None)  # a fresh process: the resources are made on first use
    return rec
