"""Archive streaming benchmark: a nuScenes-style ``.tgz`` read as a stream vs the same files extracted in a folder.

Measures, in one run on this machine:

1. gzip decompression alone, MB/s of decompressed output: isal threaded (what the job uses),
   isal single-thread, the standard library's gzip;
2. the tar stream through ``job.sources.archive_reader.ArchiveReader`` (every camera member's bytes read),
   MB/s and images/s, isal vs stdlib gzip;
3. images/s through ``job.sources.open_source`` — records only, and records + JPEG decode to a 224
   model input (``job.decode.decode_image``, one process) — from the ``.tgz`` and from the folder.

The data: ``--unique`` distinct 1600×900 photo-like JPEGs (~150-400 KB, like nuScenes frames)
repeated under ``--images`` camera file names in the official layout, plus LIDAR-sized random
``.pcd.bin`` members (one per 6 images) that the reader must skip. Files are freshly written, so
both the folder and the archive are read from the page cache: this is CPU cost, not disk or
network. The model is not run (ViT-L/14 on CPU is far slower than either input path).

``--tables-rows N`` instead measures loading a generated ``sample_data.json`` of N rows (2.6M =
trainval): wall time and peak RSS of a fresh process, keyframes-only and all-camera selections.

    .venv/bin/python bench/archive_bench.py                 # streaming table
    .venv/bin/python bench/archive_bench.py --tables-rows 2600000
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")


def _photo(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 6.28)
        img[..., c] = 127 + 80 * np.sin(xx / width * fx * 6.28 + ph) * np.cos(yy / height * fy * 6.28)
    for _ in range(25):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.02, 0.15) * width
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        img[mask] = 0.5 * img[mask] + 0.5 * rng.uniform(0, 255, 3)
    img += rng.normal(0, 9, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_data(root: Path, n_images: int, n_unique: int) -> tuple[Path, Path, int]:
    """(dataroot, tgz, bytes of camera images)."""
    photos = [_photo(1600, 900, s) for s in range(n_unique)]
    rng = np.random.default_rng(0)
    lidar = rng.normal(0, 10, 34_000 * 5).astype(np.float32).tobytes()  # ~0.7 MB like a LIDAR_TOP sweep
    data_root = root / "nuscenes"
    rels: list[str] = []
    cam_bytes = 0
    for i in range(n_images):
        ch = CAMERAS[i % 6]
        ts = 1531883530_000000 + (i // 6) * 500_000 + i % 6 * 1000
        rel = f"samples/{ch}/n015-2018-07-18-11-07-57+0800__{ch}__{ts}.jpg"
        p = data_root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(photos[i % n_unique])
        cam_bytes += len(photos[i % n_unique])
        rels.append(rel)
        if i % 6 == 5:
            rel = f"samples/LIDAR_TOP/n015-2018-07-18-11-07-57+0800__LIDAR_TOP__{ts}.pcd.bin"
            (data_root / rel).parent.mkdir(parents=True, exist_ok=True)
            (data_root / rel).write_bytes(lidar)
            rels.append(rel)
    tgz = root / "v1.0-trainval01_keyframes.tgz"
    from isal import igzip  # compress fast; the stream format is plain gzip (level 6 ≈ `tar czf` default size)

    with igzip.open(tgz, "wb", compresslevel=3) as gz, tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for rel in sorted(rels):
            tar.add(data_root / rel, arcname=rel)
    return data_root, tgz, cam_bytes


def bench_decompress(tgz: Path) -> dict[str, float]:
    from isal import igzip, igzip_threaded

    out = {}
    for name, opener in (("isal threaded", lambda f: igzip_threaded.open(f, "rb", threads=1)),
                         ("isal", lambda f: igzip.IGzipFile(fileobj=f, mode="rb")),
                         ("stdlib gzip", lambda f: gzip.GzipFile(fileobj=f, mode="rb"))):
        with open(tgz, "rb") as raw:
            t0 = time.perf_counter()
            n = 0
            with opener(raw) as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    n += len(b)
            out[name] = n / 1e6 / (time.perf_counter() - t0)
    return out


def bench_reader(tgz: Path) -> dict[str, tuple[float, float]]:
    from job.sources.archive_reader import ArchiveReader

    out = {}
    for decoder in ("isal", "gzip"):
        reader = ArchiveReader(str(tgz), decoder=decoder)
        t0 = time.perf_counter()
        n = 0
        for m in reader.members():
            if m.isfile and m.name.endswith(".jpg"):
                m.read()
                n += 1
        dt = time.perf_counter() - t0
        out[decoder] = (reader.stats.bytes_decompressed / 1e6 / dt, n / dt)
    return out


def bench_sources(data_root: Path, tgz: Path) -> dict[str, dict[str, float]]:
    from job.config import SourceConfig
    from job.decode import decode_image
    from job.sources import open_source

    out: dict[str, dict[str, float]] = {}
    for name, src in (("folder", str(data_root)), (".tgz", str(tgz))):
        res = {}
        for mode in ("records", "records+decode"):
            source = open_source(SourceConfig(sources=(src,)))
            t0 = time.perf_counter()
            n = 0
            for rec in source.records():
                data = rec.data if rec.data is not None else open(rec.url, "rb").read()
                if mode == "records+decode":
                    decode_image(data, 224, "pad")
                n += 1
            res[mode] = n / (time.perf_counter() - t0)
        out[name] = res
    return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_stream(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="archive-bench-") as tmp:
        t0 = time.perf_counter()
        data_root, tgz, cam_bytes = make_data(Path(tmp), args.images, args.unique)
        tar_mb = sum(f.stat().st_size for f in data_root.rglob("*") if f.is_file()) / 1e6
        print(f"# data: {args.images} camera JPEGs 1600x900 ({cam_bytes / 1e6 / args.images * 1000:.0f} KB avg, "
              f"{args.unique} distinct) + {args.images // 6} LIDAR members; {tar_mb:.0f} MB of files, "
              f"{tgz.stat().st_size / 1e6:.0f} MB .tgz (made in {time.perf_counter() - t0:.0f}s)")
        print(f"# machine: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        dec = bench_decompress(tgz)
        rd = bench_reader(tgz)
        src = bench_sources(data_root, tgz)
    print()
    print("| measurement | value | ratio |")
    print("|---|---:|---:|")
    base = dec["stdlib gzip"]
    for k, v in dec.items():
        print(f"| gzip decompression, {k} | {v:,.0f} MB/s | {v / base:.2f}x stdlib |")
    for k, (mb, ips) in rd.items():
        print(f"| tar stream (ArchiveReader, {k}), all members | {mb:,.0f} MB/s, {ips:,.0f} images/s | "
              f"{mb / rd['gzip'][0]:.2f}x stdlib |")
    for mode in ("records", "records+decode"):
        f, t = src["folder"][mode], src[".tgz"][mode]
        print(f"| {mode}: folder | {f:,.0f} images/s | 1.00 |")
        print(f"| {mode}: .tgz stream | {t:,.0f} images/s | {t / f:.2f}x folder |")


# --------------------------------------------------------------------------- tables memory

def write_sample_data(path: Path, rows: int) -> dict[str, int]:
    """A sample_data.json of ``rows`` rows with trainval's sensor mix, plus matching small tables."""
    import hashlib

    def tok(*a: object) -> str:
        return hashlib.md5(repr(a).encode()).hexdigest()

    channels = list(CAMERAS) + ["LIDAR_TOP"] + [f"RADAR_{r}" for r in
                                                ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "BACK_LEFT", "BACK_RIGHT")]
    rates = [12] * 6 + [20] + [13] * 5  # Hz, as in nuScenes
    total_rate = sum(rates)
    d = path
    d.mkdir(parents=True, exist_ok=True)
    n_samples = max(1, rows * 2 // total_rate)  # keyframes at 2 Hz per channel
    n_scenes = max(1, n_samples // 40)
    (d / "sensor.json").write_text(json.dumps([{"token": tok("s", c), "channel": c,
                                                "modality": "camera" if c.startswith("CAM") else c.split("_")[0].lower()}
                                               for c in channels], indent=0))
    (d / "calibrated_sensor.json").write_text(json.dumps([{"token": tok("cs", c), "sensor_token": tok("s", c),
                                                           "translation": [0, 0, 0], "rotation": [1, 0, 0, 0],
                                                           "camera_intrinsic": []} for c in channels], indent=0))
    (d / "log.json").write_text(json.dumps([{"token": tok("log", 0), "logfile": "n015-2018-07-18-11-07-57+0800",
                                             "vehicle": "n015", "date_captured": "2018-07-18",
                                             "location": "singapore-onenorth"}], indent=0))
    (d / "scene.json").write_text(json.dumps([{"token": tok("scene", i), "log_token": tok("log", 0), "nbr_samples": 40,
                                               "first_sample_token": "", "last_sample_token": "",
                                               "name": f"scene-{i:04d}", "description": "Night, rain"}
                                              for i in range(n_scenes)], indent=0))
    (d / "sample.json").write_text(json.dumps([{"token": tok("sample", i), "timestamp": i, "prev": "", "next": "",
                                                "scene_token": tok("scene", i * n_scenes // n_samples)}
                                               for i in range(n_samples)], indent=0))
    counts = {"rows": 0, "camera": 0, "camera_keyframes": 0}
    rng = np.random.default_rng(0)
    choice = rng.choice(len(channels), size=rows, p=np.array(rates) / total_rate)
    with open(d / "sample_data.json", "w") as f:
        f.write("[\n")
        for i in range(rows):
            c = channels[choice[i]]
            key = (i % 6) == 0
            cam = c.startswith("CAM")
            ext = ".jpg" if cam else (".pcd.bin" if c == "LIDAR_TOP" else ".pcd")
            ts = 1531883530000000 + i * 7000
            fn = f"{'samples' if key else 'sweeps'}/{c}/n015-2018-07-18-11-07-57+0800__{c}__{ts}{ext}"
            t = hashlib.md5(fn.encode()).hexdigest()
            f.write((",\n" if i else "") + "{\n"
                    f'"token": "{t}",\n"sample_token": "{tok("sample", i * n_samples // rows)}",\n'
                    f'"ego_pose_token": "{t}",\n"calibrated_sensor_token": "{tok("cs", c)}",\n'
                    f'"timestamp": {ts},\n"fileformat": "{ext.rsplit(".", 1)[-1]}",\n'
                    f'"is_key_frame": {"true" if key else "false"},\n"height": {900 if cam else 0},\n'
                    f'"width": {1600 if cam else 0},\n"filename": "{fn}",\n"prev": "{t}",\n"next": "{t}"\n}}')
            counts["rows"] += 1
            counts["camera"] += cam
            counts["camera_keyframes"] += cam and key
        f.write("\n]")
    counts["bytes"] = (d / "sample_data.json").stat().st_size
    return counts


_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import fsspec
from job.nuscenes import load_tables_dir
from job.sources import Selection
from job.values import CAMERA_CHANNELS
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after imports: what loading itself adds
sel = Selection(frozenset(CAMERA_CHANNELS), sys.argv[2] == "keyframes")
t0 = time.perf_counter()
t = load_tables_dir(fsspec.filesystem("file"), sys.argv[1], keep=sel.wants)
dt = time.perf_counter() - t0
print(json.dumps({"rows_kept": len(t), "seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "baseline_rss_mb": base / 1024, "arrays_mb": t.nbytes() / 1e6}))
"""


def run_tables(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tables-bench-") as tmp:
        d = Path(tmp) / "v1.0-trainval"
        t0 = time.perf_counter()
        counts = write_sample_data(d, args.tables_rows)
        print(f"# sample_data.json: {counts['rows']:,} rows, {counts['bytes'] / 1e9:.2f} GB, "
              f"{counts['camera']:,} camera rows, {counts['camera_keyframes']:,} camera keyframes "
              f"(written in {time.perf_counter() - t0:.0f}s)")
        print(f"# machine: {cpu_name()}, {os.cpu_count()} CPUs")
        print()
        print("| selection | rows kept | load time | peak RSS (process) | RSS above baseline | kept arrays |")
        print("|---|---:|---:|---:|---:|---:|")
        root = str(Path(__file__).resolve().parents[1])
        for mode in ("keyframes", "sweeps"):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(d), mode, root], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            label = "keyframes only (default)" if mode == "keyframes" else "all cameras (--include-sweeps)"
            print(f"| {label} | {r['rows_kept']:,} | {r['seconds']:.1f} s | {r['peak_rss_mb']:,.0f} MB | "
                  f"{r['peak_rss_mb'] - r['baseline_rss_mb']:,.0f} MB | {r['arrays_mb']:,.0f} MB |")


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # the bench data has no tables: skip the "no tables" warning
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=600, help="camera JPEGs in the archive (default 600)")
    ap.add_argument("--unique", type=int, default=24, help="distinct JPEGs among them (default 24)")
    ap.add_argument("--tables-rows", type=int, default=None,
                    help="measure loading a generated sample_data.json of this many rows instead")
    args = ap.parse_args()
    if args.tables_rows:
        run_tables(args)
    else:
        run_stream(args)


if __name__ == "__main__":
    main()
