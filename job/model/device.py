"""Which torch device ``--device`` names, checked for real: ``cuda`` means CUDA, and a CUDA device that torch lists but
cannot run a kernel on (a driver too old for the wheel's CUDA, an unsupported GPU) fails here, in seconds, instead of
after the source's tables and the model have loaded — or, worse, the run embedding for hours on the CPU.

``auto`` is CUDA when a usable device is there, else the CPU (with one warning when torch lists a device it cannot use).
"""
from __future__ import annotations

import functools
import logging

import torch

from ..errors import UsageError

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cuda_problem() -> str | None:
    """None when torch can run a kernel on CUDA device 0; else why not (one line)."""
    try:
        if not torch.cuda.is_available():
            return (f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False: no GPU, or "
                    "no driver for it)")
        x = torch.arange(4, device="cuda", dtype=torch.float32)
        if float((x * 2).sum().item()) != 12.0:
            return "a test kernel on CUDA device 0 returned a wrong result"
    except Exception as exc:  # noqa: BLE001 - any CUDA failure means the same: not usable
        text = str(exc).strip().splitlines()
        return f"a test kernel on CUDA failed: {text[0][:200] if text else type(exc).__name__}"
    return None


def pick_device(device: str) -> torch.device:
    """The device for ``--device`` (``auto``, ``cpu``, ``cuda``): ``cuda`` without a usable GPU is a UsageError that
    says why (``tests/test_model.py::test_device_cuda_means_cuda``)."""
    if device == "cpu":
        return torch.device("cpu")
    problem = cuda_problem()
    if device == "cuda":
        if problem is not None:
            raise UsageError(f"--device cuda: {problem}; valid choices here: auto, cpu")
        return torch.device("cuda")
    if problem is not None and torch.cuda.is_available():
        log.warning("CUDA is listed but not usable (%s): running on the CPU", problem)
    return torch.device("cuda" if problem is None else "cpu")
