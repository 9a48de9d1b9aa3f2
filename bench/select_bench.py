"""Diverse-subset benchmark (``job.curate.select_diverse``): time and peak memory of the selection itself at the sizes
users run, and the batched engine against the plain greedy it replaced, measured in the same run.

    flock /tmp/heavy.lock .venv/bin/python bench/select_bench.py --sizes 204894,1400000 --count 10000

Vectors: ``index_bench.clustered`` (CLIP-like, 768-d, unit length), written once to ``--workdir`` as ``.npy``. Each
measured step runs in a child process that loads the vectors (``np.load``: the matrix a curation step holds) and
reports the resident memory before the selection, its peak (``ru_maxrss``) and the selection's wall time; so the
selection's own memory is the peak minus what was resident before. 2 % of the rows are marked as duplicates
(excluded), as a curation would. Variants: ``plain`` (``--select N``), ``loop`` (``--labelled`` 5 % of N earlier
picks + ``--balance`` over 24 strata with ``--shares equal`` + ``--min-gap-s 2`` over scene-cameras of 40 frames at
2 Hz), and ``baseline`` (the plain greedy: one matrix-vector pass per pick over the same projection, as
``select_diverse`` ran before the batched engine; same picks). Results: ``bench/results/select_bench.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_bench import clustered, machine  # noqa: E402

log = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results" / "select_bench.json"


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return math.nan


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def plain_greedy(z: np.ndarray, count: int, first: int) -> np.ndarray:
    """The greedy as it ran before: one pass over every point per pick (``|a|^2 + |b|^2 - 2 a.b``, argmax)."""
    sq = np.einsum("ij,ij->i", z, z)
    dist = np.full(len(z), np.inf, np.float32)
    picks = np.empty(count, np.int64)
    p = first
    for i in range(count):
        picks[i] = p
        np.minimum(dist, sq + sq[p] - 2.0 * (z @ z[p]), out=dist)
        dist[p] = -np.inf
        p = int(np.argmax(dist))
    return picks


def child(vec: str, count: int, variant: str) -> dict[str, Any]:
    from job.curate import TimeGaps, select_diverse
    from job.curate.select import EXACT_BUDGET, PROJECTED_DIMS, _project
    import torch  # noqa: F401  - loaded first (a curation step has it already): not counted as the selection's memory

    x = np.load(vec)
    n = len(x)
    rng = np.random.default_rng(7)
    exclude = np.zeros(n, bool)
    exclude[rng.choice(n, n // 50, replace=False)] = True
    before = rss_gib()
    out: dict[str, Any] = {"n": n, "count": count, "variant": variant, "load_before": load_avg(),
                           "rss_before_gib": round(before, 2)}
    t0 = time.perf_counter()
    if variant == "baseline":
        pool = np.nonzero(~exclude)[0]
        dims = PROJECTED_DIMS if len(pool) * count * x.shape[1] > EXACT_BUDGET else x.shape[1]  # select_diverse's rule
        z = _project(x, pool, dims, 0) if dims < x.shape[1] else np.ascontiguousarray(x[pool])
        mean = x[pool].mean(axis=0, dtype=np.float64).astype(np.float32)
        first = int(np.argmin(x[pool] @ mean))  # select_diverse's first pick: farthest from the mean direction
        picks = plain_greedy(z, count, first)
        out["picks_head"] = pool[picks[:50]].tolist()
    else:
        kwargs: dict[str, Any] = {}
        if variant == "loop":
            labelled = np.zeros(n, bool)
            labelled[rng.choice(np.nonzero(~exclude)[0], count // 20, replace=False)] = True
            strata = np.arange(n) % 24
            kwargs = {"labelled": labelled, "balance": {"stratum": strata}, "shares": "equal",
                      "gap": TimeGaps(np.arange(n) // 40, (np.arange(n) % 40) * 0.5, 2.0)}
        s = select_diverse(x, np.arange(n), count, exclude=exclude, progress=False, **kwargs)
        out.update(radius_cosine=s.radius_cosine, radius_exact=s.info["radius_exact"], dims=s.info["dims"],
                   timings=s.info["timings"], distance_evaluations=s.info["distance_evaluations"],
                   shortfall=s.shortfall)
        if variant == "plain":
            first = int(s.rows[0])
            out["first"] = first
            out["picks_head"] = s.rows[:50].tolist()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_gib"] = round(peak_gib(), 2)
    out["selection_own_gib"] = round(peak_gib() - before, 2)
    out["load_after"] = load_avg()
    return out


def run_child(vec: Path, count: int, variant: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(vec), str(count), variant]
    log.info("child: %s", " ".join(cmd[2:]))
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=4 * 3600)
    sys.stderr.write(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], int(argv[2]), argv[3]), default=str))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="204894,1400000")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--variants", default="plain,loop,baseline", help="baseline runs at the first size only")
    p.add_argument("--workdir", default="/tmp/select_bench")
    p.add_argument("--json", default=str(RESULTS))
    args = p.parse_args(argv)
    out = Path(args.json)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine()
    rows = results.setdefault("runs", [])
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(int(s) for s in args.sizes.split(",")):
        vec = work / f"x-{n}.npy"
        if not vec.exists():
            np.save(vec, clustered(n, seed=11))
        for variant in args.variants.split(","):
            if variant == "baseline" and i > 0:
                continue
            r = run_child(vec, args.count, variant)
            rows[:] = [row for row in rows if (row["n"], row["count"], row["variant"]) != (n, args.count, variant)]
            rows.append(r)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2, default=str))
            print(f"n={n:,} {variant}: {r['seconds']} s, peak {r['peak_gib']} GiB (selection's own "
                  f"{r['selection_own_gib']} GiB), load {r['load_before']} -> {r['load_after']}", flush=True)
        mine = next((r for r in rows if r["n"] == n and r["variant"] == "plain" and r["count"] == args.count), None)
        base = next((r for r in rows if r["n"] == n and r["variant"] == "baseline" and r["count"] == args.count), None)
        if mine and base:
            same = sum(a == b for a, b in zip(mine["picks_head"], base["picks_head"]))
            print(f"n={n:,}: plain greedy {base['seconds']} s / batched {mine['seconds']} s = "
                  f"{base['seconds'] / mine['seconds']:.1f}x; first 50 picks equal: {same}/50", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
