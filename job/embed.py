"""Runner: wires source → decode workers → model → shard writer, and the ``embed`` / ``run`` commands."""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import datetime as dt
import itertools
import logging
import multiprocessing as mp
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq

from . import fsutil
from .errors import UsageError
from .config import JobConfig
from .decode import DecodeResult, DecodeTask, decode_batch, read_bytes
from .sources import ImageRecord, Source, open_source
from .store import RunLayout, ShardWriter, embedding_matrix, embedding_schema, prepare_run, write_npy

log = logging.getLogger(__name__)


def default_workers(device_type: str = "cuda") -> int:
    """Decode processes: every usable core when a GPU runs the model; none (decode inline) on the CPU.

    On the CPU the model costs 10-30x more per image than the reduced-scale decode, and a decode
    process competing with torch's threads for the same cores costs more than it saves (measured:
    docs/benchmarks.md), so decoding runs between batches in the main process.
    """
    if device_type != "cuda":
        return 0
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class EmbedStats:
    """Counters of one embed session (this attempt only; the manifest adds earlier attempts)."""

    embedded: int = 0
    failed: int = 0
    duplicates: int = 0
    decode_wait_s: float = 0.0
    model_s: float = 0.0
    loop_s: float = 0.0
    wall_s: float = 0.0
    decoder: str = "cpu"
    decoder_rates: dict[str, float] = field(default_factory=dict)
    reasons: collections.Counter = field(default_factory=collections.Counter)


class DecodePool:
    """Decodes chunks of records in worker processes (or inline with 0 workers), in order, with bounded look-ahead."""

    def __init__(self, workers: int, size: int, resize_mode: str, interpolation: str, thumbnails: bool) -> None:
        self.workers = workers
        self.size, self.resize_mode, self.interpolation, self.thumbnails = size, resize_mode, interpolation, thumbnails
        self._executor: cf.ProcessPoolExecutor | None = None
        if workers > 0:
            # forkserver: sources may run reader threads, which must not be forked mid-flight.
            ctx = mp.get_context("forkserver")
            self._executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)

    def _task(self, records: list[ImageRecord]) -> DecodeTask:
        items = [(i, r.data, r.url) for i, r in enumerate(records) if r.error is None]
        return DecodeTask(items, self.size, self.resize_mode, self.interpolation, self.thumbnails)

    def map(self, chunks: Iterable[list[ImageRecord]]) -> Iterator[tuple[list[ImageRecord], DecodeResult]]:
        """Yield (records, decoded) per chunk, keeping at most 2×workers+1 chunks in flight."""
        if self._executor is None:
            for recs in chunks:
                yield recs, decode_batch(self._task(recs))
            return
        pending: collections.deque[tuple[list[ImageRecord], cf.Future]] = collections.deque()
        depth = 2 * self.workers + 1
        it = iter(chunks)
        for recs in itertools.islice(it, depth):
            pending.append((recs, self._executor.submit(decode_batch, self._task(recs))))
        while pending:
            recs, fut = pending.popleft()
            result = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, self._executor.submit(decode_batch, self._task(nxt))))
            yield recs, result

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _read_bytes(r: ImageRecord) -> bytes | None:
    """The record's bytes, or None when the file cannot be read (the decoder then reports it)."""
    try:
        return read_bytes(r.data, r.url)
    except OSError:
        return None


class GpuDecodeStage:
    """Reads bytes ahead in threads and decodes each chunk on the GPU (nvJPEG)."""

    def __init__(self, size: int, resize_mode: str, device: Any, threads: int = 8) -> None:
        from .decode_gpu import GpuDecoder

        self.decoder = GpuDecoder(size, resize_mode, device)
        self._io = cf.ThreadPoolExecutor(max_workers=threads)

    def map(self, chunks: Iterable[list[ImageRecord]]) -> Iterator[tuple[list[ImageRecord], DecodeResult, Any]]:
        pending: collections.deque = collections.deque()
        it = iter(chunks)
        for recs in itertools.islice(it, 4):
            pending.append((recs, [self._io.submit(_read_bytes, r) for r in recs]))
        while pending:
            recs, futs = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, [self._io.submit(_read_bytes, r) for r in nxt]))
            blobs = [f.result() if r.error is None else None for r, f in zip(recs, futs)]
            result, pixels = self.decoder(blobs)
            result.failed = [(p, why) for p, why in result.failed if recs[p].error is None]
            yield recs, result, pixels

    def close(self) -> None:
        self._io.shutdown(wait=True, cancel_futures=True)


