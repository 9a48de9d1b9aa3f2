"""The faiss-gpu wheel on a machine without a GPU vs faiss-cpu: the same CPU work, timed in each (the lock swapped one for
the other; on the CPU nothing should change), and the CPU part of the GPU exact search (float32 re-scoring of the
float16 candidates), which runs here as it will on the instance.

    python bench/faiss_wheel_bench.py --baseline /tmp/venv-faisscpu/bin/python   # faiss-cpu in a scratch venv
    python bench/faiss_wheel_bench.py --rescore-only

Workloads (d = 768, unit vectors in clusters, seed 0): ``knn`` exact search of 1,000 queries among 100,000 vectors
(``faiss.knn``, what job.index.exact runs on the CPU); ``ivfpq`` train IVF1024,PQ96x8 on 40,000 vectors and add
100,000; ``hnsw`` add 20,000 vectors to HNSW32 (efConstruction 40). Each workload runs ``--reps`` times per wheel, each
in a fresh process (OpenBLAS on one thread, as the job trains), wheels interleaved (A B A B ...); the median and the
ratio (this venv / baseline) are printed.
``rescore``: job.index.exact.rescore of 65,536 queries x 18 candidates (k = 10 + RESCORE_EXTRA) over a 204,894 x 768
base, in this process; per-query time and the time for 1.4M queries (arithmetic, single thread).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
import numpy as np
import faiss
what, d = sys.argv[1], 768
rng = np.random.default_rng(0)
def data(n):
    c = rng.standard_normal((256, d)).astype(np.float32)
    x = c[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
x = data(100_000)
t0 = time.perf_counter()
if what == "knn":
    faiss.knn(x[:1000], x, 11, metric=faiss.METRIC_INNER_PRODUCT)
elif what == "ivfpq":
    ix = faiss.index_factory(d, "IVF1024,PQ96x8", faiss.METRIC_INNER_PRODUCT)
    ix.cp.niter = 10
    ix.train(x[:40_000]); ix.add(x)
elif what == "hnsw":
    ix = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT); ix.hnsw.efConstruction = 40; ix.add(x[:20_000])
s = time.perf_counter() - t0
from importlib.metadata import version, PackageNotFoundError
def v(p):
    try: return version(p)
    except PackageNotFoundError: return None
print(json.dumps({"seconds": s, "wheel": "faiss-gpu " + v("faiss-gpu") if v("faiss-gpu") else "faiss-cpu " + str(v("faiss-cpu")),
                  "gpus": faiss.get_num_gpus(), "threads": faiss.omp_get_max_threads()}))
"""


def _run(python: str, what: str) -> dict:
    # BLAS on one thread, Faiss' OpenMP on all cores: what job.index runs (single_threaded_blas); OpenBLAS's own
    # threads on top of Faiss' made k-means many times slower on this shared 2-core machine
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([python, "-c", CHILD, what], capture_output=True, text=True, timeout=1800, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wheels(baseline: str, reps: int) -> list[dict]:
    rows = []
    for what in ("knn", "ivfpq", "hnsw"):
        times: dict[str, list[float]] = {"this": [], "baseline": []}
        names = {}
        for _ in range(reps):
            for who, py in (("baseline", baseline), ("this", sys.executable)):
                r = _run(py, what)
                times[who].append(r["seconds"])
                names[who] = f"{r['wheel']} (GPUs seen {r['gpus']}, {r['threads']} threads)"
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"workload": what, "this_s": round(med["this"], 3), "baseline_s": round(med["baseline"], 3),
                     "ratio": round(med["this"] / med["baseline"], 3), "this": names["this"],
                     "baseline": names["baseline"], "runs": {k: [round(t, 3) for t in v] for k, v in times.items()}})
        print(f"{what:6s} {names['this']}: {med['this']:.2f} s | {names['baseline']}: {med['baseline']:.2f} s | "
              f"ratio {med['this'] / med['baseline']:.3f}", flush=True)
    return rows


def rescore_cost() -> dict:
    from job.index.exact import RESCORE_EXTRA, rescore

    rng = np.random.default_rng(0)
    n, d, nq, k = 204_894, 768, 65_536, 10
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xq = x[:nq]
    cand = rng.integers(0, n, (nq, k + RESCORE_EXTRA))
    rescore(xq[:1000], x, cand[:1000], k)  # warm
    t0 = time.perf_counter()
    rescore(xq, x, cand, k)
    s = time.perf_counter() - t0
    per_q = s / nq
    out = {"queries": nq, "candidates": k + RESCORE_EXTRA, "base": n, "seconds": round(s, 3),
           "us_per_query": round(per_q * 1e6, 2), "at_1.4M_s_estimate": round(per_q * 1_400_000, 1)}
    print(f"rescore: {nq} queries x {k + RESCORE_EXTRA} candidates over {n} x {d}: {s:.2f} s, "
          f"{per_q * 1e6:.1f} us/query -> ~{per_q * 1.4e6:.0f} s for 1.4M queries (one thread)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="python of a venv with faiss-cpu (and numpy) to compare with")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rescore-only", action="store_true")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"load average at start: {' '.join(load)}", flush=True)
    res: dict = {"load_at_start": load}
    if not a.rescore_only:
        if not a.baseline:
            ap.error("--baseline PYTHON (a venv with faiss-cpu) or --rescore-only")
        res["wheels"] = wheels(a.baseline, a.reps)
    res["rescore"] = rescore_cost()
    with open("/proc/loadavg") as f:
        res["load_at_end"] = f.read().split()[:3]
    print(f"load average at end: {' '.join(res['load_at_end'])}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
