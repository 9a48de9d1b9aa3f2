"""Faiss index benchmark: flat, ivfpq, hnsw and auto on clustered synthetic CLIP-like vectors.

    python bench/index_bench.py                      # 200k and 1.4M x 768 (~20-30 min on 2 cores)
    python bench/index_bench.py --sizes 20000 --json out.json

For each size: build time, peak extra memory (RSS) while building, size on disk, recall@1/@10 against
exact search on held-out queries (own id removed), and queries/s in batch and one at a time, with
ratios against flat. Indexes are built by ``job.index.build_from_arrays``, the code ``job index`` runs.

The generator (``clustered``) imitates CLIP image embeddings of driving video: unit vectors in a cone
around a shared direction (random pairs have cosine ~0.45, as CLIP image embeddings do), grouped in
n/300 clusters (scenes x cameras) of log-normal sizes; inside a cluster points move along a random
16-dimensional subspace (consecutive frames) plus a little isotropic noise, so nearest neighbours have
cosine ~0.89 and the 10th ~0.86.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from job.config import IndexConfig, IndexOverrides
from job.index import (
    EvalSet,
    build_from_arrays,
    evaluate,
    held_out,
    load_index,
    plan_index,
    set_search_params,
)

log = logging.getLogger("bench")


def clustered(n: int, d: int = 768, seed: int = 0, chunk: int = 65_536, labels_out: list | None = None,
              centres_out: list | None = None) -> np.ndarray:
    """n CLIP-like unit vectors: 0.7·shared + 0.6·cluster centre + 0.45·16-d within-cluster walk + 0.25·noise.

    ``labels_out``: a list that receives each row's cluster (scene x camera) label array; ``centres_out``: one that
    receives the cluster centres.
    """
    rng = np.random.default_rng(seed)
    ncl = max(1, n // 300)
    rank = 16
    mu = rng.standard_normal(d).astype(np.float32)
    mu /= np.linalg.norm(mu)
    centres = rng.standard_normal((ncl, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.lognormal(0.0, 1.0, ncl)
    labels = rng.choice(ncl, size=n, p=sizes / sizes.sum())
    if labels_out is not None:
        labels_out.append(labels)
    if centres_out is not None:
        centres_out.append(centres)
    basis_seed = int(rng.integers(1 << 31))
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        lab = labels[s:e]
        z = rng.standard_normal((e - s, rank)).astype(np.float32)
        walk = np.empty((e - s, d), np.float32)
        for k in np.unique(lab):
            rows = np.nonzero(lab == k)[0]
            basis = np.random.default_rng(basis_seed + int(k)).standard_normal((rank, d)).astype(np.float32)
            walk[rows] = z[rows] @ (basis / np.sqrt(d))
        x = 0.7 * mu + 0.6 * centres[lab] + 0.45 / np.sqrt(rank) * walk
        x += 0.25 / np.sqrt(d) * rng.standard_normal((e - s, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    return out


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 20 ms."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:  # noqa: PYI034 - a plain class, never subclassed
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.end = self._proc.memory_info().rss
        self.peak = max(self.peak, self.end)


def one_at_a_time_qps(index: Any, xq: np.ndarray, seconds: float = 2.0) -> float:
    """Queries/s sending one query per call on one thread (how a server answers single requests)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        t0 = time.perf_counter()
        done = 0
        while time.perf_counter() - t0 < seconds and done < len(xq) * 4:
            index.search(xq[done % len(xq)][None], 10)
            done += 1
        return done / (time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)


