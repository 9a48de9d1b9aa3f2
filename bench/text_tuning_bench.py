"""Text-query recall benchmark: an approximate index tuned on in-index vectors vs tuned on text-like queries.

    python bench/text_tuning_bench.py                              # 200k x 768, hnsw and ivfpq (~10 min on 2 cores)
    python bench/text_tuning_bench.py --n 20000 --types hnsw --json out.json

``job run`` tunes the image index on held-out in-index vectors and the text-query index on the text-tower vectors
of the prompts in ``job/model/prompts.py``. This measures why, on synthetic data (no CLIP weights can be downloaded
here): the indexed vectors are ``index_bench.clustered`` (CLIP-like image vectors, 768-d, in a cone around a shared
direction), and each text-like query lies in another cone (its own shared direction, as CLIP's text vectors do: the
modality gap) and blends three clusters (a phrase is less specific than a frame), so its true neighbours are spread
over several clusters and none lies close to it.

For each index (built once by ``job.index.build_index``, the code ``job index`` runs) the search parameters are tuned
by ``job.index.tune`` to recall@10 >= 0.95 twice: on held-out in-index vectors (the baseline: what the text index
did before) and on 96 text-like queries (what it does now: 48 tune, 48 measure and give the recorded recall). Both
settings are then measured on 500 fresh text-like queries: the recall text queries really get, queries/s one at a
time, and its ratio to the baseline's.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_bench import clustered, machine  # noqa: E402

from job.config import IndexConfig  # noqa: E402
from job.index import build_index, evaluate, held_out, plan_index, tune  # noqa: E402
from job.index.build import TUNE_SPLIT_MIN  # noqa: E402
from job.index.tune import EvalSet, format_params, queries_eval_set  # noqa: E402

log = logging.getLogger("bench")
TARGET = 0.95


def text_like(centres: np.ndarray, m: int, seed: int) -> np.ndarray:
    """m text-like queries for vectors around ``centres``: another cone, three clusters blended (see the docstring).
    The cone's direction depends on nothing but the dimension, so queries of any seed share it."""
    d = centres.shape[1]
    mu_text = np.random.default_rng(12345).standard_normal(d).astype(np.float32)
    mu_text /= np.linalg.norm(mu_text)
    rng = np.random.default_rng(seed)
    blend = centres[rng.integers(0, len(centres), (m, 3))].sum(1)
    blend /= np.linalg.norm(blend, axis=1, keepdims=True)
    q = 0.7 * mu_text + 0.6 * blend + 0.25 / np.sqrt(d) * rng.standard_normal((m, d)).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _halves(ev: EvalSet) -> tuple[EvalSet, EvalSet]:
    h = len(ev.xq) // 2 if len(ev.xq) >= TUNE_SPLIT_MIN else len(ev.xq)
    return (EvalSet(ev.xq[:h], ev.qids[:h], ev.truth[:h]),
            EvalSet(ev.xq[h:], ev.qids[h:], ev.truth[h:]) if h < len(ev.xq) else ev)


def _single_qps(index: Any, xq: np.ndarray, seconds: float = 1.0) -> float:
    import faiss

    faiss.omp_set_num_threads(1)
    try:
        t0, done = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            index.search(xq[done % len(xq): done % len(xq) + 1], 11)
            done += 1
        return done / (time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(0)


def bench_index(x: np.ndarray, kind: str, text_tune: np.ndarray, text_fresh: np.ndarray) -> list[dict[str, Any]]:
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64)
    plan = plan_index(n, d, IndexConfig(kind))
    t0 = time.perf_counter()
    index, _ = build_index(x, ids, plan, progress=False)
    build_s = time.perf_counter() - t0
    _, _, in_index = held_out(x, ids, 200)
    _, _, text = queries_eval_set(x, ids, text_tune)
    _, _, fresh = queries_eval_set(x, ids, text_fresh, seed=1)
    rows = []
    for tuned_on, ev in (("in-index vectors (before)", in_index), ("text-like queries (now)", text)):
        tune_half, measure_half = _halves(ev)
        params, _, met = tune(index, tune_half, TARGET)
        recorded = evaluate(index, measure_half)["recall@10"]
        got = evaluate(index, fresh)
        rows.append({"n": n, "type": kind, "factory": plan.factory, "build_s": round(build_s, 1),
                     "tuned_on": tuned_on, "search_params": format_params(params), "target_met": met,
                     "recorded_recall@10": round(recorded, 4), "text_recall@10": round(got["recall@10"], 4),
                     "text_qps_single": round(_single_qps(index, fresh.xq), 1)})
        log.info("%s", rows[-1])
    rows[1]["qps_vs_before"] = round(rows[1]["text_qps_single"] / rows[0]["text_qps_single"], 2)
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| n | index | tuned on | search params | recorded recall@10 | recall@10 on fresh text-like queries | "
           "queries/s one by one, 1 thread (x before) |", "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['factory']} | {r['tuned_on']} | {r['search_params']} | "
                   f"{r['recorded_recall@10']:.3f} | **{r['text_recall@10']:.3f}** | "
                   f"{r['text_qps_single']:,.0f} ({r.get('qps_vs_before', 1.0):.2f}x) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--types", default="hnsw,ivfpq")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    info = machine()
    log.info("machine: %s", info)
    centres: list[np.ndarray] = []
    x = clustered(args.n, args.dim, centres_out=centres)
    text_tune, text_fresh = text_like(centres[0], 96, seed=1), text_like(centres[0], 500, seed=2)
    rows: list[dict] = []
    for kind in args.types.split(","):
        rows += bench_index(x, kind, text_tune, text_fresh)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
