"""Index building: create, train and fill a Faiss index from a plan, tune it, and write it with its ``.json``.

Every index uses ``METRIC_INNER_PRODUCT`` over unit vectors (cosine). The tuned search parameters are
stored in the index file and in the ``.json`` written beside it, together with the recall that was then
measured on other held-out queries.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import time
import uuid
from typing import Any, cast

import numpy as np

from .. import fsutil
from ..config import IndexConfig, IndexOverrides, JobConfig
from ..errors import UsageError
from ..runfolder import IndexInfo, RunLayout, write_index_info
from ..values import parse_search_params
from ._faiss import load_faiss
from ._gpu import Placement
from .exact import single_threaded_blas
from .ivf_gpu import build_on_gpu, gpu_unsupported
from .plan import HNSW_EF_CONSTRUCTION, IndexPlan, default_nlist, default_train_size, fmt_bytes, plan_index
from .tune import (
    EvalSet,
    current_search_params,
    evaluate,
    format_params,
    held_out,
    queries_eval_set,
    search_space,
    set_search_params,
    tune,
    walk_index,
)
from .vectors import ids_digest, load_vectors

log = logging.getLogger(__name__)

ADD_BATCH = 65_536
KMEANS_ITERATIONS = 10  # coarse k-means; faiss' 25 costs 2.5x the training time, tuned nprobe absorbs the gap
TUNE_SPLIT_MIN = 20  # fewer held-out queries than this: tune and measure on the same ones
QUERY_METHOD = "half tune, half measure; k-recall@k against exact inner-product search"


# ----------------------------------------------------------------------------------------------- build


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not enabled, leave=False)


def _supports_ids(index: Any) -> bool:
    """True where add_with_ids works natively: IVF, possibly behind pre-transforms, or an IDMap."""
    faiss = load_faiss()
    for ix in walk_index(index):
        if isinstance(ix, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexIVF)):
            return True
        if not isinstance(ix, faiss.IndexPreTransform):
            return False
    return False


def _create(plan: IndexPlan, d: int) -> Any:
    faiss = load_faiss()
    try:
        index = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"Faiss cannot build {plan.factory!r} for dimension {d}: {msg[:200]}") from None
    if not _supports_ids(index):
        index = faiss.IndexIDMap(index)
        plan.factory = f"IDMap,{plan.factory}"
    for ix in walk_index(index):
        if isinstance(ix, faiss.IndexHNSW):
            ix.hnsw.efConstruction = int(plan.params.get("ef_construction", HNSW_EF_CONSTRUCTION))
        if isinstance(ix, (faiss.IndexIVFPQ, faiss.IndexPQ)):
            # Polysemous training (Hamming-filtered search, which we never use) cost ~250 s of a 250 s
            # IVF-PQ training at 19k x 768; the factory's "np" suffix does the same.
            ix.do_polysemous_training = False
    return index


def _train_sample(index: Any, x: np.ndarray, plan: IndexPlan, seed: int, train_rows: np.ndarray | None) -> np.ndarray:
    """The training sample, with the IVF's k-means parameters set for it."""
    faiss = load_faiss()
    n = len(x)
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
    return xt


