"""Where Faiss runs: the GPU when ``faiss.get_num_gpus() > 0`` and ``--device`` allows it, else the CPU.

``--device`` (``job index``, ``job run``, ``job curate``): ``cpu`` never touches the GPU; ``cuda`` requires one (no
GPU visible to Faiss is a usage error, exit 2); ``auto`` uses it when present. The one ``faiss-gpu`` wheel of the
lock is both: without a GPU (or a driver) it is the CPU library and ``get_num_gpus()`` is 0.

A :class:`Placement` belongs to one job (an index build, an exact search, a k-NN graph): it records where each step
ran (``steps``), why a step stayed on the CPU (``notes``), and the fallbacks. The first GPU failure of a job logs
one warning, is recorded, and every later step of that job runs on the CPU (the step that failed is redone there).
Tested on the CPU with fake GPU classes (tests/test_index_gpu.py); the real CUDA checks are the tests marked ``gpu``.
"""
from __future__ import annotations

import logging
from typing import Any

from ..config import DEVICES
from ..errors import UsageError
from ..values import check_choice
from ._faiss import load_faiss

log = logging.getLogger(__name__)

GPU_DEVICE = 0  # one GPU per job: the cloud instance (g6e) has one
GPU_MAX_K = 2048  # Faiss' GPU k-selection handles k <= 2048 (GPU_MAX_SELECTION_K); deeper searches run on the CPU
# GpuIndexIVFPQ (classic layout) takes 8-bit codes and these sub-quantizer counts only (faiss/gpu/impl/IVFPQ.cu);
# 56, 64 and 96 need float16 lookup tables, which the clone asks for (GpuClonerOptions.useFloat16).
GPU_PQ_M = frozenset({1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96})

_resources: Any = None


def gpu_count() -> int:
    """GPUs Faiss can use (0 without the GPU build, a driver or a device)."""
    faiss = load_faiss()
    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except RuntimeError:  # pragma: no cover - a broken driver reads as no GPU
        return 0


def gpu_resources() -> Any:
    """The process's ``StandardGpuResources`` (CUDA context, cuBLAS handle, scratch memory), made once: every GPU job
    of the process shares it, so only the first pays for it."""
    global _resources
    if _resources is None:
        _resources = load_faiss().StandardGpuResources()
    return _resources


def _why(exc: BaseException) -> str:
    """``RuntimeError: <what failed>``; Faiss' "Error in <function> at <file>: Error: <what>" keeps the what."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    text = text.rsplit("Error: ", 1)[-1][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Placement:
    """Where the steps of one job run. ``device``: auto | cpu | cuda (see the module docstring)."""

    def __init__(self, device: str = "auto", *, what: str = "faiss") -> None:
        check_choice("device", device, DEVICES)
        self.requested = device
        self.what = what
        gpus = 0 if device == "cpu" else gpu_count()
        if device == "cuda" and gpus == 0:
            raise UsageError("--device cuda, but Faiss sees no GPU (faiss.get_num_gpus() == 0: no device, no driver, "
                             "or not the faiss-gpu build); use --device auto or cpu")
        self.gpu = gpus > 0
        self.steps: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self.fallbacks: list[str] = []

    @property
    def gpu_name(self) -> str:
        return f"gpu:{GPU_DEVICE}"

    def ran(self, step: str, on_gpu: bool, note: str | None = None) -> None:
        """Record that ``step`` ran on the GPU or the CPU (``note``: why the CPU, when the GPU was allowed)."""
        self.steps[step] = self.gpu_name if on_gpu else "cpu"
        if note and self.gpu and not on_gpu:
            self.notes[step] = note

    def failed(self, step: str, exc: BaseException) -> None:
        """A GPU step raised: warn (the first time only), record it, and keep this job on the CPU from here on."""
        note = f"{step} failed on the GPU ({_why(exc)}); done on the CPU"
        if not self.fallbacks:
            log.warning("%s: %s (the rest of this job runs on the CPU too)", self.what, note)
        else:
            log.info("%s: %s", self.what, note)
        self.fallbacks.append(note)
        self.gpu = False

    def summary(self) -> str:
        """``gpu:0 (train, add); cpu (truth, tune)``: each device with the steps it ran, in order of first use."""
        by: dict[str, list[str]] = {}
        for step, where in self.steps.items():
            by.setdefault(where, []).append(step)
        return "; ".join(f"{where} ({', '.join(steps)})" for where, steps in by.items()) or "cpu"
