"""The GPU decode path (nvJPEG + resize on the device). Its logic runs on the CPU device here; CUDA tests skip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import jpeg_bytes
from job.decode import decode_image
from job.decode.gpu import GpuDecoder, gpu_decode_available

CPU = torch.device("cpu")


@pytest.mark.parametrize("mode", ["pad", "crop", "squash"])
def test_same_geometry_as_cpu_path(mode: str) -> None:
    blobs = [jpeg_bytes(1600, 900, seed=s) for s in range(3)]
    result = GpuDecoder(224, mode, CPU)(blobs)
    pixels = result.pixels
    assert result.ok_positions == [0, 1, 2] and result.sizes == [(1600, 900)] * 3
    assert pixels.shape == (3, 224, 224, 3) and pixels.dtype == torch.uint8
    for b, got in zip(blobs, pixels):
        ref, _, _ = decode_image(b, 224, mode)
        diff = np.abs(got.numpy().astype(np.float64) - ref)
        assert diff.mean() < 3.0, diff.mean()


def test_bad_and_non_jpeg_inputs() -> None:
    import io


    from conftest import photo_like

    png = io.BytesIO()
    photo_like(320, 180, 1).save(png, "PNG")
    blobs = [jpeg_bytes(320, 180, seed=1), b"", None, b"plain text", png.getvalue(), jpeg_bytes(320, 180, seed=2)[:900]]
    result = GpuDecoder(64, "pad", CPU)(blobs)
    pixels = result.pixels
    assert result.ok_positions == [0, 4]
    assert pixels.shape == (2, 64, 64, 3)
    reasons = dict(result.failed)
    assert set(reasons) == {1, 2, 3, 5}
    assert "empty" in reasons[1] and "not an image" in reasons[3]


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_decode_available(), reason="needs CUDA and nvJPEG")
def test_cuda_decode_matches_cpu() -> None:
    blobs = [jpeg_bytes(1600, 900, seed=s) for s in range(8)]
    result = GpuDecoder(224, "pad", torch.device("cuda"))(blobs)
    pixels = result.pixels
    assert pixels.is_cuda and result.ok_positions == list(range(8))
    for b, got in zip(blobs, pixels.cpu()):
        ref, _, _ = decode_image(b, 224, "pad")
        assert np.abs(got.numpy().astype(np.float64) - ref).mean() < 3.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embed_bf16_close_to_fp32(tmp_path) -> None:
    from job.config import ModelConfig
    from job.model.load import ImageEncoder, load_model

    batch = np.stack([decode_image(jpeg_bytes(1600, 900, seed=s), 224, "pad")[0] for s in range(8)])
    fp32 = ImageEncoder(load_model(ModelConfig(model="ViT-B-32", pretrained="none", device="cuda", precision="fp32")))
    bf16 = ImageEncoder(load_model(ModelConfig(model="ViT-B-32", pretrained="none", device="cuda", precision="bf16")))
    cos = (fp32(batch) * bf16(batch)).sum(axis=1)
    assert cos.min() >= 0.995
