"""Index stage: build, tune, save and load Faiss indexes over a run's embeddings (cosine = inner product).

Vectors are L2-normalised, so every index uses ``METRIC_INNER_PRODUCT``. Faiss ids are the
embeddings' ``id`` column, so a hit maps straight back to its metadata row.

Types: ``flat`` (exact), ``hnsw`` (graph over full vectors), ``ivfpq`` (inverted lists of PQ codes,
re-ranked on 8-bit scalar codes by default), ``auto`` (chosen from n, d and a memory budget, the way
autofaiss reasons), or any index-factory string (``--factory``). After building, search-time
parameters (nprobe / efSearch / k_factor) are tuned on held-out queries until recall@10 against
exact search reaches ``--target-recall``; they are stored in the index file and in the ``.json``
written beside it, together with the recall that was then measured on other held-out queries.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import fsutil
from .errors import UsageError
from .config import EVAL_QUERIES, REFINE_CHOICES, IndexConfig, IndexOverrides, JobConfig
from .store import RunLayout, embeddings_url

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
AUTO_FLAT_MAX = 50_000  # up to here exact search is fast (~2k queries/s on 2 cores at d=768): no approximation
AUTO_HNSW_MAX = 1_000_000  # beyond, IVF-PQ + SQ8 re-ranking beat HNSW32 in the benchmark (docs/benchmarks.md)
MIN_POINTS_PER_LIST = 39  # faiss k-means wants >= 39 training points per centroid
DEFAULT_TRAIN_MAX = 200_000  # IVF/PQ training sample cap (beyond 40 points per list)
ADD_BATCH = 65_536
RECALL_K = 10
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40

# Search-time parameters, each tried in increasing cost order.
EF_SEARCH_VALUES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_VALUES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
K_FACTOR_VALUES = (1, 2, 4, 8, 16, 32, 64)
KMEANS_ITERATIONS = 10  # coarse k-means; faiss' 25 costs 2.5x the training time, tuned nprobe absorbs the gap
PLATEAU_STEPS = 3  # stop raising a parameter after this many steps without any recall gain


def _faiss() -> Any:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


# ----------------------------------------------------------------------------------------------- planning


def default_nlist(n: int) -> int:
    """Inverted lists: 4·√n rounded to a power of two, halved until each list has >= 39 training points."""
    nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
    while nlist > 1 and n < MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return nlist


def default_pq_m(d: int) -> int:
    """PQ sub-quantizers: one per 8 dimensions (96 bytes a vector at d=768), m dividing d."""
    target = max(1, d // 8)
    return max(m for m in range(1, target + 1) if d % m == 0)


def default_pq_bits(train_size: int) -> int:
    """8 bits per code (256 centroids) when the sample allows 39 points per centroid, fewer otherwise."""
    return int(max(1, min(8, math.floor(math.log2(max(2, train_size) / MIN_POINTS_PER_LIST)))))


def default_train_size(n: int, nlist: int) -> int:
    return min(n, max(40 * nlist, DEFAULT_TRAIN_MAX))


def parse_memory(value: str | int | None) -> int | None:
    """``4G``, ``512MB``, ``1.5GiB``, ``2000000000`` → bytes; None stays None."""
    if value is None or isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(value))
    if not m:
        raise UsageError(f"--max-memory {value!r} is not a size; use e.g. 512M, 4G, 1.5GB or a number of bytes")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    n = int(float(m.group(1)) * scale)
    if n <= 0:
        raise UsageError(f"--max-memory {value!r} must be more than 0 bytes")
    return n


def available_memory() -> int:
    """Bytes the machine can still give (psutil), or a conservative 4 GiB if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError):  # pragma: no cover - psutil is a dependency, but never fail planning on it
        return 4 * 2**30


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class IndexPlan:
    """What will be built and why."""

    kind: str  # flat | hnsw | ivfpq | factory
    factory: str  # the Faiss index-factory string (ids: IDMap, or native for IVF)
    params: dict[str, Any]
    reason: str
    estimated_bytes: int
    train_size: int = 0


