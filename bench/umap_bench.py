"""Benchmark: time and peak memory of the UMAP projection at N points of D dims (default 200k x 768).

Each strategy runs in its own child process, so its peak resident memory is its own:

* ``full``     umap-learn fit_transform on every point
* ``sample``   fit on ``--fit-sample`` points, ``transform`` the rest (what ``job project`` does)
* ``faiss``    neighbours from a Faiss HNSW index fed to umap-learn as ``precomputed_knn``, fit on every point

The vectors are synthetic but shaped like image embeddings: unit length, a few hundred clusters
("scenes") whose members vary in a shared low-rank subspace plus isotropic noise (typical cosine
similarity 0.6-0.9 within a cluster, ~0.1-0.3 between clusters).

    python bench/umap_bench.py                      # all strategies at 200k x 768, markdown table at the end
    python bench/umap_bench.py --n 20000 --modes sample
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def synthetic_embeddings(n: int, dim: int, *, clusters: int = 400, rank: int = 32, seed: int = 0) -> np.ndarray:
    """Unit-length clustered vectors (n, dim) float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(rank)
    labels = rng.integers(0, clusters, n)
    out = np.empty((n, dim), np.float32)
    step = 50_000
    for s in range(0, n, step):
        m = min(step, n - s)
        x = centres[labels[s:s + m]] * 1.0
        x += rng.standard_normal((m, rank), dtype=np.float32) @ basis * 1.2
        x += rng.standard_normal((m, dim), dtype=np.float32) * 0.35
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + m] = x
    return out


def _child(args: argparse.Namespace) -> dict:
    from job.project import PeakMemory, UmapParams, compute_umap

    t0 = time.perf_counter()
    x = synthetic_embeddings(args.n, args.dim, seed=args.seed)
    gen_s = time.perf_counter() - t0
    base_mb = PeakMemory()._rss() / 2**20
    result: dict = {"mode": args.child, "n": args.n, "dim": args.dim, "data_mb": round(x.nbytes / 2**20, 1),
                    "generate_seconds": round(gen_s, 1)}
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    with PeakMemory() as mem:
        if args.child in ("full", "sample"):
            fit = args.n if args.child == "full" else args.fit_sample
            coords, info = compute_umap(x, UmapParams(fit_sample=fit, seed=args.seed, n_epochs=args.n_epochs),
                                        progress=lambda m: print(m, flush=True))
            result.update({k: info.get(k) for k in ("method", "fit_sample", "fit_seconds", "transform_seconds")})
        elif args.child == "faiss":
            import faiss
            import umap

            t1 = time.perf_counter()
            index = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.add(x)
            index.hnsw.efSearch = 64
            sims, nn = index.search(x, 15)
            result["knn_seconds"] = round(time.perf_counter() - t1, 1)
            print(f"faiss HNSW knn in {result['knn_seconds']} s", flush=True)
            del index
            dists = np.clip(1.0 - sims, 0.0, 2.0).astype(np.float32)
            t1 = time.perf_counter()
            reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, metric="cosine",
                                precomputed_knn=(nn, dists, None), n_epochs=args.n_epochs, low_memory=True)
            coords = reducer.fit_transform(x)
            result.update(method="umap fit, faiss hnsw neighbours", fit_sample=args.n,
                          fit_seconds=round(time.perf_counter() - t1, 1))
        else:
            raise SystemExit(f"unknown mode {args.child}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["peak_rss_mb"] = round(mem.peak_mb, 0)
    result["rss_before_mb"] = round(base_mb, 0)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    result["ru_maxrss_mb"] = round(ru.ru_maxrss / 1024, 0)
    result["cpu_seconds"] = round(ru.ru_utime + ru.ru_stime - cpu0, 1)  # all threads; less sensitive to a busy host
    result["finite"] = bool(np.isfinite(coords).all())
    return result


def machine() -> str:
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem} RAM, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--fit-sample", type=int, default=100_000)
    ap.add_argument("--n-epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="sample,full,faiss")
    ap.add_argument("--json", default=None, help="append one JSON line per result here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(args)), flush=True)
        return 0
    import umap

    print(f"machine: {machine()}; umap-learn {umap.__version__}", flush=True)
    rows = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--n", str(args.n), "--dim", str(args.dim),
               "--fit-sample", str(args.fit_sample), "--seed", str(args.seed)]
        if args.n_epochs:
            cmd += ["--n-epochs", str(args.n_epochs)]
        print(f"== {mode}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        res = None
        for line in proc.stdout:  # type: ignore[union-attr]
            print("   " + line.rstrip(), flush=True)
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
        proc.wait()
        if res is None:
            print(f"   {mode} failed (exit {proc.returncode})", flush=True)
            continue
        rows.append(res)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**res, "machine": machine()}) + "\n")
    print("\n| strategy | points fitted | fit s | transform / knn s | total s | CPU s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = r.get("transform_seconds") or r.get("knn_seconds") or "-"
        print(f"| {r['method']} | {r['fit_sample']:,} | {r['fit_seconds']} | {extra} | {r['seconds']} | "
              f"{r.get('cpu_seconds', '-')} | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
