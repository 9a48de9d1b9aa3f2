"""Curation benchmark: duplicates through the approximate path at scale (planted copies, adversarial variants),
FiftyOne Brain run as FiftyOne runs it, diverse selection.

    python bench/curate_bench.py --parts dups --sizes 204894,1400000       # ~1 h on 2 loaded cores
    python bench/curate_bench.py --parts peers --peer-sizes 20000,50000
    python bench/curate_bench.py --parts select

``dups``: for each size and variant — ``planted`` (2 % copies: half re-encodes at cosine 0.999-0.99995 to their
source, half near copies at 0.96-0.999, in groups of 1-6 and one of 40), the same plus 0.5 % ``rare`` images, plus
300 near-``blank`` frames, and ``every`` image copied — the k-NN graph is built through the approximate path
(``--knn-method partition``, what ``auto`` picks on this CPU above ~25k vectors), gated on pair recall, then the
duplicates found as ``job curate`` finds them. Reported: the graph's time, pair recall and recall@10, the planted
pairs found (a copy flagged, in its source's group), the flagged pairs whose exact cosine is below the threshold
(must be 0), the threshold and its rule.

``peers``: FiftyOne Brain as it runs (``child_fiftyone``), at its default threshold and at ours.

Vectors: ``index_bench.clustered`` (CLIP-like, 768-d, unit length) with the variants of ``tests/curate_data.py``.
Each measured step runs in a child process (``--child``) that reports its own time, peak RSS (``ru_maxrss``) and the
machine's load average. Results are merged into ``--json`` (default bench/results/curate_bench.json).
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from index_bench import PeakRSS, clustered, machine  # noqa: E402

from curate_data import every_copied, planted, with_blank, with_rare  # noqa: E402

log = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results" / "curate_bench.json"
VARIANTS = ("planted", "rare", "blank", "every")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(args: list[str], timeout: float = 7200) -> dict[str, Any]:
    """Run ``curate_bench.py --child ...`` and return the JSON it prints last."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    log.info("child: %s", " ".join(args))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def dataset(n: int, variant: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` vectors of ``variant`` (module docstring) and each row's planted source (-1: none)."""
    if variant == "every":
        return every_copied(clustered(n // 2, seed=seed))
    x, src = planted(clustered(n - int(n * 0.02), seed=seed))
    if variant == "rare":
        return with_rare(x, src)
    if variant == "blank":
        return with_blank(x, src)
    return x, src


# ----------------------------------------------------------------------------------------------- duplicates


def child_dups(n: int, variant: str, method: str) -> dict[str, Any]:
    """The graph through ``method`` and the duplicates of ``dataset(n, variant)``, checked against what was planted."""
    from job.curate import find_duplicates, keep_rank, knn_graph, near_threshold, to_roots

    x, src = dataset(n, variant)
    n = len(x)
    ids = np.arange(n, dtype=np.int64)
    load = [os.getloadavg()[0]]
    with PeakRSS() as mem:  # the curation's own peak, not the data generator's
        t0 = time.perf_counter()
        g = knn_graph(x, ids, 10, method=method, progress=False,
                      gate=lambda rows, cos: near_threshold(rows, cos, None).cosine)
        graph_s = time.perf_counter() - t0
        load.append(os.getloadavg()[0])
        t1 = time.perf_counter()
        d = find_duplicates(g, x, keep_rank(ids, np.arange(n)))  # sources first in time: they are kept
        to_roots(d, x)
        dup_s = time.perf_counter() - t1
    t = d.threshold
    assert t is not None
    root = np.arange(n)
    keep, _ = d.roots()
    root[d.rows] = keep
    copies = np.nonzero(src >= 0)[0]
    found = np.isin(copies, d.rows) & (root[copies] == root[src[copies]])
    exact = np.einsum("ij,ij->i", x[d.rows], x[d.links])
    near = d.kinds == "near"
    return {"n": n, "variant": variant, "method": g.method, "graph_s": round(graph_s, 1),
            "duplicates_s": round(dup_s, 1), "pair_recall": g.pair_recall, "pairs_sampled": g.pairs,
            "rows_sampled": g.pair_rows, "recall_at_10": g.recall, "probe": g.probe, "lists": g.lists,
            "largest_list": g.largest_list, "tuning": g.tuning, "graph_timings": g.timings,
            "threshold": t.cosine, "found_mode": t.found_mode, "rule": t.rule,
            "planted": int(len(copies)), "planted_found": int(found.sum()),
            "planted_found_share": round(float(found.mean()), 5), "flagged": int(len(d)),
            "flagged_below_threshold": int(np.sum(exact[near] < t.cosine)),
            "flagged_not_planted": int(np.sum(src[d.rows] < 0)), "counts": d.counts(),
            "vectors_gib": round(x.nbytes / 2**30, 2), "curation_peak_rss_gib": round(mem.peak / 2**30, 2),
            "process_peak_rss_gib": round(peak_rss_gib(), 2), "load_average": [round(v, 2) for v in load]}


def run_dups(sizes: list[int], variants: list[str], method: str, results: dict[str, Any]) -> None:
    rows = results.setdefault("dups", [])
    for n in sizes:
        for variant in variants:
            r = child(["dups", str(n), variant, method])
            rows[:] = [x for x in rows if (x.get("n"), x.get("variant")) != (r["n"], variant)] + [r]
            save(results)
            print(f"n={r['n']:,} {variant}: graph {r['graph_s']} s (pair recall {r['pair_recall']}, recall@10 "
                  f"{r['recall_at_10']}, probe {r['probe']}), planted found {r['planted_found_share']}, flagged "
                  f"below the threshold {r['flagged_below_threshold']}, load {r['load_average']}", flush=True)


# ----------------------------------------------------------------------------------------------- FiftyOne


def child_ours(n: int, out: str) -> dict[str, Any]:
    """Ours on ``dataset(n, 'planted')``: graph (auto), duplicates, both uniqueness scores."""
    from job.curate import find_duplicates, keep_rank, knn_graph, to_roots, uniqueness_fiftyone, uniqueness_kept

    x, _ = dataset(n, "planted")
    ids = np.arange(len(x), dtype=np.int64)
    t0 = time.perf_counter()
    g = knn_graph(x, ids, 10, progress=False)
    t1 = time.perf_counter()
    d = find_duplicates(g, x, keep_rank(ids, np.arange(len(x))))
    to_roots(d, x)
    u, _ = uniqueness_kept(g, x, d, extra=d.info.get("extra"))
    seconds = time.perf_counter() - t0
    u_fo, _ = uniqueness_fiftyone(x, g)
    np.save(out, np.sort(d.rows))
    np.save(out.replace(".npy", "-u.npy"), u)
    np.save(out.replace(".npy", "-ufo.npy"), u_fo)
    assert d.threshold is not None
    return {"n": len(x), "seconds": round(seconds, 1), "graph_s": round(t1 - t0, 1), "graph": g.method,
            "peak_rss_gib": round(peak_rss_gib(), 2), "threshold": d.threshold.cosine, "rule": d.threshold.rule,
            "duplicates": len(d), "load_average": os.getloadavg()[0]}


def child_fiftyone(n: int, threshold: float, out: str) -> dict[str, Any]:
    """FiftyOne Brain's published algorithms as FiftyOne runs them (voxel51/fiftyone-brain at
    ``job.curate.FIFTYONE_COMMIT``), re-run on the same vectors: ``compute_near_duplicates`` builds the sklearn
    similarity backend (metric cosine), which **centres** the embeddings (``embeddings -= mean``), and
    ``find_duplicates(thresh)`` walks ``_remove_duplicates_thresh``: ``radius_neighbors`` at the threshold — above
    15,000 samples on re-normalised centred vectors with Euclidean radius ``sqrt(2 * thresh)``, below it the full
    matrix of cosine distances — then keep-first in index order. ``compute_uniqueness`` on the same index."""
    import sklearn.metrics as skm
    import sklearn.neighbors as skn
    import sklearn.preprocessing as skp

    x, _ = dataset(n, "planted")
    n = len(x)
    t0 = time.perf_counter()
    e = x - x.mean(axis=0, keepdims=True)
    if n <= 15000:
        dists = skm.pairwise_distances(e, metric="cosine")
        np.fill_diagonal(dists, np.nan)
        inds = [np.nonzero(row <= threshold)[0] for row in dists]
        k4 = np.sort(np.nan_to_num(dists, nan=np.inf), axis=1)[:, :4]
    else:
        nn = skn.NearestNeighbors(metric="euclidean").fit(skp.normalize(e, axis=1))
        inds = nn.radius_neighbors(radius=np.sqrt(2.0 * threshold), return_distance=False)
        k4, _ = nn.kneighbors(n_neighbors=4)
    keep = set(range(n))
    for ind in range(n):
        if ind in keep:
            keep -= {i for i in inds[ind] if i > ind}
    u = np.mean(k4[:, 1:] * [0.6, 0.3, 0.1], axis=1)
    u /= u.max()
    seconds = time.perf_counter() - t0
    dup = np.array(sorted(set(range(n)) - keep), np.int64)
    np.save(out, dup)
    np.save(out.replace(".npy", "-u.npy"), u)
    return {"n": n, "threshold_distance": threshold, "seconds": round(seconds, 1),
            "peak_rss_gib": round(peak_rss_gib(), 2), "duplicates": len(dup), "load_average": os.getloadavg()[0]}


def run_peers(sizes: list[int], work: Path, results: dict[str, Any]) -> None:
    from scipy.stats import spearmanr

    from job.curate import FIFTYONE_COMMIT

    rows = results.setdefault("peers", [])
    for n in sizes:
        ours = child(["ours", str(n), str(work / f"ours-{n}.npy")])
        mine = np.load(work / f"ours-{n}.npy")
        _, src = dataset(n, "planted")
        planted_rows = np.nonzero(src >= 0)[0]
        row: dict[str, Any] = {"n": ours["n"], "fiftyone_commit": FIFTYONE_COMMIT, "planted": int(len(planted_rows)),
                               "ours": {**ours, "planted_found": int(np.isin(planted_rows, mine).sum()),
                                        "not_planted": int(len(np.setdiff1d(mine, planted_rows)))}}
        for name, thresh in (("fiftyone_default", 0.2), ("fiftyone_at_ours", 1 - ours["threshold"])):
            fo = child(["fiftyone", str(n), str(thresh), str(work / f"fo-{n}.npy")], timeout=7200)
            theirs = np.load(work / f"fo-{n}.npy")
            fo.update(planted_found=int(np.isin(planted_rows, theirs).sum()),
                      not_planted=int(len(np.setdiff1d(theirs, planted_rows))),
                      symmetric_difference_with_ours=int(len(np.setxor1d(theirs, mine))),
                      time_ratio_to_ours=round(fo["seconds"] / max(ours["seconds"], 1e-9), 2))
            row[name] = fo
        u_fo_ref = np.load(work / f"fo-{n}-u.npy")
        u_fo, u_kept = np.load(work / f"ours-{n}-ufo.npy"), np.load(work / f"ours-{n}-u.npy")
        top = max(1, len(u_fo_ref) // 100)
        ref_top = set(np.argsort(-u_fo_ref)[:top])
        row["uniqueness"] = {
            "fiftyone_mode_spearman": round(float(spearmanr(u_fo, u_fo_ref).statistic), 5),
            "fiftyone_mode_top1pct_overlap": round(len(set(np.argsort(-u_fo)[:top]) & ref_top) / top, 4),
            "kept_spearman": round(float(spearmanr(u_kept, u_fo_ref).statistic), 5),
            "kept_top1pct_overlap": round(len(set(np.argsort(-u_kept)[:top]) & ref_top) / top, 4)}
        rows[:] = [r for r in rows if r.get("n") != row["n"]] + [row]
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


def save(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    global RESULTS  # noqa: PLW0603 - one results file per invocation
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if argv and argv[0] == "--child":
        what, rest = argv[1], argv[2:]
        out = {"dups": lambda: child_dups(int(rest[0]), rest[1], rest[2]),
               "ours": lambda: child_ours(int(rest[0]), rest[1]),
               "fiftyone": lambda: child_fiftyone(int(rest[0]), float(rest[1]), rest[2]),
               "select": lambda: child_select(int(rest[0]), int(rest[1]), rest[2])}[what]()
        print(json.dumps(out, default=str))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="dups,peers,select")
    p.add_argument("--sizes", default="204894,1400000", help="duplicate sizes")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--method", default="partition", help="the k-NN method of the dups part")
    p.add_argument("--peer-sizes", default="20000,50000", help="FiftyOne comparison sizes")
    p.add_argument("--workdir", default=None, help="scratch files (default: a temp dir)")
    p.add_argument("--json", default=None, help="results file (merged: parts not run are kept)")
    args = p.parse_args(argv)
    RESULTS = Path(args.json) if args.json else RESULTS
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = machine()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        if "dups" in parts:
            run_dups([int(s) for s in args.sizes.split(",")], args.variants.split(","), args.method, results)
        if "peers" in parts:
            run_peers([int(s) for s in args.peer_sizes.split(",")], work, results)
        if "select" in parts:
            run_select(results)
    save(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