def estimate_bytes(kind: str, n: int, d: int, params: dict[str, Any]) -> int:
    """Memory an index of this kind holds (vectors, graph, codes, ids), as autofaiss estimates it."""
    if kind == "flat":
        return n * (4 * d + 8)
    if kind == "hnsw":
        m = params["hnsw_m"]
        # level 0 keeps 2M neighbours, upper levels M each on 1/M of the nodes; int32 links
        return int(n * (4 * d + 8 + 4 * (2 * m + 1.1) + 16))
    if kind == "ivfpq":
        code = math.ceil(params["pq_m"] * params["pq_bits"] / 8)
        refine = {"SQ8": d, "SQfp16": 2 * d, "Flat": 4 * d, "none": 0}[params["refine"]]
        extra = 8 if refine else 0  # IDMap over the refine index
        return int(n * (code + 8 + refine + extra) + params["nlist"] * d * 4 + 256 * d * 4)
    raise ValueError(kind)


def _ivfpq_factory(p: dict[str, Any]) -> str:
    s = f"IVF{p['nlist']},PQ{p['pq_m']}x{p['pq_bits']}"
    if p["refine"] != "none":
        return f"IDMap,{s},Refine({p['refine']})"
    return s


def _ivfpq_params(n: int, d: int, ov: IndexOverrides, refine: str | None = None) -> tuple[dict[str, Any], int]:
    nlist = ov.nlist or default_nlist(n)
    if nlist > n:
        raise UsageError(f"--nlist {nlist} is more than the {n} vectors; use at most {n} (default {default_nlist(n)})")
    pq_m = ov.pq_m or default_pq_m(d)
    if d % pq_m:
        divisors = [m for m in range(1, d + 1) if d % m == 0 and m <= d // 2]
        raise UsageError(f"--pq-m {pq_m} does not divide the dimension {d}; valid choices: "
                          + ", ".join(map(str, divisors[-12:])))
    train = min(n, ov.train_size or default_train_size(n, nlist))
    bits = ov.pq_bits or default_pq_bits(train)
    p = {"nlist": nlist, "pq_m": pq_m, "pq_bits": bits, "refine": refine or ov.refine or "SQ8"}
    return p, train


def _hnsw_params(ov: IndexOverrides) -> dict[str, Any]:
    return {"hnsw_m": ov.hnsw_m or HNSW_M, "ef_construction": ov.ef_construction or HNSW_EF_CONSTRUCTION}


def plan_index(n: int, d: int, icfg: IndexConfig, ov: IndexOverrides = IndexOverrides()) -> IndexPlan:
    """Choose the index (type, factory string, parameters) for n vectors of dimension d."""
    if icfg.factory:
        return IndexPlan("factory", icfg.factory, {}, "--factory given", 0,
                         min(n, ov.train_size or default_train_size(n, default_nlist(n))))
    kind = icfg.index_type
    if kind == "flat":
        return IndexPlan("flat", "IDMap,Flat", {}, "--type flat", estimate_bytes("flat", n, d, {}))
    if kind == "hnsw":
        p = _hnsw_params(ov)
        return IndexPlan("hnsw", f"IDMap,HNSW{p['hnsw_m']},Flat", p, "--type hnsw", estimate_bytes("hnsw", n, d, p))
    if kind == "ivfpq":
        p, train = _ivfpq_params(n, d, ov)
        return IndexPlan("ivfpq", _ivfpq_factory(p), p, "--type ivfpq", estimate_bytes("ivfpq", n, d, p), train)
    if kind != "auto":
        raise UsageError(f"unknown index type {kind!r}; valid choices: auto, flat, ivfpq, hnsw")
    return _plan_auto(n, d, icfg, ov)


def _plan_auto(n: int, d: int, icfg: IndexConfig, ov: IndexOverrides) -> IndexPlan:
    explicit = parse_memory(icfg.max_memory)
    budget = explicit if explicit is not None else available_memory() // 2
    source = f"--max-memory {icfg.max_memory}" if explicit is not None else "half the available memory"
    budget_s = f"{_fmt_bytes(budget)} ({source})"
    flat_b = estimate_bytes("flat", n, d, {})
    if n <= AUTO_FLAT_MAX and flat_b <= budget:
        return IndexPlan("flat", "IDMap,Flat", {},
                         f"auto: {n} vectors <= {AUTO_FLAT_MAX}: exact search is fast enough and needs no tuning "
                         f"({_fmt_bytes(flat_b)} <= budget {budget_s})", flat_b)
    hp = _hnsw_params(ov)
    hnsw_b = estimate_bytes("hnsw", n, d, hp)
    if n <= AUTO_HNSW_MAX and hnsw_b <= budget:
        return IndexPlan("hnsw", f"IDMap,HNSW{hp['hnsw_m']},Flat", hp,
                         f"auto: {n} vectors <= {AUTO_HNSW_MAX}: HNSW{hp['hnsw_m']} over full vectors needs "
                         f"{_fmt_bytes(hnsw_b)} <= budget {budget_s}; fastest at high recall, no training", hnsw_b)
    if n > AUTO_HNSW_MAX:
        why_not = (f"{n} vectors > {AUTO_HNSW_MAX}: HNSW{hp['hnsw_m']} would need {_fmt_bytes(hnsw_b)}, minutes of "
                   "build per million vectors on few cores and a deep search (efSearch 512) on clustered data")
    else:
        why_not = f"HNSW{hp['hnsw_m']} needs {_fmt_bytes(hnsw_b)} > budget {budget_s}"
    tried: list[str] = []
    # Compressed: IVF-PQ re-ranked on SQ8 codes if that fits, else PQ codes alone, as large as fit.
    for refine in ("SQ8", "none"):
        p, train = _ivfpq_params(n, d, ov, refine=refine)
        sizes = (d // 8, d // 16, d // 32, d // 64, 8, 4) if refine != "none" else (d // 4, d // 8, d // 16, d // 32,
                                                                                   d // 64, 8, 4)
        candidates = [p["pq_m"]] if ov.pq_m else [m for m in sizes if m >= 1 and d % m == 0]
        for m in dict.fromkeys(candidates):
            q = {**p, "pq_m": m}
            b = estimate_bytes("ivfpq", n, d, q)
            if b <= budget:
                how = ("PQ codes find candidates, 8-bit scalar codes re-rank them" if refine != "none" else
                       "PQ codes only, no re-ranking (recall is limited by the PQ size; give more memory for more)")
                return IndexPlan("ivfpq", _ivfpq_factory(q), q,
                                 f"auto: {why_not}; {_ivfpq_factory(q)}: {how}, {_fmt_bytes(b)} <= budget {budget_s}",
                                 b, train)
            tried.append(f"{_ivfpq_factory(q)} {_fmt_bytes(b)}")
    raise UsageError(f"no index fits in --max-memory {_fmt_bytes(budget)} for {n}x{d} vectors "
                      f"(smallest tried: {tried[-1]}); raise --max-memory")


# ----------------------------------------------------------------------------------------------- structure


def _walk(index: Any) -> list[Any]:
    """The index and every sub-index it wraps, downcast (IDMap → PreTransform → Refine → IVF/HNSW)."""
    faiss = _faiss()
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


def _supports_ids(index: Any) -> bool:
    """True where add_with_ids works natively: IVF, possibly behind pre-transforms, or an IDMap."""
    faiss = _faiss()
    for ix in _walk(index):
        if isinstance(ix, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexIVF)):
            return True
        if not isinstance(ix, faiss.IndexPreTransform):
            return False
    return False


def search_space(index: Any) -> list[tuple[str, list[int]]]:
    """The search-time parameters of an index, each with its candidate values (cheapest first)."""
    faiss = _faiss()
    space: list[tuple[str, list[int]]] = []
    for ix in _walk(index):
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


def parse_params(text: str | None) -> dict[str, int]:
    """``"nprobe=16,efSearch=64"`` → dict; a clear error for anything else."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or k not in ("nprobe", "efSearch", "k_factor"):
            raise UsageError(f"search parameter {part.strip()!r} not understood; use nprobe=N, efSearch=N, k_factor=N")
        try:
            out[k] = int(v)
        except ValueError:
            raise UsageError(f"search parameter {part.strip()!r}: {v.strip()!r} is not an integer") from None
        if out[k] <= 0:
            raise UsageError(f"search parameter {part.strip()!r} must be positive")
    return out


def set_search_params(index: Any, params: dict[str, int]) -> None:
    """Set nprobe / efSearch / k_factor wherever they apply inside the index."""
    faiss = _faiss()
    applied = set()
    for ix in _walk(index):
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
    faiss = _faiss()
    out: dict[str, int] = {}
    for ix in _walk(index):
        if isinstance(ix, faiss.IndexIVF):
            out["nprobe"] = int(ix.nprobe)
        elif isinstance(ix, faiss.IndexHNSW):
            out["efSearch"] = int(ix.hnsw.efSearch)
        elif isinstance(ix, faiss.IndexRefine):
            out["k_factor"] = int(ix.k_factor)
    return out


# ----------------------------------------------------------------------------------------------- recall


def exact_neighbours(xq: np.ndarray, xb: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-k by inner product (brute force, no index copy)."""
    faiss = _faiss()
    _, idx = faiss.knn(np.ascontiguousarray(xq), xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    return idx


def _drop_self(labels: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first k labels that are not the query's own id (queries are in-index vectors)."""
    out = np.full((labels.shape[0], k), -1, np.int64)
    for i, (row, sid) in enumerate(zip(labels, self_ids)):
        kept = row[row != sid][:k]
        out[i, : len(kept)] = kept
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """k-recall@k: share of the exact top-k that the index returned in its top-k (autofaiss' measure)."""
    k = min(k, truth.shape[1])
    if k == 0 or len(truth) == 0:
        return float("nan")
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth))
    return hits / (k * len(truth))


@dataclass
class EvalSet:
    """Held-out queries (in-index vectors) and their exact neighbours as ids, self excluded."""

    xq: np.ndarray
    qids: np.ndarray
    truth: np.ndarray  # (nq, k) ids


def make_eval_set(x: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int) -> EvalSet:
    xq = x[rows]
    k_eff = min(k, len(x) - 1)
    nn = exact_neighbours(xq, x, k_eff + 1)
    truth = _drop_self(np.where(nn >= 0, ids[np.clip(nn, 0, None)], -1), ids[rows], k_eff)
    return EvalSet(xq, ids[rows], truth)


def evaluate(index: Any, ev: EvalSet, *, min_seconds: float = 0.0) -> dict[str, float]:
    """recall@1, recall@10 and queries/s of ``index`` on ``ev`` (self hits removed)."""
    k = ev.truth.shape[1]
    if k == 0:
        return {"recall@1": float("nan"), "recall@10": float("nan"), "qps": float("nan")}
    kk = min(k + 1, index.ntotal)
    t0 = time.perf_counter()
    reps = 0
    while True:
        _, labels = index.search(ev.xq, kk)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            break
    found = _drop_self(labels, ev.qids, k)
    return {
        "recall@1": recall_at(found, ev.truth, 1),
        "recall@10": recall_at(found, ev.truth, RECALL_K),
        "qps": reps * len(ev.xq) / max(elapsed, 1e-9),
    }


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


# ----------------------------------------------------------------------------------------------- build


def check_vectors(x: np.ndarray, ids: np.ndarray, *, expected_dim: int | None = None, where: str = "") -> np.ndarray:
    """Refuse empty input, NaN/inf or zero vectors, duplicate ids, a wrong dimension; normalise if needed."""
    n, d = x.shape
    if n == 0:
        raise UsageError(f"{where or 'the embeddings'} hold no vectors; embed some images first")
    if expected_dim is not None and d != expected_dim:
        raise UsageError(f"{where or 'the embeddings'} have dimension {d}, but the run's model outputs "
                          f"{expected_dim}-d vectors; these embeddings do not belong to this run")
    step = 65_536
    renorm = False
    for s in range(0, n, step):
        blk = x[s : s + step]
        finite = np.isfinite(blk).all(axis=1)
        if not finite.all():
            bad = s + int(np.argmin(finite))
            count = sum(int((~np.isfinite(x[t : t + step]).all(axis=1)).sum()) for t in range(0, n, step))
            raise UsageError(f"{where or 'the embeddings'}: {count} vector(s) contain NaN or inf "
                              f"(first: row {bad}, id {int(ids[bad])}); re-embed those images")
        norms = np.linalg.norm(blk, axis=1)
        if (norms < 1e-6).any():
            bad = s + int(np.argmin(norms))
            raise UsageError(f"{where or 'the embeddings'}: row {bad} (id {int(ids[bad])}) is a zero vector")
        renorm |= bool((np.abs(norms - 1.0) > 1e-3).any())
    if renorm:
        log.warning("%s: vectors are not unit length; normalising them so inner product is cosine", where or "embeddings")
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    uniq = np.unique(ids)
    if len(uniq) != n:
        srt = np.sort(ids)
        dup = int(srt[np.nonzero(srt[1:] == srt[:-1])[0][0]])
        raise UsageError(f"{where or 'the embeddings'}: id {dup} appears more than once; ids must be unique")
    return np.ascontiguousarray(x, dtype=np.float32)


def ids_digest(ids: np.ndarray) -> str:
    """Order-independent fingerprint of a set of ids (ties an index to its embeddings)."""
    return hashlib.sha256(np.sort(np.asarray(ids, np.int64)).tobytes()).hexdigest()[:32]


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not enabled, leave=False)


