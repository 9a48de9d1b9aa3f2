"""Projection stage: a 2-D UMAP map of a run's embeddings, written to ``OUTDIR/umap2d.parquet`` (id, x, y).

umap-learn (cosine) on the CPU; cuML's UMAP when it is importable and a CUDA device is present. Runs
larger than ``fit_sample`` are fitted on a seeded random sample and the remaining rows are placed with
``transform`` in chunks (docs/benchmarks.md: at 200k x 768 on 2 cores, the same wall time as fitting every
row with 23% less CPU and 38% less memory; the fit then stays at the sample's size while ``transform`` grows
linearly, which is what keeps ~1.4M images within a few GiB).
"""
from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from .config import MIN_DIST, N_NEIGHBORS, UMAP_BACKENDS, JobConfig, ProjectConfig
from .errors import UsageError
from .runfolder import Projection, RunLayout, read_vectors, write_table

log = logging.getLogger(__name__)

UMAP_SCHEMA = pa.schema(
    [pa.field("id", pa.int64(), nullable=False), pa.field("x", pa.float32()), pa.field("y", pa.float32())]
)
BACKENDS = UMAP_BACKENDS
TRANSFORM_CHUNK = 50_000


@dataclass(frozen=True)
class UmapParams:
    """UMAP knobs; defaults are umap-learn's except the metric (cosine: the vectors are unit length)."""

    n_neighbors: int = N_NEIGHBORS
    min_dist: float = MIN_DIST
    n_epochs: int | None = None  # None: umap-learn's default (200 above 10k points, 500 below)
    fit_sample: int = 100_000
    seed: int = 0
    backend: str = "auto"

    @classmethod
    def from_config(cls, pc: ProjectConfig) -> UmapParams:
        """The knobs of ``job run``/``job project`` (validated in ``config``)."""
        return cls(n_neighbors=pc.n_neighbors, min_dist=pc.min_dist, n_epochs=pc.n_epochs,
                   fit_sample=pc.fit_sample, seed=pc.seed, backend=pc.backend)


class PeakMemory:
    """Samples this process's resident memory in a thread; ``peak_mb`` is the highest value seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self.peak = self._rss()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, self._rss())

        self._thread = threading.Thread(target=loop, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def cuml_available() -> bool:
    """True when cuML imports and a CUDA device is visible."""
    try:
        import cuml  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure (missing CUDA libs too) means "not available"
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def pick_backend(backend: str) -> str:
    """``auto`` is cuML when available, else umap-learn; asking for cuML without it is an error."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown UMAP backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuml" if cuml_available() else "umap-learn"
    if backend == "cuml" and not cuml_available():
        raise UsageError("--backend cuml asked for, but cuML or a CUDA device is missing; valid choices here: "
                          "auto, umap-learn")
    return backend


def _make_umap(backend: str, n_fit: int, p: UmapParams) -> Any:
    n_neighbors = max(2, min(p.n_neighbors, n_fit - 1))
    if backend == "cuml":
        from cuml.manifold import UMAP as CuUMAP

        return CuUMAP(n_components=2, n_neighbors=n_neighbors, min_dist=p.min_dist, metric="cosine",
                      n_epochs=p.n_epochs, random_state=p.seed)
    import umap

    # A fixed random_state makes umap-learn single-threaded; above 20k points the fit uses every core
    # instead, so the seed then fixes the sample only (the map is the same up to small layout noise).
    seeded = n_fit <= 20_000
    return umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=p.min_dist,
        metric="cosine",
        n_epochs=p.n_epochs,
        random_state=p.seed if seeded else None,
        n_jobs=1 if seeded else -1,
        # Spectral init needs a connected-enough graph; tiny runs (tests, a scene or two) start at random.
        init="spectral" if n_fit >= 64 else "random",
        low_memory=True,
    )


