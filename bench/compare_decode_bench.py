"""``job compare`` decodes each variant's images itself: what a second decode of the same images costs next to the
model, per image on one core (the question "share the decode between variants with the same resize and size?").

    python bench/compare_decode_bench.py                     # 40 images, ViT-S-32 and ViT-B-32 (~1 min on 2 cores)
    python bench/compare_decode_bench.py --models ViT-L-14 --images 8

Images: generated 1600x900 JPEGs (``tests/conftest.py``'s ``jpeg_bytes``, photo-like, quality 90), decoded by
``job.decode.decode_image`` (the decode every run uses) at each variant's size and resize mode; models with random
weights (``--pretrained none``: the forward costs the same as with trained weights), fp32 on the CPU, one thread.
Prints one table row per step and the share a second decode adds to each model's per-image time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--models", default="ViT-S-32,ViT-B-32")
    args = ap.parse_args()

    import numpy as np
    import torch

    from conftest import jpeg_bytes
    from job.config import ModelConfig
    from job.decode import decode_image
    from job.model.load import ImageEncoder, load_model

    torch.set_num_threads(1)
    imgs = [jpeg_bytes(1600, 900, seed=i) for i in range(args.images)]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {len(imgs)} images 1600x900, one thread")
    print("| step, per image | ms |\n|---|---:|")
    decode_ms: dict[tuple[int, str], float] = {}
    for size, mode in ((224, "pad"), (224, "crop"), (256, "squash")):
        t0 = time.perf_counter()
        for b in imgs:
            decode_image(b, size, mode)
        decode_ms[(size, mode)] = (time.perf_counter() - t0) / len(imgs) * 1000
        print(f"| decode 1600x900 -> {size} {mode} | {decode_ms[(size, mode)]:.1f} |")
    n = min(16, len(imgs))
    for name in args.models.split(","):
        lm = load_model(ModelConfig(model=name, pretrained="none", device="cpu", precision="fp32"))
        enc = ImageEncoder(lm)
        batch = np.stack([decode_image(b, lm.image_size, "pad")[0] for b in imgs[:n]])
        enc(batch[:2])  # warm-up
        t0 = time.perf_counter()
        enc(batch)
        ms = (time.perf_counter() - t0) / n * 1000
        second = decode_ms.get((lm.image_size, "pad"), decode_ms[(224, "pad")])
        print(f"| {name} forward ({lm.image_size} px) | {ms:.1f} |  (a second decode adds {second / (ms + second):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
