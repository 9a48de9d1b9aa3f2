"""The whole ``job curate`` command on a synthetic run folder at the sizes users run: wall time and peak memory of
the command as a user runs it (one process, from reading the run to the manifest), with the machine's load.

    .venv/bin/python bench/curate_command_bench.py --make 1400000 --out /tmp/curate_1400k    # the run folder, once
    flock /tmp/heavy.lock .venv/bin/python bench/curate_command_bench.py --run /tmp/curate_1400k --select 10000

The run folder holds what an embedded nuScenes run holds for curation: ``embeddings.parquet/part-*.parquet`` with
``id`` (``path_id`` of the path), ``path``, ``embedding`` (768 floats: ``index_bench.clustered``, CLIP-like, with
planted copies as ``tests/curate_data.planted`` makes them: 2 % copies, half re-encodes at cosine 0.999-0.99995, half
near copies at 0.96-0.999), ``content_hash`` (the re-encodes' distinct, one in ten copies byte-identical to its
source), and the nuScenes columns curation reads — scene, channel (6 cameras), timestamp (2 Hz), ego pose (a car that
stands still in one scene in ten), location, ``sample_data_token``. No manifest: ``job curate`` on bare embeddings.
The measurement runs ``python -m job curate`` under ``/usr/bin/time -v`` (maximum resident set size of the process)
and reports its wall time, peak RSS, the printed summary and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from index_bench import clustered  # noqa: E402

from curate_data import planted  # noqa: E402
from job.runfolder import path_id  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "curate_command_bench.json"
PART_ROWS = 65_536
CHANNELS = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")


def make_run(n: int, out: Path, seed: int = 0) -> None:
    """A run folder of about ``n`` images (module docstring)."""
    x, src = planted(clustered(n - int(n * 0.02), seed=seed))
    n = len(x)
    rng = np.random.default_rng(seed + 7)
    frame = np.arange(n)
    scene = frame // 240  # 40 frames of 6 cameras a scene
    channel = np.array(CHANNELS)[frame % 6]
    ts = (1_500_000_000_000_000 + scene * 100_000_000 + (frame % 240 // 6) * 500_000).astype(np.int64)
    still = scene % 10 == 0
    ex = np.where(still, scene * 1000.0, scene * 1000.0 + (frame % 240 // 6) * 5.0) + rng.normal(0, 0.03, n)
    ey = rng.normal(0, 0.03, n)
    hashes = rng.bytes(16 * n)
    hash_col = [hashes[16 * i:16 * i + 16] for i in range(n)]
    copies = np.nonzero(src >= 0)[0]
    exact = copies[::10]
    for c in exact:  # one copy in ten is byte-identical to its source (and the same vector)
        hash_col[c] = hash_col[src[c]]
        x[c] = x[src[c]]
    paths = [f"samples/{ch}/n{s:06d}__{ch}__{t}.jpg" for s, ch, t in zip(scene, channel, ts)]
    ids = np.array([path_id(p) for p in paths], np.int64)
    folder = out / "embeddings.parquet"
    folder.mkdir(parents=True, exist_ok=True)
    dim = x.shape[1]
    for part, s in enumerate(range(0, n, PART_ROWS)):
        e = min(n, s + PART_ROWS)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[s:e].reshape(-1), pa.float32()), dim)
        table = pa.table({
            "id": pa.array(ids[s:e], pa.int64()), "path": paths[s:e], "embedding": emb,
            "width": pa.array(np.full(e - s, 1600), pa.int32()), "height": pa.array(np.full(e - s, 900), pa.int32()),
            "content_hash": pa.array(hash_col[s:e], pa.binary(16)),
            "scene_token": [f"scene{v:06d}" for v in scene[s:e]], "channel": channel[s:e].tolist(),
            "timestamp": pa.array(ts[s:e], pa.int64()), "ego_x": ex[s:e], "ego_y": ey[s:e],
            "location": np.array(LOCATIONS)[scene[s:e] % 4].tolist(),
            "sample_data_token": [f"sd{i:016x}" for i in ids[s:e] & 0xFFFFFFFFFFFF]})
        pq.write_table(table, folder / f"part-{part:05d}-bench.parquet")
    print(json.dumps({"made": str(out), "n": n, "copies": int(len(copies)), "exact_copies": int(len(exact))}))


def measure(run: Path, argv: list[str]) -> dict:
    """``python -m job curate --run RUN ARGV`` under ``/usr/bin/time -v``: wall time, peak RSS, load."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "job", "curate", "--run", str(run), "--no-progress", *argv]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"command": " ".join(["python -m job curate --run", str(run), *argv]), "returncode": done.returncode,
            "wall_s": round(wall, 1), "peak_rss_gib": round(peak_kib / 2**20, 2),
            "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
            "summary": done.stdout.strip().splitlines(), "stderr_tail": done.stderr.strip().splitlines()[-25:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--make", type=int, default=None, help="write a run folder of this many images to --out")
    p.add_argument("--out", default=None)
    p.add_argument("--run", default=None, help="measure job curate on this run folder")
    p.add_argument("--json", default=str(RESULTS))
    args, rest = p.parse_known_args()
    if args.make:
        make_run(args.make, Path(args.out))
    if args.run:
        r = measure(Path(args.run), rest)
        path = Path(args.json)
        results = json.loads(path.read_text()) if path.exists() else []
        results.append(r)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
