"""Index planning: which Faiss index (factory string, parameters) for n vectors of dimension d and a memory budget.

Types: ``flat`` (exact), ``hnsw`` (graph over full vectors), ``ivfpq`` (inverted lists of PQ codes,
re-ranked on 8-bit scalar codes by default), ``auto`` (chosen from n, d and a memory budget, the way
autofaiss reasons), or any index-factory string (``--factory``). Pure arithmetic: no Faiss import.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import IndexConfig, IndexOverrides
from ..errors import UsageError

AUTO_FLAT_MAX = 50_000  # up to here exact search is fast (~2k queries/s on 2 cores at d=768): no approximation
AUTO_HNSW_MAX = 1_000_000  # beyond, IVF-PQ + SQ8 re-ranking beat HNSW32 in the benchmark (docs/benchmarks.md)
MIN_POINTS_PER_LIST = 39  # faiss k-means wants >= 39 training points per centroid
DEFAULT_TRAIN_MAX = 200_000  # IVF/PQ training sample cap (beyond 40 points per list)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40


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


def available_memory() -> int:
    """Bytes the machine can still give (psutil), or a conservative 4 GiB if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError):  # pragma: no cover - psutil is a dependency, but never fail planning on it
        return 4 * 2**30


def fmt_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB`` (for reasons and logs)."""
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


def plan_index(n: int, d: int, icfg: IndexConfig, ov: IndexOverrides | None = None) -> IndexPlan:
    """Choose the index (type, factory string, parameters) for n vectors of dimension d.

    ``ov`` defaults to ``icfg.overrides``.
    """
    ov = icfg.overrides if ov is None else ov
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
    explicit = icfg.max_memory
    budget = explicit if explicit is not None else available_memory() // 2
    source = "--max-memory" if explicit is not None else "half the available memory"
    budget_s = f"{fmt_bytes(budget)} ({source})"
    flat_b = estimate_bytes("flat", n, d, {})
    if n <= AUTO_FLAT_MAX and flat_b <= budget:
        return IndexPlan("flat", "IDMap,Flat", {},
                         f"auto: {n} vectors <= {AUTO_FLAT_MAX}: exact search is fast enough and needs no tuning "
                         f"({fmt_bytes(flat_b)} <= budget {budget_s})", flat_b)
    hp = _hnsw_params(ov)
    hnsw_b = estimate_bytes("hnsw", n, d, hp)
    if n <= AUTO_HNSW_MAX and hnsw_b <= budget:
        return IndexPlan("hnsw", f"IDMap,HNSW{hp['hnsw_m']},Flat", hp,
                         f"auto: {n} vectors <= {AUTO_HNSW_MAX}: HNSW{hp['hnsw_m']} over full vectors needs "
                         f"{fmt_bytes(hnsw_b)} <= budget {budget_s}; fastest at high recall, no training", hnsw_b)
    if n > AUTO_HNSW_MAX:
        why_not = (f"{n} vectors > {AUTO_HNSW_MAX}: HNSW{hp['hnsw_m']} would need {fmt_bytes(hnsw_b)}, minutes of "
                   "build per million vectors on few cores and a deep search (efSearch 512) on clustered data")
    else:
        why_not = f"HNSW{hp['hnsw_m']} needs {fmt_bytes(hnsw_b)} > budget {budget_s}"
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
                                 f"auto: {why_not}; {_ivfpq_factory(q)}: {how}, {fmt_bytes(b)} <= budget {budget_s}",
                                 b, train)
            tried.append(f"{_ivfpq_factory(q)} {fmt_bytes(b)}")
    raise UsageError(f"no index fits in --max-memory {fmt_bytes(budget)} for {n}x{d} vectors "
                     f"(smallest tried: {tried[-1]}); raise --max-memory")
