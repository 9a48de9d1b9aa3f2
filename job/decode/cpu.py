"""Decode stage: JPEG bytes → uint8 model input (H, W, 3), matching open_clip's eval transform.

The work is done at reduced scale where possible: libjpeg decodes 1/2, 1/4 or 1/8 of the pixels
straight from the DCT coefficients (PIL ``draft``), and the crop happens inside the one bicubic
resample (``resize(box=…)``), so a 1600×900 frame costs a fraction of a full decode + resize + crop.
The geometry reproduces open_clip's ``image_transform`` for each resize mode:

* ``crop``   ('shortest'): shortest side → size, centre crop size×size.
* ``pad``    ('longest'):  longest side → size, centred on a black (fill 0) square.
* ``squash``: both sides → size, aspect ratio ignored.

This module imports neither torch nor open_clip: decode workers stay light.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import io
import itertools
import logging
import multiprocessing as mp
from dataclasses import dataclass, field
from typing import Any, Generator, Iterable, Iterator, Protocol, Sequence, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
THUMB_WIDTH = 128


R = TypeVar("R", bound="Item")


class DecodeError(ValueError):
    """An image that cannot be turned into a model input; the message is the failures-table reason."""


def geometry(w: int, h: int, size: int, mode: str) -> tuple[tuple[float, float, float, float], tuple[int, int], tuple[int, int]]:
    """(source box to sample, resized (w, h), paste offset) for an original of w×h pixels."""
    if mode == "crop":
        # torchvision Resize(int): short side = size, long side = int(size * long / short)
        if w <= h:
            rw, rh = size, int(size * h / w)
        else:
            rw, rh = int(size * w / h), size
        left = int(round((rw - size) / 2.0))
        top = int(round((rh - size) / 2.0))
        sx, sy = w / rw, h / rh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return box, (size, size), (0, 0)
    if mode == "pad":
        ratio = max(w / size, h / size)
        rw, rh = max(1, round(w / ratio)), max(1, round(h / ratio))
        return (0.0, 0.0, float(w), float(h)), (rw, rh), ((size - rw) // 2, (size - rh) // 2)
    if mode == "squash":
        return (0.0, 0.0, float(w), float(h)), (size, size), (0, 0)
    raise ValueError(f"unknown resize mode {mode!r}")


def decode_image(
    data: bytes, size: int, resize_mode: str, interpolation: str = "bicubic", thumbnail: bool = False
) -> tuple[np.ndarray, tuple[int, int], bytes | None]:
    """Decode one image to a (size, size, 3) uint8 array.

    Returns the array, the original (width, height), and a small JPEG thumbnail when asked.
    Raises DecodeError with a short reason for empty, truncated, corrupt or non-image data.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        box, (rw, rh), (px, py) = geometry(w, h, size, resize_mode)
        if img.format == "JPEG":
            # Ask libjpeg for the smallest DCT scale that still covers the resampled region.
            need = max(rw / max(box[2] - box[0], 1e-6), rh / max(box[3] - box[1], 1e-6))
            img.draft("RGB", (max(1, int(np.ceil(w * need))), max(1, int(np.ceil(h * need)))))
        img.load()
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"unreadable image: {exc}") from None
    rgb: Image.Image = img if img.mode == "RGB" else img.convert("RGB")
    dw, dh = rgb.size
    fx, fy = dw / w, dh / h
    dbox = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    resized = rgb.resize((rw, rh), RESAMPLE.get(interpolation, Image.Resampling.BICUBIC), box=dbox)
    if (rw, rh) != (size, size):
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(resized, (px, py))
        resized = canvas
    thumb = None
    if thumbnail:
        tw = min(THUMB_WIDTH, dw)
        small = rgb.resize((tw, max(1, round(dh * tw / dw))), Image.Resampling.BILINEAR, reducing_gap=2.0)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=80)
        thumb = buf.getvalue()
    return np.asarray(resized, dtype=np.uint8), (w, h), thumb


@dataclass(frozen=True)
class DecodeTask:
    """A batch of images for one worker: (position, bytes or None, file path or None) each."""

    items: Sequence[tuple[int, bytes | None, str | None]]
    size: int
    resize_mode: str
    interpolation: str = "bicubic"
    thumbnails: bool = False


HASH_BYTES = 16


def content_hash(data: bytes) -> bytes:
    """BLAKE2b-128 of an image file's bytes: the ``content_hash`` column, which finds byte-identical copies (exact
    duplicates) without reading the data again; taken where the bytes already are (the decode stage)."""
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