def choose_decoder(cfg: JobConfig, lm: Any, first: list[ImageRecord], workers: int) -> tuple[str, dict[str, float]]:
    """``--decode auto``: on CUDA, measure both decoders on the first chunk and take the faster."""
    if cfg.decode.decoder != "auto":
        return cfg.decode.decoder, {}
    if lm.device.type != "cuda":
        return "cpu", {}
    from .decode_gpu import gpu_decode_available, measure_decoders

    if not gpu_decode_available():
        return "cpu", {}
    samples = [b for b in (_read_bytes(r) for r in first if r.error is None) if b]
    if not samples:
        return "cpu", {}
    rates = measure_decoders(samples, lm.image_size, cfg.decode.resize_mode, lm.device, workers)
    choice = "gpu" if rates["gpu"] > rates["cpu"] else "cpu"
    log.info("decode auto: cpu %.0f images/s (%d workers), gpu %.0f images/s -> %s",
             rates["cpu"], workers, rates["gpu"], choice)
    return choice, rates


def _chunks(records: Iterable[ImageRecord], n: int) -> Iterator[list[ImageRecord]]:
    it = iter(records)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("vit-embedding-drivedata", "torch", "torchvision", "open-clip-torch", "numpy", "pillow", "pyarrow",
                "fsspec", "s3fs", "faiss-cpu", "faiss-gpu-cu12", "umap-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _count_rows(url: str) -> int:
    fs, path = fsutil.url_to_fs(url)
    if not fs.exists(path):
        return 0
    return sum(pq.ParquetFile(p, filesystem=fs).metadata.num_rows for p in fs.ls(path, detail=False)
               if p.endswith(".parquet"))


def embed(cfg: JobConfig) -> dict[str, Any]:
    """Embed every image of the configured source into ``cfg.output``; returns the manifest (written last)."""
    from tqdm.auto import tqdm

    from .model import ImageEncoder, load_model

    t_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    layout = RunLayout(cfg.output.run_dir, cfg.output.embeddings_name)
    if not cfg.source.sources:
        raise UsageError("no input: give --image-dir DIR or --source URI (a folder, s3:// prefix or .tgz archives)")
    source: Source = open_source(cfg.source)  # validates inputs before anything is written
    lm = load_model(cfg.model)
    if cfg.decode.decoder == "gpu" and lm.device.type != "cuda":
        raise UsageError("--decode gpu needs a CUDA device; valid choices here: auto, cpu")
    identity = {**cfg.embedding_identity(), "weights_sha256": lm.weights_sha256, "image_size": lm.image_size}
    state = prepare_run(layout, identity, overwrite=cfg.output.overwrite)
    schema = embedding_schema(lm.embed_dim, source.meta_fields)
    writer = ShardWriter(layout, schema, shard_size=cfg.output.shard_size, shard_seconds=cfg.output.shard_seconds,
                         start_shard=state.next_shard, thumbnails=cfg.project.thumbnails,
                         identity=identity)
    encoder = ImageEncoder(lm, compile_model=cfg.model.compile)
    workers = default_workers(lm.device.type) if cfg.decode.workers is None else cfg.decode.workers
    stats = EmbedStats()
    seen_now: set[str] = set()

    def fresh(records: Iterable[ImageRecord]) -> Iterator[ImageRecord]:
        for r in records:
            if r.path in seen_now:
                stats.duplicates += 1
                continue
            seen_now.add(r.path)
            yield r

    t_loop = time.perf_counter()
    chunks = _chunks(fresh(source.records(skip=state.done_paths)), cfg.decode.batch_size)
    first = next(chunks, [])
    if cfg.project.thumbnails and cfg.decode.decoder != "cpu" and lm.device.type == "cuda":
        log.info("thumbnails are made by the CPU decoder: decoding on the CPU")
        decoder, rates = "cpu", {}
    else:
        decoder, rates = choose_decoder(cfg, lm, first, workers)
    stats.decoder, stats.decoder_rates = decoder, rates
    log.info("embedding %s with %s (%s, pool %s, %s, %s) on %s, %s decode%s, batch %d",
             source.description, lm.name, lm.weights.describe(), lm.pool, cfg.decode.resize_mode,
             str(lm.dtype).replace("torch.", ""), lm.device, decoder,
             f" ({workers} workers)" if decoder == "cpu" else "", cfg.decode.batch_size)
    total = getattr(source, "total", None)
    bar = tqdm(total=total() if callable(total) else total, initial=state.rows + state.failures, unit="img",
               desc="embed", disable=not cfg.progress, dynamic_ncols=True)
    stage: Any
    if decoder == "gpu":
        stage = GpuDecodeStage(lm.image_size, cfg.decode.resize_mode, lm.device)
        decoded = stage.map(itertools.chain([first] if first else [], chunks))
    else:
        stage = DecodePool(workers, lm.image_size, cfg.decode.resize_mode, lm.interpolation, cfg.project.thumbnails)
        decoded = ((recs, res, res.pixels) for recs, res in stage.map(itertools.chain([first] if first else [], chunks)))
    in_flight: tuple[list[ImageRecord], DecodeResult, Any] | None = None

    def collect(records: list[ImageRecord], result: DecodeResult, fetch: Any) -> None:
        t0 = time.perf_counter()
        vectors = fetch()
        stats.model_s += time.perf_counter() - t0
        for j, pos in enumerate(result.ok_positions):
            rec = records[pos]
            w, h = result.sizes[j]
            writer.add(rec.path, vectors[j], w, h, rec.meta, thumbnail=result.thumbs[j])
        stats.embedded += len(result.ok_positions)
        bar.update(len(result.ok_positions))

    try:
        t_wait = time.perf_counter()
        for records, result, pixels in decoded:
            stats.decode_wait_s += time.perf_counter() - t_wait
            for r in records:
                if r.error is not None:
                    writer.add_failure(r.path, r.error)
                    stats.failed += 1
                    stats.reasons[r.error.split(":", 1)[0]] += 1
            for pos, reason in result.failed:
                writer.add_failure(records[pos].path, reason)
                stats.failed += 1
                stats.reasons[reason.split(":", 1)[0]] += 1
            bar.update(len(records) - len(result.ok_positions))
            if result.ok_positions:
                t0 = time.perf_counter()
                fetch = encoder.submit(pixels)
                stats.model_s += time.perf_counter() - t0
                if in_flight is not None:
                    collect(*in_flight)
                in_flight = (records, result, fetch)
            t_wait = time.perf_counter()
        if in_flight is not None:
            collect(*in_flight)
        writer.close()
    finally:
        bar.close()
        stage.close()
    stats.loop_s = time.perf_counter() - t_loop
    stats.wall_s = time.perf_counter() - t_start
    return _finish(cfg, layout, lm, source, stats, state, started)


def _finish(cfg: JobConfig, layout: RunLayout, lm: Any, source: Source, stats: EmbedStats, state: Any,
            started: dt.datetime) -> dict[str, Any]:
    embedded_total = _count_rows(layout.embeddings)
    failed_total = _count_rows(layout.failures)
    if embedded_total == 0:
        raise UsageError(f"no image could be embedded from {source.description} "
                          f"({failed_total} failed; see {layout.failures})")
    if cfg.output.npy:
        from .store import read_embeddings

        write_npy(layout.npy, embedding_matrix(read_embeddings(layout.embeddings, ["embedding"])))
    rate = stats.embedded / stats.loop_s if stats.loop_s > 0 else 0.0
    manifest: dict[str, Any] = {
        "status": "succeeded",
        "started": started.isoformat(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
        "host": platform.node(),
        "run_dir": cfg.output.run_dir,
        "outputs": {
            "embeddings": cfg.output.embeddings_name,
            "failures": "failures.parquet",
            **({"npy": layout.npy.rsplit("/", 1)[-1]} if cfg.output.npy else {}),
            **({"thumbnails": "thumbnails.parquet"} if cfg.project.thumbnails else {}),
        },
        "config": cfg.to_dict(),
        "model": lm.describe(),
        "source": {"description": source.description, **source.stats()},
        "counts": {
            "seen": embedded_total + failed_total,
            "embedded": embedded_total,
            "failed": failed_total,
            "embedded_this_attempt": stats.embedded,
            "failed_this_attempt": stats.failed,
            "resumed_from_earlier_attempts": state.rows + state.failures,
            "duplicate_paths_skipped": stats.duplicates,
        },
        "failure_reasons_this_attempt": dict(stats.reasons),
        "timings": {
            "model_load_s": round(lm.load_seconds, 3),
            "model_compute_s": round(stats.model_s, 3),
            "waiting_for_decode_s": round(stats.decode_wait_s, 3),
            "embed_loop_s": round(stats.loop_s, 3),
            "wall_s": round(stats.wall_s, 3),
        },
        "images_per_s": round(rate, 2),
        "decoder": {"used": stats.decoder, **({"measured_images_per_s": {k: round(v, 1) for k, v in
                                                                          stats.decoder_rates.items()}}
                                               if stats.decoder_rates else {})},
        "versions": _versions(),
    }
    log.info("embedded %d images this attempt (%d failed, %d already done) in %.1f s: %.1f images/s",
             stats.embedded, stats.failed, state.rows + state.failures, stats.wall_s, rate)
    return manifest


def write_manifest(layout: RunLayout, manifest: dict[str, Any]) -> None:
    """Commit the manifest; it is always the last file of a run."""
    fsutil.write_json(layout.manifest, manifest)


def _summary(manifest: dict[str, Any], layout: RunLayout) -> str:
    c = manifest["counts"]
    return (f"done: {c['embedded']} embedded, {c['failed']} failed, {manifest['images_per_s']} images/s "
            f"-> {layout.embeddings}")


def _embed_command(cfg: JobConfig, args: argparse.Namespace) -> int:
    layout = RunLayout(cfg.output.run_dir, cfg.output.embeddings_name)
    manifest = embed(cfg)
    write_manifest(layout, manifest)
    log.info(_summary(manifest, layout))
    return 0


def run_pipeline(cfg: JobConfig) -> dict[str, Any]:
    """``job run``: embed, then index and project when enabled, publish when asked; manifest last."""
    layout = RunLayout(cfg.output.run_dir, cfg.output.embeddings_name)
    manifest = embed(cfg)
    if cfg.index.enabled:
        from .index import build_run_index

        t0 = time.perf_counter()
        manifest["index"] = build_run_index(cfg, layout)
        manifest["timings"]["index_s"] = round(time.perf_counter() - t0, 3)
    if cfg.project.enabled:
        from .project import project_run

        t0 = time.perf_counter()
        manifest["projection"] = project_run(cfg, layout)
        manifest["timings"]["projection_s"] = round(time.perf_counter() - t0, 3)
    write_manifest(layout, manifest)
    if cfg.output.publish:
        from .publish import publish_run

        manifest["published"] = publish_run(cfg.output.run_dir, cfg.output.publish)
    log.info(_summary(manifest, layout))
    return manifest


def _run_command(cfg: JobConfig, args: argparse.Namespace) -> int:
    run_pipeline(cfg)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``embed`` and ``run`` subcommands."""
    from .cli import (add_common_options, add_decode_options, add_index_options, add_model_options,
                      add_output_options, add_source_options)

    p = sub.add_parser("embed", help="embed images into a parquet dataset",
                       description="Embed every image of a source with an OpenCLIP model. Resumes a killed run.")
    add_source_options(p, default_source=None)
    add_model_options(p)
    add_decode_options(p)
    add_output_options(p, out_help="output: a run folder, or the embeddings path ending in .parquet "
                                   "(failures.parquet and manifest.json go beside it)", default_out=None)
    p.add_argument("--thumbnails", action="store_true", help="also store a 128-px JPEG of each image")
    add_common_options(p)
    p.set_defaults(handler=_embed_command, _default_source=False)

    r = sub.add_parser("run", help="the whole pipeline: embed, index, project, publish",
                       description="Embed, index (Faiss) and project (UMAP) a source into OUTDIR, then publish it. "
                                   "With no --source it embeds nuScenes v1.0-mini from the public bucket.")
    add_source_options(r, default_source="s3://motional-nuscenes/public/v1.0/v1.0-mini.tgz")
    add_model_options(r)
    add_decode_options(r)
    add_output_options(r, out_help="run folder, local or s3:// (default runs/latest)", default_out="runs/latest")
    add_index_options(r, in_run=True)
    r.add_argument("--no-index", action="store_true", help="skip the Faiss index")
    r.add_argument("--no-project", action="store_true", help="skip the UMAP projection")
    r.add_argument("--fit-sample", type=int, default=None, help="UMAP fits on at most this many points (default 100000)")
    r.add_argument("--thumbnails", action="store_true", help="also store a 128-px JPEG of each image (for the notebook)")
    r.add_argument("--publish", default=None, metavar="URI", help="copy the finished run here (e.g. s3://bucket/runs/ID/)")
    add_common_options(r)
    r.set_defaults(handler=_run_command, _default_source=True)
