"""GPU decode: nvJPEG through ``torchvision.io.decode_jpeg(device='cuda')`` in batches, resize on the GPU.

Same geometry as the CPU path (``job.decode.geometry``): the crop box is cut from the decoded
frame and resampled with antialiased bicubic interpolation, then padded (``pad``) onto a black
square. Output stays on the GPU as a uint8 (n, size, size, 3) tensor, ready for ImageEncoder.
Non-JPEG or broken files are retried on the CPU path so they end up as a decoded image or a
failure reason exactly as with ``--decode cpu``.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import logging
import time
from typing import Any, Generator, Iterable, Sequence, TypeVar

import numpy as np
import torch

from .cpu import DecodeError, DecodeResult, Item, content_hash, decode_image, geometry, item_bytes

R = TypeVar("R", bound=Item)

log = logging.getLogger(__name__)


def gpu_decode_available() -> bool:
    """True when CUDA and torchvision's nvJPEG decoder are usable."""
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _resize_one(img: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """img: (3, h, w) uint8 on the GPU → (size, size, 3) uint8."""
    _, h, w = img.shape
    (x0, y0, x1, y1), (rw, rh), (px, py) = geometry(w, h, size, mode)
    # integer crop that covers the box, then resample exactly the box's extent
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1, iy1 = int(np.ceil(x1)), int(np.ceil(y1))
    crop = img[:, iy0:iy1, ix0:ix1].unsqueeze(0).float()
    out = torch.nn.functional.interpolate(crop, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)[0]
    if (rw, rh) != (size, size):
        canvas = torch.zeros((3, size, size), dtype=torch.uint8, device=img.device)
        canvas[:, py:py + rh, px:px + rw] = out
        out = canvas
    return out.permute(1, 2, 0)


class GpuDecoder:
    """Decodes batches of JPEG bytes on the GPU."""

    def __init__(self, size: int, resize_mode: str, device: torch.device) -> None:
        self.size, self.resize_mode, self.device = size, resize_mode, device

    def __call__(self, blobs: Sequence[bytes | None]) -> DecodeResult:
        """Decode a batch; ``pixels`` of the result is the (n_ok, size, size, 3) uint8 GPU tensor."""
        from torchvision.io import ImageReadMode, decode_jpeg

        ok, sizes, failed, outs = [], [], [], []
        jpeg_pos: list[int] = []
        jpeg_data: list[torch.Tensor | None] = []
        for i, b in enumerate(blobs):
            if b is None or len(b) < 4:
                failed.append((i, "empty file (0 bytes)" if not b else "not an image (unrecognised format)"))
            elif b[:2] == b"\xff\xd8":
                jpeg_pos.append(i)
                jpeg_data.append(torch.frombuffer(bytearray(b), dtype=torch.uint8))
            else:
                jpeg_pos.append(i)
                jpeg_data.append(None)
        decoded: list[torch.Tensor | None] = [None] * len(jpeg_pos)
        good = [k for k, d in enumerate(jpeg_data) if d is not None]
        if good:
            try:
                imgs = decode_jpeg([jpeg_data[k] for k in good], mode=ImageReadMode.RGB, device=self.device)
                for k, img in zip(good, imgs):
                    decoded[k] = img
            except RuntimeError:
                # one bad file fails the whole nvJPEG batch: decode one by one to isolate it
                for k in good:
                    try:
                        decoded[k] = decode_jpeg(jpeg_data[k], mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError:
                        decoded[k] = None
        results: dict[int, torch.Tensor] = {}
        for k, pos in enumerate(jpeg_pos):
            img = decoded[k]
            if img is not None:
                results[pos] = _resize_one(img, self.size, self.resize_mode)
                sizes_wh = (int(img.shape[2]), int(img.shape[1]))
            else:
                try:  # PNGs, progressive oddities, broken files: the CPU path decides
                    arr, sizes_wh, _ = decode_image(blobs[pos] or b"", self.size, self.resize_mode)
                except DecodeError as exc:
                    failed.append((pos, str(exc)))
                    continue
                results[pos] = torch.from_numpy(arr).to(self.device)
            ok.append(pos)
            sizes.append(sizes_wh)
        order = sorted(range(len(ok)), key=lambda j: ok[j])
        ok = [ok[j] for j in order]
        sizes = [sizes[j] for j in order]
        outs = [results[p] for p in ok]
        pixels = torch.stack(outs) if outs else torch.zeros((0, self.size, self.size, 3), dtype=torch.uint8,
                                                             device=self.device)
        failed.sort()
        return DecodeResult(ok, pixels, sizes, [None] * len(ok), failed, [content_hash(blobs[p] or b"") for p in ok])


def measure_decoders(samples: Sequence[bytes], size: int, resize_mode: str, device: torch.device,
                     cpu_workers: int) -> dict[str, float]:
    """Images/s of each decoder on these samples: CPU (one process, scaled by workers) and GPU."""
    t0 = time.perf_counter()
    for b in samples:
        try:
            decode_image(b, size, resize_mode)
        except DecodeError:
            pass
    cpu_rate = len(samples) / max(time.perf_counter() - t0, 1e-9) * max(cpu_workers, 1)
    dec = GpuDecoder(size, resize_mode, device)
    dec(samples)  # warm-up: nvJPEG handles, kernels
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    dec(samples)
    torch.cuda.synchronize(device)
    gpu_rate = len(samples) / max(time.perf_counter() - t0, 1e-9)
    return {"cpu": cpu_rate, "gpu": gpu_rate}


class GpuDecodeStage:
    """GPU decode stage: reads bytes ahead in threads and decodes each chunk on the GPU (nvJPEG)."""

    def __init__(self, size: int, resize_mode: str, device: torch.device, threads: int = 8) -> None:
        self.decoder = GpuDecoder(size, resize_mode, device)
        self._io = cf.ThreadPoolExecutor(max_workers=threads)

    def map(self, chunks: Iterable[list[R]]) -> Generator[tuple[list[R], DecodeResult], None, None]:
        """Yield (records, decoded) per chunk, reading up to four chunks ahead."""
        pending: collections.deque[tuple[list[R], list[cf.Future[bytes | None]]]] = collections.deque()
        it = iter(chunks)
        for recs in itertools.islice(it, 4):
            pending.append((recs, [self._io.submit(item_bytes, r) for r in recs]))
        while pending:
            recs, futs = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, [self._io.submit(item_bytes, r) for r in nxt]))
            blobs = [f.result() if r.error is None else None for r, f in zip(recs, futs)]
            result = self.decoder(blobs)
            result.failed = [(p, why) for p, why in result.failed if recs[p].error is None]
            yield recs, result

    def close(self) -> None:
        """Stop the reader threads."""
        self._io.shutdown(wait=True, cancel_futures=True)


def choose_decoder(requested: str, first: Sequence[Item], size: int, resize_mode: str, device: Any,
                   workers: int) -> tuple[str, dict[str, float]]:
    """``--decode auto``: on CUDA, measure both decoders on the first chunk and take the faster."""
    if requested != "auto":
        return requested, {}
    if device.type != "cuda" or not gpu_decode_available():
        return "cpu", {}
    samples = [b for b in (item_bytes(r) for r in first if r.error is None) if b]
    if not samples:
        return "cpu", {}
    try:
        rates = measure_decoders(samples, size, resize_mode, device, workers)
    except Exception as exc:  # noqa: BLE001 - nvJPEG failing to measure is a reason to use the CPU, not to stop
        log.warning("decode auto: measuring nvJPEG failed (%s: %s); decoding on the CPU", type(exc).__name__, exc)
        return "cpu", {}
    choice = "gpu" if rates["gpu"] > rates["cpu"] else "cpu"
    log.info("decode auto: cpu %.0f images/s (%d workers), gpu %.0f images/s -> %s",
             rates["cpu"], workers, rates["gpu"], choice)
    return choice, rates