def _gpu_count() -> int:
    faiss = _faiss()
    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except RuntimeError:  # pragma: no cover
        return 0


def _single_threaded_blas() -> Any:
    """BLAS on one thread while training: k-means calls thousands of small GEMMs, and OpenBLAS's own
    OpenMP team on top of faiss's made PQ training ~60x slower on a busy 2-core machine (see the benchmark)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _create(plan: IndexPlan, d: int) -> Any:
    faiss = _faiss()
    try:
        index = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"Faiss cannot build {plan.factory!r} for dimension {d}: {msg[:200]}") from None
    if not _supports_ids(index):
        index = faiss.IndexIDMap(index)
        plan.factory = f"IDMap,{plan.factory}"
    for ix in _walk(index):
        if isinstance(ix, faiss.IndexHNSW):
            ix.hnsw.efConstruction = int(plan.params.get("ef_construction", HNSW_EF_CONSTRUCTION))
        if isinstance(ix, (faiss.IndexIVFPQ, faiss.IndexPQ)):
            # Polysemous training (Hamming-filtered search, which we never use) cost ~250 s of a 250 s
            # IVF-PQ training at 19k x 768; the factory's "np" suffix does the same.
            ix.do_polysemous_training = False
    return index


def build_index(x: np.ndarray, ids: np.ndarray, plan: IndexPlan, *, progress: bool = True,
                seed: int = 0, train_rows: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
    """Create, train (on a sample) and fill the index; returns it with timings and the device used."""
    faiss = _faiss()
    n, d = x.shape
    index = _create(plan, d)
    timings: dict[str, float] = {}
    device = "cpu"
    trained_on = 0
    t0 = time.perf_counter()
    if not index.is_trained:
        if train_rows is None:
            rng = np.random.default_rng(seed)
            size = min(n, plan.train_size or default_train_size(n, default_nlist(n)))
            train_rows = np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n)
        xt = np.ascontiguousarray(x[train_rows])
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.max_points_per_centroid = max(256, math.ceil(len(xt) / max(1, ivf.nlist)))
            ivf.cp.seed = seed
            ivf.cp.niter = KMEANS_ITERATIONS
        gpus = _gpu_count()
        gpu_kmeans = None
        if gpus and ivf is not None:
            # The k-means of the coarse quantizer is the expensive part: run its assignment on the GPUs.
            gpu_kmeans = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(d))
            ivf.clustering_index = gpu_kmeans
            device = f"gpu x{gpus} (k-means)"
        log.info("training %s on %d vectors (%s)", plan.factory, len(xt), device)
        with _single_threaded_blas():
            index.train(xt)
        trained_on = len(xt)
        if gpu_kmeans is not None:
            ivf.clustering_index = None
            del gpu_kmeans
        del xt
    timings["train_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    with _progress(n, "adding to index", progress) as bar:
        for s in range(0, n, ADD_BATCH):
            e = min(n, s + ADD_BATCH)
            index.add_with_ids(np.ascontiguousarray(x[s:e]), np.ascontiguousarray(ids[s:e], dtype=np.int64))
            bar.update(e - s)
    timings["add_s"] = time.perf_counter() - t1
    if index.ntotal != n:
        raise RuntimeError(f"index holds {index.ntotal} vectors after adding {n}")
    return index, {"timings": timings, "device": device, "train_size": trained_on}


# ----------------------------------------------------------------------------------------------- files


def meta_url(index_url: str) -> str:
    """``indexes/x.faiss`` → ``indexes/x.json`` (the description beside the index)."""
    base = index_url.rstrip("/")
    head, _, tail = base.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return f"{head}/{stem}.json" if head else f"{stem}.json"


def save_index(index: Any, url: str) -> int:
    """Write the index atomically (local: temp file + rename; object store: one PUT); returns its size."""
    faiss = _faiss()
    fs, path = fsutil.url_to_fs(url)
    if fsutil.is_local(fs):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            faiss.write_index(index, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return os.path.getsize(path)
    buf = faiss.serialize_index(index)
    fsutil.atomic_write_bytes(url, memoryview(buf))
    return int(buf.nbytes)


def load_index(url: str, *, mmap: bool = False) -> Any:
    """Read an index from a local path or URL."""
    faiss = _faiss()
    fs, path = fsutil.url_to_fs(url)
    if not fs.exists(path):
        raise UsageError(f"index {url} does not exist; build it with: python -m job index")
    try:
        if fsutil.is_local(fs):
            return faiss.read_index(path, faiss.IO_FLAG_MMAP if mmap else 0)
        return faiss.deserialize_index(np.frombuffer(fs.cat_file(path), dtype=np.uint8))
    except RuntimeError as exc:
        raise UsageError(f"{url} is not a readable Faiss index ({str(exc).strip().splitlines()[-1][:160]})") from None


def _expected_dim(emb_url: str) -> int | None:
    """Dimension the run's model outputs, if a manifest sits beside the embeddings."""
    parent = emb_url.rstrip("/").rpartition("/")[0] or "."
    url = fsutil.join(parent, "manifest.json")
    try:
        if fsutil.exists(url):
            dim = (fsutil.read_json(url).get("model") or {}).get("embed_dim")
            return int(dim) if dim else None
    except (OSError, ValueError):
        return None
    return None