def _fill(index: Any, x: np.ndarray, ids: np.ndarray, progress: bool, timings: dict[str, float],
          xt: np.ndarray | None, plan: IndexPlan, where: str) -> None:
    """Train (when ``xt`` is given) and add every vector in batches, timing both."""
    t0 = time.perf_counter()
    if xt is not None:
        log.info("training %s on %d vectors (%s)", plan.factory, len(xt), where)
        with single_threaded_blas():
            index.train(xt)
    timings["train_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = len(x)
    with _progress(n, f"adding to index ({where})", progress) as bar:
        for s in range(0, n, ADD_BATCH):
            e = min(n, s + ADD_BATCH)
            index.add_with_ids(np.ascontiguousarray(x[s:e]), np.ascontiguousarray(ids[s:e], dtype=np.int64))
            bar.update(e - s)
    timings["add_s"] = time.perf_counter() - t1


def build_index(x: np.ndarray, ids: np.ndarray, plan: IndexPlan, *, progress: bool = True,
                seed: int = 0, train_rows: np.ndarray | None = None,
                placement: Placement | None = None) -> tuple[Any, dict[str, Any]]:
    """Create, train (on a sample) and fill the index; returns it with timings and where it was built.

    With a GPU that ``placement`` allows (default: ``auto``) an IVF index trains and fills on the GPU and comes back
    as a CPU index (:mod:`job.index.ivf_gpu`); a GPU failure rebuilds it on the CPU with one warning."""
    placement = placement if placement is not None else Placement("auto", what="index")
    n, d = x.shape
    index = _create(plan, d)
    timings: dict[str, float] = {}
    xt = None if index.is_trained else _train_sample(index, x, plan, seed, train_rows)
    why_cpu = gpu_unsupported(index) if placement.gpu else None
    if placement.gpu and why_cpu is None:
        try:
            index = build_on_gpu(index, lambda ix: _fill(ix, x, ids, progress, timings, xt, plan, "GPU"))
            on_gpu = True
        except Exception as exc:  # noqa: BLE001 - the CPU builds it again from scratch
            placement.failed("train+add", exc)
            index, on_gpu = _create(plan, d), False
            xt = None if index.is_trained else _train_sample(index, x, plan, seed, train_rows)
    else:
        on_gpu = False
    if not on_gpu:
        _fill(index, x, ids, progress, timings, xt, plan, "CPU")
    for step in ("train", "add") if xt is not None else ("add",):
        placement.ran(step, on_gpu, why_cpu)
    if index.ntotal != n:
        raise RuntimeError(f"index holds {index.ntotal} vectors after adding {n}")
    return index, {"timings": timings, "device": placement.summary(), "train_size": 0 if xt is None else len(xt)}


# ----------------------------------------------------------------------------------------------- files


def save_index(index: Any, url: str) -> int:
    """Write the index atomically (local: temp file + rename; object store: one PUT); returns its size."""
    faiss = load_faiss()
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
    # a view, not a copy of a possibly large index; atomic_write_bytes only hands it to a write
    fsutil.atomic_write_bytes(url, cast(bytes, memoryview(buf)))
    return int(buf.nbytes)


def load_index(url: str, *, mmap: bool = False) -> Any:
    """Read an index from a local path or URL."""
    faiss = load_faiss()
    fs, path = fsutil.url_to_fs(url)
    if not fs.exists(path):
        raise UsageError(f"index {url} does not exist; build it with: python -m job index")
    try:
        if fsutil.is_local(fs):
            return faiss.read_index(path, faiss.IO_FLAG_MMAP if mmap else 0)
        return faiss.deserialize_index(np.frombuffer(fs.cat_file(path), dtype=np.uint8))
    except RuntimeError as exc:
        raise UsageError(f"{url} is not a readable Faiss index ({str(exc).strip().splitlines()[-1][:160]})") from None


# ----------------------------------------------------------------------------------------------- the step


def build_index_file(emb_url: str, index_url: str, icfg: IndexConfig, ov: IndexOverrides | None = None,
                     *, progress: bool = True, expected_dim: int | None = None,
                     column: str = "embedding", queries: tuple[np.ndarray, str] | None = None) -> IndexInfo:
    """``job index``: read, check, plan, build, tune, measure, then write the index and its ``.json``.

    ``ov`` defaults to ``icfg.overrides``; ``expected_dim`` (the run's model output size, when known) refuses
    embeddings of another dimension; ``column``: the vector column indexed; ``queries``: (vectors, what they are)
    to tune and measure with instead of held-out in-index vectors.
    """
    t_start = time.perf_counter()
    emb_url = _embeddings_url(emb_url)
    x, ids = load_vectors(emb_url, expected_dim=expected_dim, column=column)
    ov = icfg.overrides if ov is None else ov
    placement = Placement(icfg.device, what="index")
    evaluation = queries_eval_set(x, ids, queries[0], ov.seed, placement=placement) if queries is not None else None
    return build_from_arrays(x, ids, index_url, icfg, ov, progress=progress, emb_url=emb_url, t_start=t_start,
                             column=column, evaluation=evaluation, placement=placement,
                             recall_method=None if queries is None else f"{queries[1]} as queries, {QUERY_METHOD}")


def _tune_and_measure(index: Any, ev_all: EvalSet, icfg: IndexConfig,
                      fixed: dict[str, int],
                      ) -> tuple[dict[str, int], list[dict[str, Any]], bool, EvalSet, dict[str, float]]:
    """Fixed or tuned search parameters (on half the queries), then recall and speed on the other half."""
    nq = len(ev_all.xq)
    half = max(1, nq // 2) if nq >= TUNE_SPLIT_MIN else nq
    ev_tune = EvalSet(ev_all.xq[:half], ev_all.qids[:half], ev_all.truth[:half])
    ev_test = EvalSet(ev_all.xq[half:], ev_all.qids[half:], ev_all.truth[half:]) if nq >= TUNE_SPLIT_MIN else ev_all
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
    return params, trials, target_met, ev_test, measured


def build_from_arrays(x: np.ndarray, ids: np.ndarray, index_url: str, icfg: IndexConfig,
                      ov: IndexOverrides | None = None, *, progress: bool = True, emb_url: str | None = None,
                      t_start: float | None = None,
                      evaluation: tuple[np.ndarray, np.ndarray, EvalSet] | None = None,
                      column: str = "embedding", recall_method: str | None = None,
                      placement: Placement | None = None) -> IndexInfo:
    """Plan, build, tune and measure an index over checked vectors; write it and its ``.json``.

    Where each step runs follows ``icfg.device`` (or ``placement``, the build's own, when given): the exact search
    for recall truth and IVF training and adding on the GPU when allowed and present; tuning and measuring on the
    CPU, on the index as it is saved and searched. ``IndexInfo.devices`` records each step's device."""
    faiss = load_faiss()
    ov = icfg.overrides if ov is None else ov
    placement = placement if placement is not None else Placement(icfg.device, what="index")
    t_start = time.perf_counter() if t_start is None else t_start
    n, d = x.shape
    plan = plan_index(n, d, icfg, ov)
    log.info("index: %s -> %s; %s", plan.factory, index_url, plan.reason)
    fixed = parse_search_params(ov.search_params)

    # Held-out queries: never in the training sample; half tune, half measure.
    q_rows, rest, ev_all = evaluation or held_out(x, ids, ov.queries, ov.seed, placement=placement)
    nq = len(q_rows)
    if plan.train_size > n - nq >= plan.train_size // 2:
        # train on what the held-out queries leave (and size the PQ codebooks for that sample)
        plan = plan_index(n, d, icfg, dataclasses.replace(ov, train_size=n - nq))
    if n - nq < plan.train_size // 2:
        rest = np.concatenate([rest, q_rows])  # tiny sets: the queries have to help train
    train_rows = np.sort(rest[: plan.train_size]) if plan.train_size else None
    index, info_ = build_index(x, ids, plan, progress=progress, seed=ov.seed, train_rows=train_rows,
                               placement=placement)

    t_tune = time.perf_counter()
    params, trials, target_met, ev_test, measured = _tune_and_measure(index, ev_all, icfg, fixed)
    timings = {**info_["timings"], "tune_s": time.perf_counter() - t_tune}
    placement.ran("tune", False, "the saved CPU index is tuned and measured as it will be searched")

    size = save_index(index, index_url)
    info = IndexInfo(
        index=index_url.rstrip("/").rsplit("/", 1)[-1], embeddings=emb_url or "", column=column, type=plan.kind,
        factory=plan.factory, metric="inner_product", params=plan.params, train_size=int(info_["train_size"]),
        search_params=format_params(params), reason=plan.reason, n=int(n), d=int(d), ids_sha256=ids_digest(ids),
        size_bytes=int(size), estimated_memory_bytes=int(plan.estimated_bytes),
        build_seconds=round(time.perf_counter() - t_start, 3), timings={k: round(v, 3) for k, v in timings.items()},
        device=placement.summary(), devices=dict(placement.steps), device_notes=dict(placement.notes),
        fallbacks=list(placement.fallbacks), threads=int(faiss.omp_get_max_threads()),
        recall_at_1=_nan_none(round(measured["recall@1"], 4)), recall_at_10=_nan_none(round(measured["recall@10"], 4)),
        recall_queries=len(ev_test.xq),
        recall_method=recall_method or f"held-out in-index vectors as queries (not in the training sample), own id "
                                       f"removed, {QUERY_METHOD}",
        qps=round(measured["qps"], 1), target_recall=icfg.target_recall, target_met=bool(target_met), tuning=trials,
        faiss_version=faiss.__version__, created=dt.datetime.now(dt.timezone.utc).isoformat())
    write_index_info(index_url, info)
    log.info("index: %d x %d, %s, %s on disk, recall@1 %.3f recall@10 %.3f at %s, %.0f queries/s, built in %.1f s",
             n, d, plan.factory, fmt_bytes(size), measured["recall@1"], measured["recall@10"],
             info.search_params or "exact", measured["qps"], info.build_seconds)
    return info


def _nan_none(v: float) -> float | None:
    return None if isinstance(v, float) and math.isnan(v) else v


def _embeddings_url(run_or_file: str) -> str:
    return RunLayout.locate(run_or_file).embeddings


def build_run_index(cfg: JobConfig, layout: RunLayout, *, expected_dim: int | None = None) -> IndexInfo:
    """Index step of ``job run``: OUTDIR/index/index.faiss + index.json; returns the json for the manifest."""
    return build_index_file(layout.embeddings, layout.index, cfg.index,
                            cfg.index.overrides, progress=cfg.progress, expected_dim=expected_dim)
