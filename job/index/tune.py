"""Index measuring: search-time parameters (nprobe / efSearch / k_factor), recall against exact search, tuning.

Search-time parameters are tuned on held-out queries (in-index vectors, own id removed; or, for the text index, the
text vectors of prompts) until recall@10 against exact inner-product search reaches the target; recall is then
measured on other held-out queries.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from ..values import parse_search_params
from ._faiss import load_faiss
from ._gpu import Placement
from .exact import ExactSearcher, drop_self, exact_search

RECALL_K = 10

# Search-time parameters, each tried in increasing cost order.
EF_SEARCH_VALUES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)  # text queries go deep
NPROBE_VALUES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
K_FACTOR_VALUES = (1, 2, 4, 8, 16, 32, 64)
PLATEAU_STEPS = 3  # stop raising a parameter after this many steps without any recall gain


# ----------------------------------------------------------------------------------------------- structure


def walk_index(index: Any) -> list[Any]:
    """The index and every sub-index it wraps, downcast (IDMap → PreTransform → Refine → IVF/HNSW)."""
    faiss = load_faiss()
    out = []
    todo = [index]
    while todo:
        ix = faiss.downcast_index(todo.pop(0))
        out.append(ix)
        if isinstance(ix, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            todo.append(ix.index)
        elif isinstance(ix, faiss.IndexRefine):
            todo.append(ix.base_index)
    return out


def search_space(index: Any) -> list[tuple[str, list[int]]]:
    """The search-time parameters of an index, each with its candidate values (cheapest first)."""
    faiss = load_faiss()
    space: list[tuple[str, list[int]]] = []
    for ix in walk_index(index):
        if isinstance(ix, faiss.IndexIVF):
            space.append(("nprobe", [v for v in NPROBE_VALUES if v < ix.nlist] + [int(ix.nlist)]))
        elif isinstance(ix, faiss.IndexHNSW):
            space.append(("efSearch", list(EF_SEARCH_VALUES)))
        elif isinstance(ix, faiss.IndexRefine):
            space.append(("k_factor", list(K_FACTOR_VALUES)))
    # k_factor last: first find the coverage (nprobe/efSearch) with full re-ranking, then cut re-ranking
    return sorted(space, key=lambda kv: kv[0] == "k_factor")


def format_params(params: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def set_search_params(index: Any, params: dict[str, int] | str | None) -> None:
    """Set nprobe / efSearch / k_factor wherever they apply inside the index (a dict, or text as
    ``--search-params`` takes it: ``job.values.parse_search_params``)."""
    if not isinstance(params, dict):
        params = parse_search_params(params)
    faiss = load_faiss()
    applied = set()
    for ix in walk_index(index):
        if isinstance(ix, faiss.IndexIVF) and "nprobe" in params:
            ix.nprobe = min(int(params["nprobe"]), int(ix.nlist))
            applied.add("nprobe")
        elif isinstance(ix, faiss.IndexHNSW) and "efSearch" in params:
            ix.hnsw.efSearch = int(params["efSearch"])
            applied.add("efSearch")
        elif isinstance(ix, faiss.IndexRefine) and "k_factor" in params:
            ix.k_factor = float(params["k_factor"])
            applied.add("k_factor")
    unused = set(params) - applied
    if unused:
        raise UsageError(f"search parameter(s) {', '.join(sorted(unused))} do not apply to this index "
                         f"(it takes: {', '.join(k for k, _ in search_space(index)) or 'none'})")


def current_search_params(index: Any) -> dict[str, int]:
    faiss = load_faiss()
    out: dict[str, int] = {}
    for ix in walk_index(index):
        if isinstance(ix, faiss.IndexIVF):
            out["nprobe"] = int(ix.nprobe)
        elif isinstance(ix, faiss.IndexHNSW):
            out["efSearch"] = int(ix.hnsw.efSearch)
        elif isinstance(ix, faiss.IndexRefine):
            out["k_factor"] = int(ix.k_factor)
    return out


# ----------------------------------------------------------------------------------------------- recall


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """k-recall@k: share of the exact top-k that the index returned in its top-k (autofaiss' measure)."""
    k = min(k, truth.shape[1])
    if k == 0 or len(truth) == 0:
        return float("nan")
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


@dataclass
class EvalSet:
    """Held-out queries (in-index vectors) and their exact neighbours as ids, self excluded."""

    xq: np.ndarray
    qids: np.ndarray
    truth: np.ndarray  # (nq, k) ids


def make_eval_set(x: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int, *,
                  searcher: ExactSearcher | None = None, placement: Placement | None = None) -> EvalSet:
    """Queries ``x[rows]`` with their exact top-``k`` ids (self removed), from ``searcher`` (an
    :class:`~job.index.exact.ExactSearcher` over ``x``, reused) or a search of its own placed by ``placement``."""
    xq = x[rows]
    k_eff = min(k, len(x) - 1)
    if searcher is not None:
        nn, sims = searcher.search(xq, k_eff + 1)
    else:
        nn, sims = exact_search(xq, x, k_eff + 1, placement=placement or Placement("cpu"), step="truth")
    nn, _ = drop_self(nn, sims, rows, k_eff)
    truth = np.where(nn >= 0, ids[np.clip(nn, 0, None)], -1)
    return EvalSet(xq, ids[rows], truth)


def held_out(x: np.ndarray, ids: np.ndarray, queries: int, seed: int = 0, *,
             placement: Placement | None = None) -> tuple[np.ndarray, np.ndarray, EvalSet]:
    """(query rows, the other rows shuffled, exact neighbours of the queries) for tuning and measuring; the exact
    search runs where ``placement`` allows (default: the CPU)."""
    n = len(x)
    perm = np.random.default_rng(seed).permutation(n)
    nq = min(queries, n)
    q_rows = perm[:nq]  # random order: the first half tunes, the second half measures
    return q_rows, perm[nq:], make_eval_set(x, ids, q_rows, RECALL_K, placement=placement)


def queries_eval_set(x: np.ndarray, ids: np.ndarray, queries: np.ndarray, seed: int = 0, *,
                     placement: Placement | None = None) -> tuple[np.ndarray, np.ndarray, EvalSet]:
    """Like :func:`held_out` for queries from outside the index (text prompts' vectors): no row is held out, every
    row (shuffled) may train, and the queries' exact neighbours are the truth."""
    rng = np.random.default_rng(seed)
    xq = np.ascontiguousarray(queries[rng.permutation(len(queries))], dtype=np.float32)
    nn, _ = exact_search(xq, x, min(RECALL_K, len(x)), placement=placement or Placement("cpu"), step="truth")
    truth = np.where(nn >= 0, ids[np.clip(nn, 0, None)], -1)
    return np.empty(0, np.int64), rng.permutation(len(x)), EvalSet(xq, np.full(len(xq), -1, np.int64), truth)


def evaluate(index: Any, ev: EvalSet, *, min_seconds: float = 0.0) -> dict[str, float]:
    """recall@1, recall@10 and queries/s of ``index`` on ``ev`` (self hits removed)."""
    k = ev.truth.shape[1]
    if k == 0:
        return {"recall@1": float("nan"), "recall@10": float("nan"), "qps": float("nan")}
    kk = min(k + 1, index.ntotal)
    t0 = time.perf_counter()
    reps = 0
    while True:
        scores, labels = index.search(ev.xq, kk)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            break
    found, _ = drop_self(labels, scores, ev.qids, k)
    return {
        "recall@1": recall_at(found, ev.truth, 1),
        "recall@10": recall_at(found, ev.truth, RECALL_K),
        "qps": reps * len(ev.xq) / max(elapsed, 1e-9),
    }


# ----------------------------------------------------------------------------------------------- tuning


def tune(index: Any, ev: EvalSet, target: float) -> tuple[dict[str, int], list[dict[str, Any]], bool]:
    """Cheapest search parameters reaching ``target`` recall@10 on ``ev``; one parameter at a time.

    Coverage parameters (nprobe / efSearch) are tuned first with the re-ranking factor at its
    maximum, then the re-ranking factor is lowered as far as the target allows.
    """
    space = search_space(index)
    chosen = {name: values[-1] if name == "k_factor" else values[0] for name, values in space}
    trials: list[dict[str, Any]] = []
    met = True
    for name, values in space:
        best = None
        seen: list[tuple[int, float]] = []
        for v in values:
            params = {**chosen, name: v}
            set_search_params(index, params)
            r = evaluate(index, ev)
            trials.append({"params": format_params(params), **_rounded(r)})
            seen.append((v, r["recall@10"]))
            if r["recall@10"] >= target:
                best = v
                break
            if len(seen) > PLATEAU_STEPS and max(rc for _, rc in seen[-PLATEAU_STEPS:]) <= seen[-PLATEAU_STEPS - 1][1]:
                break  # recall stopped improving: the codes, not this parameter, limit it
        if best is None:
            met = False
            top = max(rc for _, rc in seen)
            best = next(v for v, rc in seen if rc >= top)  # cheapest value reaching the plateau
        chosen[name] = best
    set_search_params(index, chosen)
    return chosen, trials, met


def _rounded(r: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 4) if k != "qps" else round(v, 1)) for k, v in r.items()}
