"""GPU throughput of ViT-L/14 embedding: model-only, end to end from JPEG bytes, and the straightforward baseline.

    .venv/bin/python bench/gpu_throughput.py [--model ViT-L-14] [--images 512] [--out docs/gpu_bench.json]

In one run, on one CUDA device, it measures:
  * the bf16 matmul ceiling (TFLOP/s) of this GPU, and from it the images/s ceiling of the model;
  * model-only images/s on synthetic uint8 batches for fp32 / fp16 / bf16 and several batch sizes;
  * end-to-end images/s from in-memory 1600x900 JPEG bytes with CPU decode (worker processes) and GPU decode (nvJPEG);
  * the baseline: open_clip preprocess per image, batch 8, fp32;
  * each as a ratio to the baseline and a fraction of the ceiling, and the cosine of the fast paths' vectors
    against the baseline's (same weights).
Without a CUDA device it says so and exits 0 (nothing to measure).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import jpeg_bytes  # noqa: E402

from job.config import ModelConfig  # noqa: E402
from job.decode import DecodeTask, decode_batch  # noqa: E402
from job.decode.gpu import GpuDecoder  # noqa: E402
from job.decode import DecodePool  # noqa: E402
from job.model.load import ImageEncoder, load_model  # noqa: E402
from job.sources import ImageRecord  # noqa: E402

GFLOP_PER_IMAGE = {"ViT-L-14": 162.0, "ViT-B-32": 8.8, "ViT-B-16": 35.1, "ViT-H-14": 334.0}


def sync() -> None:
    torch.cuda.synchronize()


def matmul_tflops(dtype: torch.dtype = torch.bfloat16, n: int = 8192, iters: int = 50) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(5):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def model_only(model: str, precision: str, batch: int, steps: int, compile_model: bool = False) -> float:
    lm = load_model(ModelConfig(model=model, pretrained="none", device="cuda", precision=precision))
    enc = ImageEncoder(lm, compile_model=compile_model)
    x = torch.randint(0, 256, (batch, lm.image_size, lm.image_size, 3), dtype=torch.uint8, device="cuda")
    for _ in range(3):
        enc.submit(x)()
    sync()
    t0 = time.perf_counter()
    fetches = [enc.submit(x) for _ in range(steps)]
    for f in fetches:
        f()
    sync()
    rate = batch * steps / (time.perf_counter() - t0)
    del lm, enc
    torch.cuda.empty_cache()
    return rate


def end_to_end(model: str, blobs: list[bytes], decoder: str, batch: int, workers: int) -> tuple[float, np.ndarray]:
    lm = load_model(ModelConfig(model=model, pretrained="none", device="cuda", precision="bf16"))
    enc = ImageEncoder(lm)
    recs = [ImageRecord(path=f"{i}.jpg", data=b) for i, b in enumerate(blobs)]
    chunks = [recs[i:i + batch] for i in range(0, len(recs), batch)]
    out: list[np.ndarray] = []
    # warm-up on the first chunk
    if decoder == "gpu":
        dec = GpuDecoder(lm.image_size, "pad", lm.device)
        enc.submit(dec([r.data for r in chunks[0]]).pixels)()
    else:
        pool = DecodePool(workers, lm.image_size, "pad", "bicubic", False)
        enc(decode_batch(DecodeTask([(0, chunks[0][0].data, None)], lm.image_size, "pad")).pixels)
    sync()
    t0 = time.perf_counter()
    pending = None
    if decoder == "gpu":
        for c in chunks:
            f = enc.submit(dec([r.data for r in c]).pixels)
            if pending:
                out.append(pending())
            pending = f
    else:
        for _, res in pool.map(chunks):
            f = enc.submit(res.pixels)
            if pending:
                out.append(pending())
            pending = f
    out.append(pending())
    sync()
    rate = len(blobs) / (time.perf_counter() - t0)
    if decoder != "gpu":
        pool.close()
    return rate, np.concatenate(out)


def baseline(model: str, blobs: list[bytes]) -> tuple[float, np.ndarray]:
    import open_clip
    from PIL import Image

    lm = load_model(ModelConfig(model=model, pretrained="none", device="cuda", precision="fp32"))
    pre = open_clip.image_transform(lm.image_size, is_train=False, mean=lm.mean, std=lm.std, resize_mode="longest")
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(blobs), 8):
        x = torch.stack([pre(Image.open(io.BytesIO(b))) for b in blobs[i:i + 8]]).cuda()
        with torch.no_grad():
            out.append(torch.nn.functional.normalize(lm.model.encode_image(x).float(), dim=-1).cpu().numpy())
    sync()
    return len(blobs) / (time.perf_counter() - t0), np.concatenate(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-L-14")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batches", default="64,128,256")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (this benchmark needs a GPU)")
        return 0
    name = torch.cuda.get_device_name()
    gflop = GFLOP_PER_IMAGE.get(args.model, 162.0)
    tflops = matmul_tflops()
    ceiling = tflops * 1e12 / (gflop * 1e9)
    print(f"device: {name}; bf16 matmul {tflops:.0f} TFLOP/s -> ceiling {ceiling:.0f} images/s for {args.model}")
    rows: list[tuple[str, float]] = []
    for precision in ("fp32", "fp16", "bf16"):
        for b in (int(x) for x in args.batches.split(",")):
            rows.append((f"model-only {precision} batch {b}", model_only(args.model, precision, b, steps=10)))
    best_b = int(args.batches.split(",")[-1])
    rows.append((f"model-only bf16 batch {best_b} + torch.compile", model_only(args.model, "bf16", best_b, 10, True)))
    blobs = [jpeg_bytes(1600, 900, seed=i % 64, quality=92) for i in range(args.images)]
    base_rate, base_vecs = baseline(args.model, blobs[: min(len(blobs), 256)])
    cpu_rate, cpu_vecs = end_to_end(args.model, blobs, "cpu", 128, args.workers)
    gpu_rate, gpu_vecs = end_to_end(args.model, blobs, "gpu", 128, args.workers)
    rows += [(f"end-to-end JPEG, CPU decode ({args.workers} workers), bf16", cpu_rate),
             ("end-to-end JPEG, GPU decode (nvJPEG), bf16", gpu_rate),
             ("baseline: open_clip preprocess, batch 8, fp32", base_rate)]
    n = len(base_vecs)
    cos_cpu = (cpu_vecs[:n] * base_vecs).sum(1)
    cos_gpu = (gpu_vecs[:n] * base_vecs).sum(1)
    print(f"{'path':<52} {'images/s':>9} {'x baseline':>10} {'of ceiling':>10}")
    for label, rate in rows:
        print(f"{label:<52} {rate:>9.0f} {rate / base_rate:>10.1f} {rate / ceiling:>10.1%}")
    print(f"cosine vs baseline: CPU-decode path min {cos_cpu.min():.4f}, GPU-decode path min {cos_gpu.min():.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "device": name, "matmul_tflops_bf16": tflops, "ceiling_images_per_s": ceiling,
            "rows": dict(rows), "cosine_min": {"cpu_decode": float(cos_cpu.min()), "gpu_decode": float(cos_gpu.min())},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