def compute_umap(
    matrix: np.ndarray,
    params: UmapParams = UmapParams(),
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """2-D coordinates (n, 2) float32 for unit-length rows of ``matrix``, plus a description of how.

    Up to ``params.fit_sample`` rows are fitted; the rest (if any) are placed with ``transform``.
    Fewer than 4 rows get a PCA layout (UMAP needs neighbours).
    """
    say = progress or log.info
    n = int(matrix.shape[0])
    info: dict[str, Any] = {"n": n, "metric": "cosine", "n_neighbors": params.n_neighbors,
                            "min_dist": params.min_dist, "n_epochs": params.n_epochs, "seed": params.seed}
    if n < 4:
        x = matrix - matrix.mean(axis=0, keepdims=True) if n else matrix
        coords = np.zeros((n, 2), np.float32)
        if n > 1:
            _, _, vt = np.linalg.svd(x, full_matrices=False)
            k = min(2, vt.shape[0])
            coords[:, :k] = x @ vt[:k].T
        info.update(method="pca", backend="numpy", fit_sample=n)
        return coords, info
    backend = pick_backend(params.backend)
    rng = np.random.default_rng(params.seed)
    if n > params.fit_sample:
        fit_rows = np.sort(rng.choice(n, size=params.fit_sample, replace=False))
        rest = np.setdiff1d(np.arange(n), fit_rows, assume_unique=True)
    else:
        fit_rows, rest = np.arange(n), np.zeros(0, np.int64)
    info.update(method="umap" if not len(rest) else "umap fit on a sample + transform", backend=backend,
                fit_sample=int(len(fit_rows)))
    reducer = _make_umap(backend, len(fit_rows), params)
    coords = np.empty((n, 2), np.float32)
    t0 = time.perf_counter()
    say(f"UMAP ({backend}, cosine): fitting {len(fit_rows):,} of {n:,} points")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*Spectral initialisation failed.*")
        warnings.filterwarnings("ignore", message=".*gradient function is not yet implemented.*")
        fitted = reducer.fit_transform(np.ascontiguousarray(matrix[fit_rows], dtype=np.float32))
    coords[fit_rows] = np.asarray(fitted, dtype=np.float32)
    info["fit_seconds"] = round(time.perf_counter() - t0, 2)
    say(f"UMAP fit done in {info['fit_seconds']:.1f} s")
    if len(rest):
        t1 = time.perf_counter()
        for start in range(0, len(rest), TRANSFORM_CHUNK):
            rows = rest[start:start + TRANSFORM_CHUNK]
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning)
                coords[rows] = np.asarray(reducer.transform(np.ascontiguousarray(matrix[rows], dtype=np.float32)),
                                          dtype=np.float32)
            say(f"UMAP transform: {min(start + TRANSFORM_CHUNK, len(rest)):,}/{len(rest):,} remaining points placed")
        info["transform_seconds"] = round(time.perf_counter() - t1, 2)
    return coords, info


def umap_table(ids: np.ndarray, coords: np.ndarray) -> pa.Table:
    """The ``umap2d.parquet`` table."""
    return pa.Table.from_arrays(
        [pa.array(np.asarray(ids, np.int64)), pa.array(coords[:, 0].astype(np.float32)),
         pa.array(coords[:, 1].astype(np.float32))],
        schema=UMAP_SCHEMA,
    )


def write_umap(url: str, table: pa.Table) -> None:
    """Atomically write the projection table."""
    write_table(url, table)


def project_run(cfg: JobConfig, layout: RunLayout, params: UmapParams | None = None) -> Projection:
    """Project the embeddings of ``layout`` to 2-D and write ``layout.umap``; returns the manifest entry.

    Called by ``job run`` as its projection step and by ``job project``. Needs the embeddings only
    (not the manifest), so the runner can call it before it writes manifest.json.
    """
    p = params or UmapParams.from_config(cfg.project)
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        matrix, ids = read_vectors(layout.embeddings)
        log.info("projecting %d embeddings of dim %d from %s", matrix.shape[0],
                 matrix.shape[1] if matrix.ndim == 2 else 0, layout.embeddings)
        coords, info = compute_umap(matrix, p)
        write_umap(layout.umap, umap_table(ids, coords))
    out = Projection(**info, path=layout.rel(layout.umap), seconds=round(time.perf_counter() - t0, 2),
                     peak_memory_mb=round(mem.peak_mb, 1))
    log.info("wrote %s (%d points) in %.1f s, peak memory %.0f MiB", layout.umap, out.n, out.seconds,
             out.peak_memory_mb)
    return out
