"""Benchmark: our ``embed`` pipeline vs the straightforward loop, on the same images, in one run.

Baseline (what most scripts do): open_clip ``preprocess`` on one PIL image at a time, batches of 8,
fp32, one process. Ours: ``python -m job embed`` defaults (reduced-scale DCT decode in worker
processes, uint8 to the device, normalisation there, larger batches, bf16 on GPUs).

    .venv/bin/python bench/embed_bench.py [--model ViT-B-32] [--images 96] [--device auto]

Prints images/s for both and the ratio, plus the cosine agreement of the two paths' vectors.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import jpeg_bytes  # noqa: E402  (photo-like 1600x900 JPEGs, same generator as the tests)

from job.cli import main as job_main  # noqa: E402
from job.config import ModelConfig  # noqa: E402
from job.model.load import load_model  # noqa: E402

log = logging.getLogger("bench")


def make_images(root: Path, n: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"frame_{i:05d}.jpg"
        p.write_bytes(jpeg_bytes(1600, 900, seed=i, quality=92))
        paths.append(p)
    return paths


def baseline(paths: list[Path], model_name: str, pretrained: str, device: str) -> tuple[float, dict[str, np.ndarray]]:
    """open_clip preprocess per image, batch 8, fp32, one process."""
    import open_clip
    from PIL import Image

    lm = load_model(ModelConfig(model=model_name, pretrained=pretrained, pool="mean", device=device, precision="fp32"))
    preprocess = open_clip.image_transform(lm.image_size, is_train=False, mean=lm.mean, std=lm.std,
                                           resize_mode="longest")  # same geometry as our default (pad)
    out: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for i in range(0, len(paths), 8):
        chunk = paths[i:i + 8]
        x = torch.stack([preprocess(Image.open(p)) for p in chunk]).to(lm.device)
        with torch.no_grad():
            f = torch.nn.functional.normalize(lm.model.encode_image(x).float(), dim=-1).cpu().numpy()
        for p, v in zip(chunk, f):
            out[p.name] = v
    return len(paths) / (time.perf_counter() - t0), out


def ours(root: Path, out_dir: Path, model_name: str, pretrained: str, device: str, batch: int) -> tuple[float, dict[str, np.ndarray]]:
    rc = job_main(["embed", "--model", model_name, "--pretrained", pretrained, "--image-dir", str(root),
                   "--out", str(out_dir), "--device", device, "--batch-size", str(batch), "--no-progress",
                   "--log-level", "WARNING"])
    assert rc == 0
    import pyarrow.parquet as pq

    manifest = json.loads((out_dir / "manifest.json").read_text())
    rows = pq.read_table(out_dir / "embeddings.parquet").to_pylist()
    return manifest["images_per_s"], {r["path"]: np.asarray(r["embedding"]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "images", args.images)
        base_rate, base_vecs = baseline(paths, args.model, args.pretrained, args.device)
        our_rate, our_vecs = ours(Path(tmp) / "images", Path(tmp) / "run", args.model, args.pretrained,
                                  args.device, args.batch_size)
    cos = np.array([float(base_vecs[k] @ our_vecs[k]) for k in base_vecs])
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    print(f"machine: {dev}; torch {torch.__version__}; model {args.model} ({args.pretrained}); "
          f"{args.images} JPEGs 1600x900")
    print(f"{'path':<46} {'images/s':>9} {'ratio':>7}")
    print(f"{'baseline: open_clip preprocess, batch 8, fp32':<46} {base_rate:>9.2f} {1.0:>7.2f}")
    print(f"{'ours: job embed (defaults, batch ' + str(args.batch_size) + ')':<46} {our_rate:>9.2f} "
          f"{our_rate / base_rate:>7.2f}")
    print(f"cosine(ours, baseline): min {cos.min():.5f}, mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