@dataclass
class DecodeResult:
    """A worker's answer: stacked arrays for the images that decoded, reasons for those that did not."""

    ok_positions: list[int]
    pixels: Any  # (n_ok, size, size, 3) uint8: a numpy array (CPU decode) or a CUDA tensor (nvJPEG)
    sizes: list[tuple[int, int]]
    thumbs: list[bytes | None]
    failed: list[tuple[int, str]]
    hashes: list[bytes] = field(default_factory=list)  # content_hash of each decoded image, aligned with ok_positions


class Item(Protocol):
    """What the decode stages need of a source record (read-only)."""

    @property
    def data(self) -> bytes | None: ...

    @property
    def url(self) -> str | None: ...

    @property
    def error(self) -> str | None: ...


class DecodeStage(Protocol):
    """The decode stage of the pipeline (``DecodePool`` on CPU workers, ``decode_gpu.GpuDecodeStage`` with nvJPEG):
    chunks of records in, ``(records, DecodeResult)`` out in the same order; ``close`` stops its workers."""

    def map(self, chunks: Iterable[list[R]]) -> Iterator[tuple[list[R], DecodeResult]]: ...

    def close(self) -> None: ...


def item_bytes(r: Item) -> bytes | None:
    """The record's bytes, or None when the file cannot be read (the decoder then reports it)."""
    try:
        return read_bytes(r.data, r.url)
    except OSError:
        return None


def read_bytes(data: bytes | None, url: str | None) -> bytes:
    """``data`` itself, or the contents of the local path or fsspec URL ``url``."""
    if data is not None:
        return data
    assert url is not None
    if "://" in url:
        import fsspec

        with fsspec.open(url, "rb") as f:
            return f.read()
    with open(url, "rb") as f:
        return f.read()


def decode_batch(task: DecodeTask) -> DecodeResult:
    """Decode a batch (runs in a worker process or inline)."""
    arrays, ok, sizes, thumbs, failed, hashes = [], [], [], [], [], []
    for pos, data, url in task.items:
        try:
            raw = read_bytes(data, url)
            arr, wh, thumb = decode_image(raw, task.size, task.resize_mode, task.interpolation, task.thumbnails)
        except DecodeError as exc:
            failed.append((pos, str(exc)))
            continue
        except OSError as exc:
            failed.append((pos, f"cannot read file: {exc}"))
            continue
        arrays.append(arr)
        ok.append(pos)
        sizes.append(wh)
        thumbs.append(thumb)
        hashes.append(content_hash(raw))
    pixels = np.stack(arrays) if arrays else np.zeros((0, task.size, task.size, 3), np.uint8)
    return DecodeResult(ok, pixels, sizes, thumbs, failed, hashes)


class DecodePool:
    """CPU decode stage: chunks of records decoded in worker processes (or inline with 0), in order."""

    def __init__(self, workers: int, size: int, resize_mode: str, interpolation: str, thumbnails: bool) -> None:
        self.workers = workers
        self.size, self.resize_mode, self.interpolation, self.thumbnails = size, resize_mode, interpolation, thumbnails
        self._executor: cf.ProcessPoolExecutor | None = None
        if workers > 0:
            # forkserver: sources may run reader threads, which must not be forked mid-flight.
            ctx = mp.get_context("forkserver")
            self._executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)

    def _task(self, records: Sequence[Item]) -> DecodeTask:
        items = [(i, r.data, r.url) for i, r in enumerate(records) if r.error is None]
        return DecodeTask(items, self.size, self.resize_mode, self.interpolation, self.thumbnails)

    def map(self, chunks: Iterable[list[R]]) -> Generator[tuple[list[R], DecodeResult], None, None]:
        """Yield (records, decoded) per chunk, keeping at most 2×workers+1 chunks in flight."""
        if self._executor is None:
            for recs in chunks:
                yield recs, decode_batch(self._task(recs))
            return
        pending: collections.deque[tuple[list[R], cf.Future[DecodeResult]]] = collections.deque()
        it = iter(chunks)
        for recs in itertools.islice(it, 2 * self.workers + 1):
            pending.append((recs, self._executor.submit(decode_batch, self._task(recs))))
        while pending:
            recs, fut = pending.popleft()
            result = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, self._executor.submit(decode_batch, self._task(nxt))))
            yield recs, result

    def close(self) -> None:
        """Stop the workers."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
