"""Fast paths fall back instead of ending the run (job/embed/fallback.py): each failure injected on the CPU, on the first
batch and mid-run; the vectors equal the safe path's and the manifest records what ran."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import TEST_MODEL, jpeg_bytes
from job.decode import gpu as decode_gpu
from job.cli import main
from job.decode import DecodePool
from job.decode.gpu import GpuDecoder, GpuDecodeStage, choose_decoder
from job.embed.fallback import FallbackDecodeStage, FallbackEncoder
from job.model.load import ImageEncoder
from job.sources import ImageRecord

QUIET = ["--no-progress", "--log-level", "WARNING", "--image-size", "64", "--batch-size", "4"]


def _images(root: Path, n: int = 14) -> Path:
    for i in range(n):
        (root / "CAM_FRONT").mkdir(parents=True, exist_ok=True)
        (root / "CAM_FRONT" / f"f{i:03d}.jpg").write_bytes(jpeg_bytes(192, 108, seed=i, quality=80))
    return root


def _vectors(out: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(out / "embeddings.parquet", columns=["path", "embedding"])
    return dict(zip(t.column("path").to_pylist(), np.stack(t.column("embedding").to_numpy(zero_copy_only=False))))


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    cos = [float(a[k] @ b[k] / np.linalg.norm(a[k]) / np.linalg.norm(b[k])) for k in a]
    assert min(cos) >= 0.995, min(cos)


@pytest.fixture(scope="module")
def safe_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """The safe path: fp32, eager, CPU decode."""
    root = tmp_path_factory.mktemp("fallback")
    src = _images(root / "src")
    out = root / "safe"
    assert main(["embed", "--image-dir", str(src), "--out", str(out), *TEST_MODEL, *QUIET, "--precision", "fp32"]) == 0
    return src, _vectors(out)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_bf16_that_fails_falls_back_to_fp32(safe_run, tmp_path: Path, monkeypatch, fail_at: int) -> None:
    src, safe = safe_run
    real = ImageEncoder.submit
    calls = {"n": 0}

    def submit(self, batch):
        if self.lm.dtype == torch.bfloat16:
            calls["n"] += 1
            if calls["n"] >= fail_at:
                raise RuntimeError('"gelu" not implemented for \'BFloat16\' (injected)')
        return real(self, batch)

    monkeypatch.setattr(ImageEncoder, "submit", submit)
    out = tmp_path / "out"
    assert main(["embed", "--image-dir", str(src), "--out", str(out), *TEST_MODEL, *QUIET, "--precision", "bf16"]) == 0
    model = json.loads((out / "manifest.json").read_text())["model"]
    assert model["precision"] == "fp32" and not model["compiled"]
    assert len(model["fallbacks"]) == 1 and model["fallbacks"][0].startswith(f"eager bf16 failed at batch {fail_at} ")
    assert "continuing with eager fp32" in model["fallbacks"][0]
    _close(_vectors(out), safe)


class _Enc:
    """A stand-in encoder tier: unit vectors of the batch's mean pixel, or a failure at submit / when collected."""

    def __init__(self, fail: str | None = None, at: int = 1) -> None:
        self.fail, self.at, self.n = fail, at, 0

    def submit(self, batch):
        self.n += 1
        if self.fail == "submit" and self.n >= self.at:
            raise RuntimeError("torch._dynamo: compile error (injected)")
        out = np.asarray(batch, np.float32).reshape(len(batch), -1)[:, :4] + 1.0
        out /= np.linalg.norm(out, axis=1, keepdims=True)

        def wait():
            if self.fail == "fetch" and self.n >= self.at:
                raise RuntimeError("CUDA error: an illegal memory access (injected)")
            return out

        return wait


@pytest.mark.parametrize(("how", "at"), [("submit", 1), ("fetch", 1), ("submit", 3), ("fetch", 2)])
def test_a_compiled_encoder_that_fails_gives_way_to_eager(how: str, at: int) -> None:
    batches = [np.full((2, 2, 2, 3), i, np.uint8) for i in range(5)]
    enc = FallbackEncoder([("compiled bf16", lambda: _Enc(how, at)), ("eager bf16", _Enc), ("eager fp32", _Enc)])
    pending = [enc.submit(b) for b in batches]  # one batch in flight at a time in the loop; all here
    got = [p() for p in pending]
    want = [_Enc().submit(b)() for b in batches]
    assert all(np.allclose(g, w) for g, w in zip(got, want))
    assert enc.ran == "eager bf16" and len(enc.fallbacks) == 1 and enc.fallbacks[0].startswith("compiled bf16 failed")


