"""Curation benchmark: k-NN graph from the run's index, near duplicates vs exact truth, diverse selection, FiftyOne.

    python bench/curate_bench.py --parts knn --sizes 204894,1400000      # k-NN graph (index built first, not timed)
    python bench/curate_bench.py --parts near,select                     # the rest (~30 min on 2 cores)

Vectors: ``index_bench.clustered`` (CLIP-like, 768-d, unit length). Each measured step runs in a child process
(``--child``) that loads what it needs and reports its own time and peak RSS (``ru_maxrss``), so one method's
memory never hides another's. Results are merged into ``--json`` (default bench/results/curate_bench.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_bench import clustered, machine  # noqa: E402

log = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results" / "curate_bench.json"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def ids_for(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 7919 + 12345  # not 0..n-1, like the embeddings' path hashes


def child(args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run ``curate_bench.py --child ...`` and return the JSON it prints last."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    log.info("child: %s", " ".join(args))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- k-NN graph


def prepare_knn(n: int, work: Path) -> dict[str, Any]:
    """Vectors (saved as .npy) and the run's index as ``job index`` builds it (auto type); not timed."""
    from job.config import IndexConfig, IndexOverrides
    from job.index import build_from_arrays

    vec = work / f"x-{n}.npy"
    idx = work / f"index-{n}.faiss"
    if not vec.exists():
        np.save(vec, clustered(n))
    info: dict[str, Any] = {}
    if not idx.exists():
        x = np.load(vec)
        meta = build_from_arrays(x, ids_for(n), str(idx), IndexConfig("auto"), IndexOverrides(), progress=False)
        info = {k: v for k, v in meta.to_dict().items() if k in ("factory", "search_params", "recall@10",
                                                                   "build_seconds")}
        del x
    return {"vectors": str(vec), "index": str(idx), "index_info": info}


def child_knn(vec: str, index_path: str, method: str) -> dict[str, Any]:
    from job.curate import knn_graph
    from job.index import load_index

    x = np.load(vec)
    ids = ids_for(len(x))
    index = load_index(index_path) if method != "exact" else None
    t0 = time.perf_counter()
    g = knn_graph(x, ids, 10, index=index, method=method, progress=False)
    seconds = time.perf_counter() - t0
    return {"n": len(x), "seconds": round(seconds, 1), "peak_rss_gib": round(peak_rss_gib(), 2), **g.summary(),
            "load_average": os.getloadavg()}


# ----------------------------------------------------------------------------------------------- near duplicates