def bench_size(n: int, d: int, types: list[str], queries: int, workdir: str, max_memory: str | None,
               rounds: int = 3) -> list[dict]:
    """Build every type (files kept), then measure all of them in interleaved rounds (best round counts)."""
    t0 = time.perf_counter()
    x = clustered(n, d)
    ids = np.arange(n, dtype=np.int64) * 7919 + 12345  # not 0..n-1, like the embeddings' path hashes
    log.info("n=%d: generated in %.1f s", n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    evaluation = held_out(x, ids, queries)
    log.info("n=%d: exact neighbours of %d held-out queries in %.1f s", n, queries, time.perf_counter() - t0)
    ev = evaluation[2]
    test = EvalSet(ev.xq[len(ev.xq) // 2:], ev.qids[len(ev.qids) // 2:], ev.truth[len(ev.truth) // 2:])
    rows: list[dict] = []
    built: dict[str, dict] = {}
    for kind in types:
        icfg = IndexConfig(kind, max_memory=max_memory if kind == "auto" else None)
        plan = plan_index(n, d, icfg, IndexOverrides(queries=queries))
        if kind == "auto" and plan.factory in built:
            log.info("n=%d auto: %s (same index as %s; not rebuilt)", n, plan.reason, built[plan.factory]["type"])
            rows.append({**built[plan.factory], "type": "auto", "reason": plan.reason,
                         "same_as": built[plan.factory]["type"]})
            continue
        path = os.path.join(workdir, f"{kind}-{n}.faiss")
        gc.collect()
        with PeakRSS() as mem:
            meta = build_from_arrays(x, ids, path, icfg, IndexOverrides(queries=queries), progress=False,
                                     evaluation=evaluation)
        row = {
            "n": n, "d": d, "type": kind, "factory": meta.factory, "search_params": meta.search_params,
            "reason": meta.reason, "build_s": meta.build_seconds, "timings": meta.timings,
            "peak_extra_rss_bytes": int(mem.peak - mem.start), "disk_bytes": meta.size_bytes,
            "target_met": meta.target_met, "tuning": meta.tuning, "path": path,
        }
        rows.append(row)
        built[plan.factory] = row
        log.info("n=%d %s built: %s", n, kind, json.dumps({k: v for k, v in row.items() if k != "tuning"}))
    del x
    gc.collect()
    # Measure: the machine is shared, so every index is measured in each round and its best round kept.
    for r in range(rounds):
        for row in (row for row in rows if "same_as" not in row):
            index = load_index(row["path"])
            set_search_params(index, row["search_params"])
            batch = evaluate(index, test, min_seconds=3.0)
            single = one_at_a_time_qps(index, test.xq)
            row["recall@1"], row["recall@10"] = round(batch["recall@1"], 4), round(batch["recall@10"], 4)
            row["qps_batch"] = round(max(row.get("qps_batch", 0.0), batch["qps"]), 1)
            row["qps_single"] = round(max(row.get("qps_single", 0.0), single), 1)
            row.setdefault("load_average", []).append(round(os.getloadavg()[0], 2))
            log.info("n=%d %s round %d: recall@10 %.4f, %.0f q/s batch, %.0f q/s one by one, load %.2f",
                     n, row["type"], r + 1, batch["recall@10"], batch["qps"], single, os.getloadavg()[0])
            del index
            gc.collect()
    for row in rows:
        if "same_as" in row:
            src = next(r for r in rows if r["type"] == row["same_as"])
            row.update({k: src[k] for k in ("recall@1", "recall@10", "qps_batch", "qps_single", "load_average")})
    for row in rows:
        if os.path.exists(row["path"]):
            os.remove(row["path"])
    flat = next((r for r in rows if r["type"] == "flat"), None)
    for r in rows:
        if flat:
            r["qps_vs_flat"] = round(r["qps_batch"] / flat["qps_batch"], 2)
            r["qps_single_vs_flat"] = round(r["qps_single"] / flat["qps_single"], 2)
            r["disk_vs_flat"] = round(r["disk_bytes"] / flat["disk_bytes"], 3)
    return rows


def machine() -> dict[str, Any]:
    import faiss
    import psutil

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "faiss": getattr(faiss, "__version__", "?"), "faiss_threads": faiss.omp_get_max_threads(),
            "load_average_at_start": os.getloadavg()}


def markdown(rows: list[dict]) -> str:
    head = ("| n | type | index (search params) | build s | peak extra RAM | disk | recall@1 | recall@10 | "
            "queries/s batch (x flat) | queries/s one by one, 1 thread (x flat) |")
    out = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = r["factory"] + (f" ({r['search_params']})" if r["search_params"] else "")
        out.append(f"| {r['n']:,} | {r['type']} | {label} | {r['build_s']:.1f} | "
                   f"{r['peak_extra_rss_bytes'] / 2**30:.2f} GiB | {r['disk_bytes'] / 2**30:.2f} GiB | "
                   f"{r['recall@1']:.3f} | {r['recall@10']:.3f} | {r['qps_batch']:,.0f} ({r.get('qps_vs_flat', 1):.1f}x) | "
                   f"{r['qps_single']:,.0f} ({r.get('qps_single_vs_flat', 1):.1f}x) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="200000,1400000", help="comma-separated vector counts")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--types", default="flat,hnsw,ivfpq,auto")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries (half tune, half measure)")
    p.add_argument("--max-memory", default=None, help="budget for auto (default: half the available memory)")
    p.add_argument("--workdir", default=None, help="where index files are written (default: a temp dir)")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    info = machine()
    log.info("machine: %s", info)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        for n in (int(s) for s in args.sizes.split(",")):
            rows += bench_size(n, args.dim, args.types.split(","), args.queries, work, args.max_memory)
            if args.json:
                Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    print(markdown(rows))
    for r in rows:
        if r["type"] == "auto":
            print(f"auto at n={r['n']:,}: {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
