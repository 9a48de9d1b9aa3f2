"""Decode stage: geometry matches open_clip's eval transform; bad bytes give reasons, not crashes."""
from __future__ import annotations

import io

import numpy as np
import open_clip
import pytest
from PIL import Image

from conftest import jpeg_bytes, photo_like
from job.decode import DecodeError, DecodeTask, decode_batch, decode_image

OPEN_CLIP_MODE = {"crop": "shortest", "pad": "longest", "squash": "squash"}


def _reference(data: bytes, mode: str, size: int = 224) -> np.ndarray:
    tf = open_clip.image_transform(size, is_train=False, resize_mode=OPEN_CLIP_MODE[mode], mean=(0, 0, 0), std=(1, 1, 1))
    return tf(Image.open(io.BytesIO(data))).permute(1, 2, 0).numpy() * 255.0


@pytest.mark.parametrize("mode", ["crop", "pad", "squash"])
@pytest.mark.parametrize("wh", [(1600, 900), (900, 1600), (640, 480)])
def test_matches_open_clip_transform(mode: str, wh: tuple[int, int]) -> None:
    data = jpeg_bytes(*wh, seed=7)
    arr, orig, thumb = decode_image(data, 224, mode)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    assert orig == wh and thumb is None
    diff = np.abs(arr.astype(np.float64) - _reference(data, mode))
    # Reduced-scale DCT decode resamples slightly differently; the geometry must be the same.
    assert diff.mean() < 2.0, diff.mean()
    assert np.percentile(diff, 99) < 16


def test_pad_leaves_black_bars_like_open_clip() -> None:
    arr, _, _ = decode_image(jpeg_bytes(1600, 900, seed=1), 224, "pad")
    ref = _reference(jpeg_bytes(1600, 900, seed=1), "pad")
    # 1600x900 -> 224x126 centred: 49 rows of padding on top, 49 below.
    assert arr[:49].max() == 0 and arr[-49:].max() == 0
    assert ref[:49].max() == 0 and arr[49:175].mean() > 20


def test_png_and_grayscale_are_converted() -> None:
    buf = io.BytesIO()
    photo_like(300, 200, 0).convert("L").save(buf, "PNG")
    arr, orig, _ = decode_image(buf.getvalue(), 64, "crop")
    assert arr.shape == (64, 64, 3) and orig == (300, 200)


def test_thumbnail_is_small_jpeg() -> None:
    _, _, thumb = decode_image(jpeg_bytes(1600, 900, seed=2), 224, "pad", thumbnail=True)
    assert thumb is not None
    img = Image.open(io.BytesIO(thumb))
    assert img.format == "JPEG" and img.size == (128, 72)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image"),
        (jpeg_bytes(1600, 900, seed=3)[:4000], "unreadable image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "not an image|unreadable image"),
    ],
)
def test_bad_bytes_raise_decode_error(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, 224, "pad")


def test_decode_batch_keeps_positions_and_reasons(tmp_path) -> None:
    good = tmp_path / "a.jpg"
    good.write_bytes(jpeg_bytes(320, 180, seed=4))
    task = DecodeTask(
        items=[(0, None, str(good)), (1, b"", None), (2, jpeg_bytes(320, 180, seed=5), None),
               (3, None, str(tmp_path / "missing.jpg"))],
        size=32, resize_mode="crop",
    )
    res = decode_batch(task)
    assert res.ok_positions == [0, 2]
    assert res.pixels.shape == (2, 32, 32, 3)
    assert res.sizes == [(320, 180), (320, 180)]
    assert [p for p, _ in res.failed] == [1, 3]
    assert "cannot read file" in res.failed[1][1]