def planted(n: int, share: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n vectors: clustered ones plus ``share`` re-encode-like copies (cosine ~0.999 to their source, in groups of
    1-6 copies, one group of 40 to go past k); returns (vectors, source row of each copy or -1)."""
    m = int(n * share)
    x = clustered(n - m, seed=seed)
    rng = np.random.default_rng(seed + 1)
    sizes = rng.integers(1, 7, m)
    sizes[0] = 40
    src = np.repeat(rng.choice(n - m, len(sizes), replace=False), sizes)[:m]
    noise = rng.uniform(0.02, 0.05, (m, 1)).astype(np.float32)
    y = x[src] + noise * rng.standard_normal((m, x.shape[1])).astype(np.float32) / np.sqrt(x.shape[1])
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return np.concatenate([x, y]), np.r_[np.full(n - m, -1), src]


def child_ours(n: int, out: str) -> dict[str, Any]:
    """Our duplicates + uniqueness on the planted set (exact graph: no index at this size)."""
    from job.curate import find_duplicates, keep_rank, knn_graph, uniqueness

    x, _ = planted(n)
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    g = knn_graph(x, ids, 10, progress=False)
    t1 = time.perf_counter()
    d = find_duplicates(g, x, keep_rank(ids))
    u = uniqueness(g)
    seconds = time.perf_counter() - t0
    np.save(out, np.sort(d.rows))
    np.save(out.replace(".npy", "-u.npy"), u)
    return {"n": n, "seconds": round(seconds, 1), "graph_s": round(t1 - t0, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
            "threshold": d.threshold.cosine if d.threshold else None, "rule": d.threshold.rule if d.threshold else "",
            "duplicates": len(d), "graph": g.method}


def child_fiftyone(n: int, threshold: float, out: str, center: str) -> dict[str, Any]:
    """FiftyOne Brain's published algorithms on the same vectors (fiftyone/brain/internal/core/sklearn.py above
    15,000 samples): scikit-learn brute-force NearestNeighbors (euclidean on unit vectors, its cosine route), the
    4-neighbour uniqueness with ``dists[:, 1:]`` and weights 0.6/0.3/0.1, ``radius_neighbors`` at
    ``sqrt(2 * thresh)`` and the keep-first loop of ``_remove_duplicates_thresh``. ``center='yes'`` subtracts the
    mean first, as FiftyOne does; 'no' keeps the vectors as they are, so the threshold means what ours means."""
    import sklearn.neighbors as skn

    x, _ = planted(n)
    t0 = time.perf_counter()
    e = x - x.mean(axis=0, keepdims=True) if center == "yes" else x
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    nn = skn.NearestNeighbors(metric="euclidean").fit(e)
    dists, _ = nn.kneighbors(n_neighbors=4)
    u = np.mean(dists[:, 1:] * [0.6, 0.3, 0.1], axis=1)
    u /= u.max()
    inds = nn.radius_neighbors(radius=np.sqrt(2.0 * float(threshold)), return_distance=False)
    keep = set(range(n))
    for ind in range(n):
        if ind in keep:
            keep -= {i for i in inds[ind] if i > ind}
    seconds = time.perf_counter() - t0
    dup = np.array(sorted(set(range(n)) - keep), np.int64)
    np.save(out, dup)
    return {"n": n, "seconds": round(seconds, 1), "peak_rss_gib": round(peak_rss_gib(), 2), "duplicates": len(dup),
            "center": center}


def exact_truth(x: np.ndarray, t: float) -> np.ndarray:
    """Rows a greedy keep-first walk over *all* pairs at cosine >= t flags (blocked exact pairwise comparison)."""
    n = len(x)
    nbrs: list[np.ndarray] = []
    for s in range(0, n, 2048):
        sims = x[s:s + 2048] @ x.T
        nbrs += [np.nonzero(row >= t)[0] for row in sims]
    claimed = np.zeros(n, bool)
    for r in range(n):
        if not claimed[r]:
            nb = nbrs[r][nbrs[r] != r]
            claimed[nb[~claimed[nb]]] = True
    return np.nonzero(claimed)[0]


def run_near(sizes: list[int], work: Path, results: dict[str, Any]) -> None:
    rows = results.setdefault("near", [])
    for n in sizes:
        ours = child(["ours", str(n), str(work / f"ours-{n}.npy")])
        mine = np.load(work / f"ours-{n}.npy")
        row: dict[str, Any] = {"n": n, "ours": ours}
        if n <= 20_000:
            x, src = planted(n)
            truth = exact_truth(x, ours["threshold"])
            tp = len(np.intersect1d(mine, truth))
            row["vs_exact_pairwise"] = {"truth": len(truth), "found": len(mine), "precision": tp / max(1, len(mine)),
                                        "recall": tp / max(1, len(truth)),
                                        "planted_found": int(np.isin(np.nonzero(src >= 0)[0], mine).sum()),
                                        "planted": int((src >= 0).sum())}
        fo = child(["fiftyone", str(n), str(1 - ours["threshold"]), str(work / f"fo-{n}.npy"), "no"], timeout=7200)
        theirs = np.load(work / f"fo-{n}.npy")
        fo["same_duplicates"] = bool(np.array_equal(theirs, mine))
        fo["symmetric_difference"] = int(len(np.setxor1d(theirs, mine)))
        row["fiftyone"] = fo
        row["time_ratio"] = round(fo["seconds"] / max(ours["seconds"], 1e-9), 2)
        row["memory_ratio"] = round(fo["peak_rss_gib"] / max(ours["peak_rss_gib"], 1e-9), 2)
        rows[:] = [r for r in rows if r.get("n") != n] + [row]
        save(results)
        print(json.dumps(row, default=str), flush=True)


# ----------------------------------------------------------------------------------------------- selection


def child_select(n: int, count: int, dims: str) -> dict[str, Any]:
    """``select_diverse`` on n clustered vectors; coverage radius over all points (n <= 20k) or a 20k sample."""
    from job.curate import select_diverse
    from job.index.exact import exact_search

    x = clustered(n, seed=11)
    t0 = time.perf_counter()
    s = select_diverse(x, np.arange(n), count, dims=int(dims) if dims != "auto" else None, measure_radius=False,
                       progress=False)
    seconds = time.perf_counter() - t0
    probe = np.arange(n) if n <= 20_000 else np.random.default_rng(0).choice(n, 20_000, replace=False)

    def radius(picks: np.ndarray) -> float:
        sims = exact_search(x[probe], x[picks], 1)[1][:, 0]
        return float(np.sqrt(max(0.0, 2 - 2 * float(sims.min()))))

    out = {"n": n, "count": count, "seconds": round(seconds, 1), "dims": s.info["dims"], "radius": radius(s.rows),
           "radius_over": "all points" if n <= 20_000 else "20,000 sampled points (a lower bound)",
           "timings": s.info["timings"], "peak_rss_gib": round(peak_rss_gib(), 2)}
    rng = np.random.default_rng(1)
    out["random_radius"] = [radius(rng.choice(n, count, replace=False)) for _ in range(3)]
    if n <= 20_000:  # exact greedy k-center (plain passes over the full vectors)
        t1 = time.perf_counter()
        ex = select_diverse(x, np.arange(n), count, dims=x.shape[1], measure_radius=False, progress=False)
        out["exact_seconds"] = round(time.perf_counter() - t1, 1)
        out["exact_radius"] = radius(ex.rows)
        out["ratio_to_exact"] = round(out["radius"] / out["exact_radius"], 4)
    return out


def run_select(results: dict[str, Any], big: int = 204_894, count: int = 10_000) -> None:
    small = 20_000
    k_small = round(count * small / big)
    from job.curate.select import PROJECTED_DIMS  # the 20k sample is small enough for exact: force the projection

    results["select"] = {"sample": child(["select", str(small), str(k_small), str(PROJECTED_DIMS)])}
    save(results)
    print(json.dumps(results["select"], default=str), flush=True)
    results["select"]["full"] = child(["select", str(big), str(count), "auto"], timeout=7200)
    save(results)
    print(json.dumps(results["select"]["full"], default=str), flush=True)


# ----------------------------------------------------------------------------------------------- main


def run_knn(sizes: list[int], work: Path, results: dict[str, Any]) -> None:
    rows = results.setdefault("knn", [])
    for n in sizes:
        prep = prepare_knn(n, work)
        r = child(["knn", prep["vectors"], prep["index"], "auto"])
        r["index_built"] = prep["index_info"]
        rows[:] = [row for row in rows if row.get("n") != n] + [r]
        save(results)
        print(f"k-NN graph n={n:,}: {r['method']} {r['seconds']} s, recall@10 {r['recall']}, "
              f"peak RSS {r['peak_rss_gib']} GiB ({r['params']})", flush=True)


def save(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    global RESULTS  # noqa: PLW0603 - one results file per invocation
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if argv and argv[0] == "--child":
        what, rest = argv[1], argv[2:]
        out = {"knn": lambda: child_knn(*rest), "ours": lambda: child_ours(int(rest[0]), rest[1]),
               "fiftyone": lambda: child_fiftyone(int(rest[0]), float(rest[1]), rest[2], rest[3]),
               "select": lambda: child_select(int(rest[0]), int(rest[1]), rest[2])}[what]()
        print(json.dumps(out, default=str))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="knn,near,select")
    p.add_argument("--sizes", default="204894,1400000", help="k-NN graph sizes")
    p.add_argument("--near-sizes", default="20000,50000", help="near duplicates / FiftyOne sizes")
    p.add_argument("--workdir", default=None, help="vectors and indexes (default: a temp dir)")
    p.add_argument("--json", default=None, help="results file (merged: parts not run are kept)")
    args = p.parse_args(argv)
    RESULTS = Path(args.json) if args.json else RESULTS
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = machine()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        if "knn" in parts:
            run_knn([int(s) for s in args.sizes.split(",")], work, results)
        if "near" in parts:
            run_near([int(s) for s in args.near_sizes.split(",")], work, results)
        if "select" in parts:
            run_select(results)
    save(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
