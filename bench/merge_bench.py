"""Benchmark: the cost of scale-out in the job — shards + ``job merge`` against one unsplit run.

Two measurements, both printed as ratios against a baseline measured in the same process:

* ``fixture``: the test nuScenes data (108 keyframes, 3 keyframe archives + meta, ViT-B-32 random init, CPU)
  embedded once unsplit (``job run --no-index --no-project``), then as N = 3 shards run one after the other plus
  ``job merge``; checks that the merged run equals the unsplit one and reports the overhead.
* ``synthetic``: N shard run folders holding ``--n`` synthetic unit vectors (default 1.4M x 768, the size of all
  nuScenes camera frames), then ``job merge`` timed phase by phase (lay-out of the shards' parts, Faiss index
  ``auto``, UMAP) with the peak resident memory of the process — what the merge job's instance must hold.

    python bench/merge_bench.py                                   # both, 1.4M x 768 in 10 shards, UMAP included
    python bench/merge_bench.py --modes synthetic --n 200000 --no-umap
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from umap_bench import synthetic_embeddings  # noqa: E402

from job import fsutil  # noqa: E402
from job.cli import main as job_main  # noqa: E402
from job.config import JobConfig, OutputConfig, ProjectConfig  # noqa: E402
from job.project import PeakMemory  # noqa: E402
from job.runfolder import Counts, Manifest, ModelInfo, Outputs, RunLayout, read_manifest, write_manifest  # noqa: E402
from job.runfolder import FAILURES_SCHEMA, embedding_schema  # noqa: E402
from job.runfolder import read_table, write_table  # noqa: E402

QUIET = ["--no-progress", "--log-level", "WARNING"]
MODEL = ["--model", "ViT-B-32", "--pretrained", "none", "--workers", "0"]


def _timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    assert job_main(argv + QUIET) == 0, argv
    return time.perf_counter() - t0


def bench_fixture(work: Path, n_shards: int) -> dict:
    from nuscenes_fixture import make_nuscenes_fixture, pack_trainval_archives

    info = make_nuscenes_fixture(work / "ds", split="v1.0-trainval")
    arch = pack_trainval_archives(info, work / "arch", parts=3)
    sources = [a for p in [*arch["keyframes"], *arch["meta"]] for a in ("--source", str(p))]
    whole_s = _timed(["run", *sources, *MODEL, "--out", str(work / "whole"), "--no-index", "--no-project"])
    shard_s = [_timed(["run", *sources, *MODEL, "--out", str(work / "split"), "--shard", f"{i}/{n_shards}"])
               for i in range(n_shards)]
    merge_s = _timed(["merge", "--run", str(work / "split"), "--no-index", "--no-project"])
    a, b = (read_table(RunLayout(str(work / d)).embeddings).sort_by("id") for d in ("whole", "split"))
    same = a.column("id").equals(b.column("id")) and np.allclose(
        np.stack(a.column("embedding").to_numpy(zero_copy_only=False)),
        np.stack(b.column("embedding").to_numpy(zero_copy_only=False)), atol=1e-6)
    total = sum(shard_s) + merge_s
    return {"images": a.num_rows, "unsplit_s": round(whole_s, 2), "shards_s": [round(s, 2) for s in shard_s],
            "merge_s": round(merge_s, 3), "shards_plus_merge_s": round(total, 2),
            "overhead_x": round(total / whole_s, 3), "merged_equals_unsplit": bool(same)}


def _write_shard(layout: RunLayout, x: np.ndarray, ids: np.ndarray, index: int, count: int) -> None:
    """A finished shard run folder as ``job run --shard`` leaves it (parts of 50k rows, _run.json, manifest)."""
    import pyarrow as pa

    schema = embedding_schema(x.shape[1])
    step = 50_000
    for k, s in enumerate(range(0, len(x), step)):
        part_ids = ids[s:s + step]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x[s:s + step].reshape(-1), pa.float32()), x.shape[1])
        table = pa.Table.from_arrays(
            [pa.array(part_ids, pa.int64()), pa.array([f"synthetic/{i}.jpg" for i in part_ids]), vectors,
             pa.array(np.full(len(part_ids), 1600, np.int32)), pa.array(np.full(len(part_ids), 900, np.int32))],
            schema=schema)
        write_table(fsutil.join(layout.embeddings, f"part-{k:05d}.parquet"), table)
        write_table(fsutil.join(layout.failures, f"part-{k:05d}.parquet"), FAILURES_SCHEMA.empty_table())
    fsutil.write_json(layout.state, {"model": "synthetic", "pool": "mean", "weights_sha256": "0" * 64,
                                     "shard": [index, count]})
    config = JobConfig(output=OutputConfig(out=str(layout.run_dir))).to_dict()
    config["source"]["shard"] = [index, count]
    write_manifest(layout, Manifest(
        status="succeeded", started="", finished="", host=platform.node(), run_dir=layout.run_dir, config=config,
        model=ModelInfo(name="synthetic", pretrained="none", weights_sha256="0" * 64, pool="mean", image_size=224,
                        embed_dim=x.shape[1]),
        counts=Counts(seen=len(x), embedded=len(x), failed=0, embedded_this_attempt=len(x)),
        outputs=Outputs(embeddings="embeddings.parquet", failures="failures.parquet", state="_run.json"),
        timings={"embed_loop_s": 1.0}, source={"shard": {"index": index, "count": count, "mode": "hash"}}))


def bench_synthetic(work: Path, n: int, dim: int, n_shards: int, umap: bool) -> dict:
    from job.merge import merge_run
    from job.steps import finish_run

    t0 = time.perf_counter()
    x = synthetic_embeddings(n, dim)
    root = RunLayout(str(work / "synthetic"))
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    for i in range(n_shards):
        lo, hi = bounds[i], bounds[i + 1]
        _write_shard(root.shard(i), x[lo:hi], np.arange(lo, hi, dtype=np.int64), i, n_shards)
    gen_s = time.perf_counter() - t0
    del x
    cfg = JobConfig(output=OutputConfig(out=root.run_dir), project=ProjectConfig(enabled=umap))
    phases: dict[str, float] = {}
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        merge_run(dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, enabled=False),
                                      project=ProjectConfig(enabled=False)))
        phases["check_and_lay_out_s"] = time.perf_counter() - t0
        m = read_manifest(root)
        t1 = time.perf_counter()
        m = finish_run(cfg, root, m)
        phases["index_and_umap_s"] = time.perf_counter() - t1
    out = {"n": n, "dim": dim, "shards": n_shards, "generate_s": round(gen_s, 1),
           "phases_s": {k: round(v, 2) for k, v in phases.items()},
           "index_build_s": m.index.build_seconds if m.index else None,
           "index_factory": m.index.factory if m.index else None,
           "umap_s": m.projection.seconds if m.projection else None,
           "peak_rss_gib": round(mem.peak / 2**30, 2),
           "vectors_gib": round(n * dim * 4 / 2**30, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="fixture,synthetic")
    ap.add_argument("--n", type=int, default=1_400_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--no-umap", action="store_true")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.keep or tempfile.mkdtemp(prefix="merge-bench-"))
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "python": platform.python_version()}
    try:
        if "fixture" in args.modes:
            results["fixture"] = bench_fixture(work / "fixture", 3)
            print(json.dumps(results["fixture"]), flush=True)
        if "synthetic" in args.modes:
            results["synthetic"] = bench_synthetic(work / "synthetic", args.n, args.dim, args.shards,
                                                   not args.no_umap)
            print(json.dumps(results["synthetic"]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "merge_bench.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
