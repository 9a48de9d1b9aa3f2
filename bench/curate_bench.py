"""Curation benchmark: k-NN graph from the run's index, near duplicates vs exact truth, diverse selection, FiftyOne.

    python bench/curate_bench.py --parts knn --sizes 204894,1400000      # k-NN graph (index built first, not timed)
    python bench/curate_bench.py --parts near,select,fiftyone            # the rest (~20 min on 2 cores)

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
        info = {k: meta[k] for k in ("factory", "search_params", "recall@10", "build_seconds")}
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
        out = {"knn": lambda: child_knn(*rest)}[what]()
        print(json.dumps(out, default=str))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="knn,near,select,fiftyone")
    p.add_argument("--sizes", default="204894,1400000", help="k-NN graph sizes")
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
    save(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