def open_dataset(url: str) -> Any:
    """A pyarrow dataset over a parquet file or folder; a clear error if there is none."""
    import pyarrow.dataset as ds

    fs, path = fsutil.url_to_fs(url)
    if not fs.exists(path):
        raise UsageError(f"{url} does not exist")
    try:
        return ds.dataset(path, filesystem=fs, format="parquet")
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise UsageError(f"{url} is not a parquet dataset ({str(exc).splitlines()[0][:160]})") from None


def load_vectors(emb_url: str) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) of an embeddings parquet, streamed into one matrix and checked (``check_vectors``)."""
    import pyarrow as pa

    dataset = open_dataset(emb_url)
    names = dataset.schema.names
    n = dataset.count_rows() if names else 0
    if n == 0:
        raise UsageError(f"{emb_url} holds no vectors; embed some images first")
    missing = [c for c in ("id", "embedding") if c not in names]
    if missing:
        raise UsageError(f"{emb_url} has no {', '.join(missing)} column; it is not an embeddings table "
                          f"(columns: {', '.join(names)})")
    typ = dataset.schema.field("embedding").type
    if not (pa.types.is_fixed_size_list(typ) and pa.types.is_floating(typ.value_type)):
        raise UsageError(f"{emb_url}: column 'embedding' is {typ}, expected fixed_size_list<float>[d]")
    d = typ.list_size
    x = np.empty((n, d), np.float32)
    ids = np.empty(n, np.int64)
    pos = 0
    for batch in dataset.to_batches(columns=["id", "embedding"]):
        m = batch.num_rows
        if pos + m > n:
            raise UsageError(f"{emb_url} changed while it was read; try again")
        ids[pos : pos + m] = batch.column(0).to_numpy(zero_copy_only=False)
        x[pos : pos + m] = batch.column(1).flatten().to_numpy(zero_copy_only=False).reshape(m, d)
        pos += m
    if pos != n:
        raise UsageError(f"{emb_url} changed while it was read; try again")
    return check_vectors(x, ids, expected_dim=_expected_dim(emb_url), where=emb_url), ids


def build_index_file(emb_url: str, index_url: str, icfg: IndexConfig, ov: IndexOverrides = IndexOverrides(),
                     *, progress: bool = True) -> dict[str, Any]:
    """``job index``: read, check, plan, build, tune, measure, then write the index and its ``.json``."""
    t_start = time.perf_counter()
    emb_url = embeddings_url(emb_url)
    x, ids = load_vectors(emb_url)
    return build_from_arrays(x, ids, index_url, icfg, ov, progress=progress, emb_url=emb_url, t_start=t_start)


def held_out(x: np.ndarray, ids: np.ndarray, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, EvalSet]:
    """(query rows, the other rows shuffled, exact neighbours of the queries) for tuning and measuring."""
    n = len(x)
    perm = np.random.default_rng(seed).permutation(n)
    nq = min(queries, n)
    q_rows = perm[:nq]  # random order: the first half tunes, the second half measures
    return q_rows, perm[nq:], make_eval_set(x, ids, q_rows, RECALL_K)


def build_from_arrays(x: np.ndarray, ids: np.ndarray, index_url: str, icfg: IndexConfig,
                      ov: IndexOverrides = IndexOverrides(), *, progress: bool = True, emb_url: str | None = None,
                      t_start: float | None = None,
                      evaluation: tuple[np.ndarray, np.ndarray, EvalSet] | None = None) -> dict[str, Any]:
    """Plan, build, tune and measure an index over checked vectors; write it and its ``.json``."""
    faiss = _faiss()
    t_start = time.perf_counter() if t_start is None else t_start
    n, d = x.shape
    plan = plan_index(n, d, icfg, ov)
    log.info("index: %s -> %s; %s", plan.factory, index_url, plan.reason)
    fixed = parse_params(ov.search_params)

    # Held-out queries: never in the training sample; half tune, half measure.
    q_rows, rest, ev_all = evaluation or held_out(x, ids, ov.queries, ov.seed)
    nq = len(q_rows)
    if plan.train_size > n - nq >= plan.train_size // 2:
        # train on what the held-out queries leave (and size the PQ codebooks for that sample)
        plan = plan_index(n, d, icfg, dataclasses.replace(ov, train_size=n - nq))
    if n - nq < plan.train_size // 2:
        rest = np.concatenate([rest, q_rows])  # tiny sets: the queries have to help train
    train_rows = np.sort(rest[: plan.train_size]) if plan.train_size else None
    index, info = build_index(x, ids, plan, progress=progress, seed=ov.seed, train_rows=train_rows)

    t_tune = time.perf_counter()
    half = max(1, nq // 2) if nq >= 20 else nq
    ev_tune = EvalSet(ev_all.xq[:half], ev_all.qids[:half], ev_all.truth[:half])
    ev_test = EvalSet(ev_all.xq[half:], ev_all.qids[half:], ev_all.truth[half:]) if nq >= 20 else ev_all
    trials: list[dict[str, Any]] = []
    target_met: bool | None = None
    if fixed:
        set_search_params(index, fixed)
        params = current_search_params(index)
    elif search_space(index):
        params, trials, target_met = tune(index, ev_tune, icfg.target_recall)
        if not target_met:
            log.warning("index: recall@10 target %.3f not reached (recall stops improving at %s); "
                        "use more memory (--max-memory) or another --type", icfg.target_recall, format_params(params))
    else:
        params = {}
    measured = evaluate(index, ev_test, min_seconds=0.2)
    if target_met is None:
        target_met = bool(measured["recall@10"] >= icfg.target_recall) if not math.isnan(measured["recall@10"]) else True
    timings = {**info["timings"], "tune_s": time.perf_counter() - t_tune}

    size = save_index(index, index_url)
    meta: dict[str, Any] = {
        "index": index_url.rstrip("/").rsplit("/", 1)[-1],
        "embeddings": emb_url or "",
        "type": plan.kind,
        "factory": plan.factory,
        "metric": "inner_product",
        "params": plan.params,
        "train_size": int(info["train_size"]),
        "search_params": format_params(params),
        "reason": plan.reason,
        "n": int(n),
        "d": int(d),
        "ids_sha256": ids_digest(ids),
        "bytes": int(size),
        "estimated_memory_bytes": int(plan.estimated_bytes),
        "build_seconds": round(time.perf_counter() - t_start, 3),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "device": info["device"],
        "threads": int(faiss.omp_get_max_threads()),
        "recall@1": _nan_none(round(measured["recall@1"], 4)),
        "recall@10": _nan_none(round(measured["recall@10"], 4)),
        "recall_queries": len(ev_test.xq),
        "recall_method": "held-out in-index vectors as queries (not in the training sample), own id removed, "
                         "k-recall@k against exact inner-product search",
        "qps": round(measured["qps"], 1),
        "target_recall": icfg.target_recall,
        "target_met": bool(target_met),
        "tuning": trials,
        "faiss_version": faiss.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    fsutil.write_json(meta_url(index_url), meta)
    log.info("index: %d x %d, %s, %s on disk, recall@1 %.3f recall@10 %.3f at %s, %.0f queries/s, built in %.1f s",
             n, d, plan.factory, _fmt_bytes(size), measured["recall@1"], measured["recall@10"],
             meta["search_params"] or "exact", measured["qps"], meta["build_seconds"])
    return meta


def _nan_none(v: float) -> float | None:
    return None if isinstance(v, float) and math.isnan(v) else v


def build_run_index(cfg: JobConfig, layout: RunLayout) -> dict[str, Any]:
    """Index step of ``job run``: OUTDIR/index/index.faiss + index.json; returns the json for the manifest."""
    return build_index_file(layout.embeddings, fsutil.join(layout.index_dir, INDEX_FILE), cfg.index,
                            progress=cfg.progress)


# ----------------------------------------------------------------------------------------------- CLI


def _index_command(cfg: JobConfig, args: argparse.Namespace) -> int:
    if args.refine is not None and args.refine not in REFINE_CHOICES:
        raise UsageError(f"unknown --refine {args.refine!r}; valid choices: {', '.join(REFINE_CHOICES)}")
    if args.run:
        emb = args.embeddings or RunLayout(args.run.rstrip("/")).embeddings
        out = args.index_out or fsutil.join(RunLayout(args.run.rstrip("/")).index_dir, INDEX_FILE)
    else:
        if not args.embeddings:
            raise UsageError("give --embeddings PARQUET (with --index-out FILE) or --run OUTDIR")
        emb = args.embeddings
        out = args.index_out or fsutil.join(embeddings_url(emb).rpartition("/")[0] or ".", "index", INDEX_FILE)
    ov = IndexOverrides(nlist=args.nlist, pq_m=args.pq_m, pq_bits=args.pq_bits, refine=args.refine,
                        hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, train_size=args.train_size,
                        search_params=args.search_params, queries=args.queries, seed=args.seed)
    meta = build_index_file(emb, out, cfg.index, ov, progress=cfg.progress)
    print(f"{out}: {meta['factory']} n={meta['n']} d={meta['d']} recall@10={meta['recall@10']} "
          f"search={meta['search_params'] or 'exact'} -> {meta_url(out)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``index`` subcommand."""
    from .cli import _positive_int, add_common_options, add_index_options

    p = sub.add_parser("index", help="build a Faiss index over a run's embeddings",
                       description="Build a Faiss index (cosine / inner product) over an embeddings parquet, tune its "
                                   "search parameters to --target-recall, and write it with a .json description.")
    add_common_options(p)
    g = p.add_argument_group("input/output")
    g.add_argument("--run", default=None, metavar="OUTDIR", help="a run folder: reads its embeddings, writes OUTDIR/index/")
    g.add_argument("--embeddings", default=None, metavar="PARQUET",
                   help="embeddings parquet (file or dataset folder, local or s3://)")
    g.add_argument("--index-out", default=None, metavar="FILE",
                   help="where the index goes (a .json with the same stem is written beside it)")
    add_index_options(p)
    t = p.add_argument_group("index parameters (default: derived from the number of vectors and dimension)")
    t.add_argument("--nlist", type=_positive_int, default=None, help="IVF lists (default 4*sqrt(n) as a power of 2)")
    t.add_argument("--pq-m", type=_positive_int, default=None, help="PQ sub-quantizers, must divide d (default d/8)")
    t.add_argument("--pq-bits", type=_positive_int, default=None, help="bits per PQ code (default 8)")
    t.add_argument("--refine", default=None, help=f"ivfpq re-ranking codes: {', '.join(REFINE_CHOICES)} (default SQ8)")
    t.add_argument("--hnsw-m", type=_positive_int, default=None, help=f"HNSW links per node (default {HNSW_M})")
    t.add_argument("--ef-construction", type=_positive_int, default=None,
                   help=f"HNSW build beam (default {HNSW_EF_CONSTRUCTION})")
    t.add_argument("--train-size", type=_positive_int, default=None,
                   help=f"training sample (default max(40*nlist, {DEFAULT_TRAIN_MAX}) capped at n)")
    t.add_argument("--search-params", default=None,
                   help="fixed search parameters instead of tuning, e.g. efSearch=128 or nprobe=32,k_factor=8")
    t.add_argument("--queries", type=_positive_int, default=EVAL_QUERIES,
                   help=f"held-out queries for tuning and recall (default {EVAL_QUERIES})")
    t.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
    p.set_defaults(handler=_index_command)