def test_the_last_tier_fails_for_real() -> None:
    enc = FallbackEncoder([("eager fp32", lambda: _Enc("submit"))])
    with pytest.raises(RuntimeError, match="compile error"):
        enc.submit(np.zeros((1, 2, 2, 3), np.uint8))


def _records(src: Path) -> list[ImageRecord]:
    return [ImageRecord(path=p.name, data=p.read_bytes()) for p in sorted((src / "CAM_FRONT").iterdir())]


@pytest.mark.parametrize("fail_at", [0, 1, 3])  # 0: nvJPEG cannot start
def test_gpu_decode_that_fails_gives_way_to_the_cpu_pool(safe_run, monkeypatch, fail_at: int) -> None:
    src, _ = safe_run
    recs = _records(src)
    chunks = [recs[i:i + 4] for i in range(0, len(recs), 4)]
    want = [r.pixels for _, r in DecodePool(0, 64, "pad", "bicubic", False).map(chunks)]
    real = GpuDecoder.__call__
    calls = {"n": 0}

    def call(self, blobs):
        calls["n"] += 1
        if calls["n"] >= fail_at:
            raise RuntimeError("nvjpeg: NVJPEG_STATUS_EXECUTION_FAILED (injected)")
        return real(self, blobs)

    monkeypatch.setattr(GpuDecoder, "__call__", call)

    def fast() -> GpuDecodeStage:
        if fail_at == 0:
            raise RuntimeError("nvjpeg handle creation failed (injected)")
        return GpuDecodeStage(64, "pad", torch.device("cpu"), threads=2)

    stage = FallbackDecodeStage(fast, lambda: DecodePool(0, 64, "pad", "bicubic", False))
    got = list(stage.map(iter(chunks)))
    stage.close()
    assert [[r.path for r in recs] for recs, _ in got] == [[r.path for r in c] for c in chunks]  # every batch, once
    for (_, result), pixels in zip(got, want):
        diff = np.abs(np.asarray(result.pixels, np.int16) - np.asarray(pixels, np.int16))
        assert diff.mean() < 3  # nvJPEG's and libjpeg's IDCT differ by a level or two
    assert stage.used == "cpu" and stage.fallback.startswith(f"gpu decode failed at batch {max(fail_at, 1)} ")


def test_a_run_whose_gpu_decode_fails_mid_run_completes_and_says_so(safe_run, tmp_path: Path, monkeypatch) -> None:
    from job.embed import attempt as embed

    src, safe = safe_run
    monkeypatch.setattr(embed, "pick_decoder", lambda cfg, lm, first, workers: ("gpu", {}))  # as on CUDA
    real = GpuDecoder.__call__
    calls = {"n": 0}

    def call(self, blobs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("nvjpeg: NVJPEG_STATUS_EXECUTION_FAILED (injected)")
        return real(self, blobs)

    monkeypatch.setattr(GpuDecoder, "__call__", call)
    out = tmp_path / "out"
    assert main(["embed", "--image-dir", str(src), "--out", str(out), *TEST_MODEL, *QUIET, "--precision", "fp32"]) == 0
    decoder = json.loads((out / "manifest.json").read_text())["decoder"]
    assert decoder["used"] == "cpu" and decoder["fallback"].startswith("gpu decode failed at batch 2 ")
    _close(_vectors(out), safe)


def test_decode_auto_whose_measurement_fails_decodes_on_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(decode_gpu, "gpu_decode_available", lambda: True)

    def broken(*args, **kwargs):
        raise RuntimeError("nvjpeg: out of memory (injected)")

    monkeypatch.setattr(decode_gpu, "measure_decoders", broken)
    first = [ImageRecord(path="a.jpg", data=jpeg_bytes(64, 36))]
    assert choose_decoder("auto", first, 64, "pad", SimpleNamespace(type="cuda"), 4) == ("cpu", {})
