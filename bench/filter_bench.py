"""Filtered search benchmark: latency of a metadata-filtered top-10 vs the unfiltered search, same index, same run.

    python bench/filter_bench.py                                  # 200k (flat, hnsw) and 1.4M (flat, ivfpq)
    python bench/filter_bench.py --plan "20000:flat,hnsw,ivfpq" --queries 50

For each index and each filter share (1%, 10%, 50% of the vectors) it measures, one query per call as the
server and ``job search`` send them: the unfiltered search (the baseline, measured in the same run), and the
filtered search by ``job.index.filtered.FilteredSearch`` each way: ``auto`` (what ``job search`` does),
``scan`` (exact scan of the matching vectors' codes with a bitmap selector), ``post`` (the index's ordinary
search for 2·k/share candidates, matches kept, the scan when too few) and ``index`` (the index's own search with
the selector, nprobe/efSearch raised by 1/share). It prints median latencies, their ratio to the unfiltered
baseline, recall@10 against exact search over the matching vectors (and the unfiltered search's own recall@10),
and how often fewer than 10 hits came back. Two kinds of filter: ``cluster`` keeps whole clusters (scene x camera, like a channel, location,
scene or night filter) and ``random`` keeps random rows (like a key-frame flag).

Vectors: ``index_bench.clustered`` (CLIP-like, 768-d). Indexes are built by ``job.index.build_from_arrays``
with the search parameters ``bench/index_bench.py`` tuned for these sizes (recall@10 ~0.95).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_bench import clustered, machine  # noqa: E402

from job.config import IndexConfig, IndexOverrides  # noqa: E402
from job.index import build_from_arrays, load_index, set_search_params  # noqa: E402
from job.index.filtered import FilteredSearch  # noqa: E402
from job.values import parse_search_params  # noqa: E402

log = logging.getLogger("bench")

# search parameters bench/index_bench.py tuned to recall@10 >= 0.95 on this data (docs/benchmarks.md)
TUNED = {(200_000, "hnsw"): "efSearch=64", (200_000, "ivfpq"): "nprobe=6,k_factor=8",
         (1_400_000, "hnsw"): "efSearch=512", (1_400_000, "ivfpq"): "nprobe=3,k_factor=8"}
SHARES = (0.01, 0.10, 0.50)
K = 10


def filter_ids(kind: str, share: float, ids: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Sorted ids kept by a filter of about ``share``: whole clusters (``cluster``) or random rows."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    if kind == "random":
        return np.sort(ids[rng.choice(n, max(1, round(share * n)), replace=False)])
    sizes = np.bincount(labels)
    chosen, total = [], 0
    for c in rng.permutation(len(sizes)):
        if total >= share * n:
            break
        if sizes[c]:
            chosen.append(c)
            total += int(sizes[c])
    return np.sort(ids[np.isin(labels, chosen)])


def _median_ms(times: list[float]) -> float:
    return round(float(np.median(times)) * 1000, 3)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return len(set(found[found >= 0].tolist()) & set(truth.tolist())) / max(1, len(truth))


def measure(index: Any, params: str, x: np.ndarray, ids: np.ndarray, labels: np.ndarray, xq: np.ndarray,
            n: int, kind_label: str) -> list[dict[str, Any]]:
    """Every filter kind x share x method for one index, each query timed unfiltered and every way in turn.

    Interleaving per query keeps the baseline and the filtered searches under the same load (a shared
    machine); the exact answers are computed before any timing (BLAS threads spinning after a matrix
    product would otherwise slow the Faiss call that follows).
    """
    set_search_params(index, params)
    fs = FilteredSearch(index)
    methods = [m for m in ("auto", "scan", "post", "index") if m != "scan" or fs.scan_codes is not None]
    rows = []
    exact = [ids[np.argsort(-(x @ q))[:K]] for q in xq]
    base_recall = round(float(np.mean([_recall(index.search(q[None], K)[1][0], t) for q, t in zip(xq, exact)])), 4)
    for fkind in ("cluster", "random"):
        for share in SHARES:
            keep = filter_ids(fkind, share, ids, labels, seed=int(share * 1000))
            mask = np.isin(ids, keep)
            xm, im = x[mask], ids[mask]
            truth = [im[np.argsort(-(xm @ q))[:K]] for q in xq]
            del xm
            times: dict[str, list[float]] = {m: [] for m in ["unfiltered", *methods]}
            recalls: dict[str, list[float]] = {m: [] for m in methods}
            short = dict.fromkeys(methods, 0)
            used: dict[str, set[str]] = {m: set() for m in methods}
            for q, t in zip(xq, truth):
                t0 = time.perf_counter()
                index.search(q[None], K)
                times["unfiltered"].append(time.perf_counter() - t0)
                for method in methods:
                    t0 = time.perf_counter()
                    r = fs.search(q[None], K, keep, parse_search_params(params), method=method)
                    times[method].append(time.perf_counter() - t0)
                    recalls[method].append(_recall(r.ids[0], t))
                    short[method] += int((r.ids[0] >= 0).sum() < min(K, len(keep)))
                    used[method].add(r.method)
            base = _median_ms(times["unfiltered"])
            for method in methods:
                row = {"n": n, "index": kind_label, "params": params, "filter": fkind, "share_target": share,
                       "share": round(len(keep) / n, 4), "matches": int(len(keep)), "method": method,
                       "used": sorted(used[method]), "median_ms": _median_ms(times[method]), "unfiltered_ms": base,
                       "ratio": round(_median_ms(times[method]) / base, 3) if base else None,
                       "recall@10": round(float(np.mean(recalls[method])), 4), "short_results": short[method],
                       "unfiltered_recall@10": base_recall,
                       "load_average": round(os.getloadavg()[0], 2)}
                rows.append(row)
                log.info("n=%d %s %s %.0f%% %s -> %s: %.2f ms (%.2fx unfiltered %.2f ms), recall@10 %.3f, short %d",
                         n, kind_label, fkind, share * 100, method, "/".join(row["used"]), row["median_ms"],
                         row["ratio"] or 0, base, row["recall@10"], short[method])
    return rows


def metadata_filter_ms(n: int) -> float:
    """DuckDB time of one uncached condition over n rows of nuScenes-like metadata (job.search.filters.MetaFilter)."""
    import pyarrow as pa

    from job.search import MetaFilter

    rng = np.random.default_rng(0)
    cams = np.array(["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"])
    locs = np.array(["boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage"])
    desc = np.array(["Night, after rain, peds", "Rain, bus stop", "Construction zone", "Night, big street"])
    table = pa.table({"id": np.arange(n, dtype=np.int64), "channel": cams[rng.integers(0, 6, n)],
                      "location": locs[rng.integers(0, 4, n)], "scene_description": desc[rng.integers(0, 4, n)],
                      "is_key_frame": rng.random(n) < 0.2})
    mf = MetaFilter(table)
    t0 = time.perf_counter()
    mf.ids("channel = 'CAM_FRONT' AND location LIKE 'singapore%' AND night")
    return round((time.perf_counter() - t0) * 1000, 1)


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| n | index | filter | share | method → used | median ms | unfiltered ms | ratio | recall@10 "
           "(unfiltered) | short |", "|---:|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['index']} | {r['filter']} | {r['share'] * 100:.1f}% | {r['method']} → "
                   f"{', '.join(r['used'])} | {r['median_ms']:.2f} | {r['unfiltered_ms']:.2f} | {r['ratio']:.2f}x | "
                   f"{r['recall@10']:.3f} ({r['unfiltered_recall@10']:.3f}) | {r['short_results']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", default="200000:flat,hnsw;1400000:flat,ivfpq",
                   help="N:TYPE,TYPE;N:TYPE… (default: what auto picks at each size, and flat)")
    p.add_argument("--queries", type=int, default=100, help="queries per measurement (one per call)")
    p.add_argument("--threads", type=int, default=1,
                   help="Faiss threads while measuring (default 1: one query per call; with 2 threads on a busy 2-core "
                        "machine the OpenMP hand-offs cost more than a filtered search); builds use all")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    build_threads = faiss.omp_get_max_threads()
    info = {**machine(), "faiss_threads_measured": args.threads, "faiss_threads_build": build_threads}
    log.info("machine: %s", info)
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for part in args.plan.split(";"):
            size, types = part.split(":")
            n = int(size)
            labels_out: list[np.ndarray] = []
            x = clustered(n, labels_out=labels_out)
            labels = labels_out[0]
            ids = np.arange(n, dtype=np.int64) * 7919 + 12345
            rng = np.random.default_rng(1)
            xq = x[rng.choice(n, args.queries, replace=False)] + 0.05 * rng.standard_normal((args.queries, x.shape[1]))
            xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
            extra[f"duckdb_filter_ms_{n}"] = metadata_filter_ms(n)
            for kind in types.split(","):
                params = TUNED.get((n, kind), "")
                path = os.path.join(work, f"{kind}-{n}.faiss")
                t0 = time.perf_counter()
                meta = build_from_arrays(x, ids, path, IndexConfig(kind), IndexOverrides(queries=200,
                                         search_params=params or None), progress=False)
                log.info("n=%d %s: %s built in %.0f s", n, kind, meta.factory, time.perf_counter() - t0)
                index = load_index(path)
                label = f"{kind}: {meta.factory}" + (f" ({params})" if params else "")
                faiss.omp_set_num_threads(args.threads)  # measure as one query per call is answered
                rows += measure(index, params, x, ids, labels, xq, n, label)
                faiss.omp_set_num_threads(build_threads)
                del index
                os.remove(path)
                gc.collect()
                if args.json:
                    Path(args.json).write_text(json.dumps({"machine": info, **extra, "rows": rows}, indent=2))
            del x
            gc.collect()
    print(markdown(rows))
    for key, value in extra.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
