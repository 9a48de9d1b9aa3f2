"""Runner: wires source → decode stage → model → shard writer for one output, and returns its manifest."""
from __future__ import annotations

import collections
import datetime as dt
import itertools
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Iterable, Iterator

from .config import JobConfig
from .decode import DecodePool, DecodeResult
from .errors import DataError, UsageError
from .prompts import prompts
from .runfolder import Counts, Manifest, ModelInfo, Outputs, RunLayout
from .sources import ImageRecord, Source, open_source
from .status import StatusWriter
from .stopping import StopRequest
from .store import CLS_COLUMN, ResumeState, ShardWriter, embedding_schema, prepare_run
from .tables import count_rows, read_vectors, write_npy

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
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.reasons[reason.split(":", 1)[0]] += 1


def _chunks(records: Iterable[ImageRecord], n: int) -> Generator[list[ImageRecord], None, None]:
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


class EmbedSession:
    """One attempt at embedding an output: the pieces (checked when built), and the loop that drives them.

    ``stop`` (a StopRequest) makes the loop end cleanly after the batch in flight; ``status`` (a StatusWriter)
    receives the progress. Both are optional.
    """

    def __init__(self, cfg: JobConfig) -> None:
        from .model import ImageEncoder, load_model

        self.cfg = cfg
        self.t_start = time.perf_counter()
        self.started = dt.datetime.now(dt.timezone.utc)
        self.layout = RunLayout.for_run(cfg.output.out, cfg.source.shard)
        if not cfg.source.sources:
            raise UsageError("no input: give --image-dir DIR or --source URI (a folder, s3:// prefix or .tgz archives)")
        self.source: Source = open_source(cfg.source)  # validates inputs before anything is written
        self.lm = load_model(cfg.model)
        if cfg.decode.decoder == "gpu" and self.lm.device.type != "cuda":
            raise UsageError("--decode gpu needs a CUDA device; valid choices here: auto, cpu")
        self.identity = {**cfg.embedding_identity(), "weights_sha256": self.lm.weights_sha256,
                         "image_size": self.lm.image_size}
        self.state: ResumeState = prepare_run(self.layout, self.identity, overwrite=cfg.output.overwrite)
        self.writer = ShardWriter(self.layout, embedding_schema(self.lm.embed_dim, self.source.meta_fields,
                                                                  text_vectors=self.lm.text_column == CLS_COLUMN),
                                  shard_size=cfg.output.shard_size, shard_seconds=cfg.output.shard_seconds,
                                  start_shard=self.state.next_shard, thumbnails=cfg.project.thumbnails,
                                  identity=self.identity)
        self.encoder = ImageEncoder(self.lm, compile_model=cfg.model.compile,
                                    with_cls=self.lm.text_column == CLS_COLUMN)
        self.workers = default_workers(self.lm.device.type) if cfg.decode.workers is None else cfg.decode.workers
        self.stats = EmbedStats()
        self._seen: set[str] = set()
        self.stop: StopRequest | None = None
        self.status: StatusWriter | None = None
        self._total: int | None = None
        self._bar: Any = None

    def _fresh(self, records: Iterable[ImageRecord]) -> Iterator[ImageRecord]:
        for r in records:
            if r.path in self._seen:
                self.stats.duplicates += 1
                continue
            self._seen.add(r.path)
            yield r

    def _stage(self, first: list[ImageRecord]) -> Any:
        """The decode stage: the CPU pool, or nvJPEG when chosen (``--decode auto`` measures both)."""
        cfg, lm = self.cfg, self.lm
        rates: dict[str, float] = {}
        if cfg.project.thumbnails and cfg.decode.decoder != "cpu" and lm.device.type == "cuda":
            log.info("thumbnails are made by the CPU decoder: decoding on the CPU")
            decoder = "cpu"
        elif cfg.decode.decoder == "cpu" or lm.device.type != "cuda":
            decoder = "cpu"
        else:
            from .decode_gpu import choose_decoder

            decoder, rates = choose_decoder(cfg.decode.decoder, first, lm.image_size, cfg.decode.resize_mode,
                                            lm.device, self.workers)
        self.stats.decoder, self.stats.decoder_rates = decoder, rates
        log.info("embedding %s with %s (%s, pool %s, %s, %s) on %s, %s decode%s, batch %d",
                 self.source.description, lm.name, lm.weights.describe(), lm.pool, cfg.decode.resize_mode,
                 str(lm.dtype).replace("torch.", ""), lm.device, decoder,
                 f" ({self.workers} workers)" if decoder == "cpu" else "", cfg.decode.batch_size)
        if decoder == "gpu":
            from .decode_gpu import GpuDecodeStage

            return GpuDecodeStage(lm.image_size, cfg.decode.resize_mode, lm.device)
        return DecodePool(self.workers, lm.image_size, cfg.decode.resize_mode, lm.interpolation,
                          cfg.project.thumbnails)

    def _record_failures(self, records: list[ImageRecord], result: DecodeResult) -> None:
        for r in records:
            if r.error is not None:
                self.writer.add_failure(r.path, r.error)
                self.stats.fail(r.error)
        for pos, reason in result.failed:
            self.writer.add_failure(records[pos].path, reason)
            self.stats.fail(reason)

    def _collect(self, records: list[ImageRecord], result: DecodeResult, fetch: Any, bar: Any) -> None:
        t0 = time.perf_counter()
        vectors = fetch()  # (n, dim), or (n, 2, dim): image vector and CLS vector of one forward pass
        cls = vectors[:, 1] if vectors.ndim == 3 else None
        vectors = vectors[:, 0] if vectors.ndim == 3 else vectors
        self.stats.model_s += time.perf_counter() - t0
        for j, pos in enumerate(result.ok_positions):
            rec = records[pos]
            w, h = result.sizes[j]
            self.writer.add(rec.path, vectors[j], w, h, rec.meta, thumbnail=result.thumbs[j],
                            text_vector=None if cls is None else cls[j])
        self.stats.embedded += len(result.ok_positions)
        bar.update(len(result.ok_positions))
        self._report()

    def _report(self, *, force: bool = False) -> None:
        estimate = None if self._total is not None else self.source.estimated_total()
        if estimate is not None and self._bar is not None and self._bar.total != estimate:
            self._bar.total = estimate  # a stream's estimated size: tqdm shows an ETA
        if self.status is None:
            return
        s, st = self.stats, self.state
        elapsed = time.perf_counter() - self._t_loop
        self.status.progress(st.rows + st.failures + s.embedded + s.failed, self._total, st.failures + s.failed,
                             s.embedded / elapsed if elapsed > 0 else 0.0, estimated_total=estimate, force=force)

    def run(self) -> Manifest:
        """Embed what is not done yet, commit the last shard, and return the manifest (not yet written)."""
        from tqdm.auto import tqdm

        t_loop = self._t_loop = time.perf_counter()
        chunks = _chunks(self._fresh(self.source.records(skip=self.state.done_paths)), self.cfg.decode.batch_size)
        first = next(chunks, [])
        stage = self._stage(first)
        total = self._total = self.source.total
        bar = self._bar = tqdm(total=total, initial=self.state.rows + self.state.failures, unit="img", desc="embed",
                               disable=not self.cfg.progress, dynamic_ncols=True)
        in_flight: tuple[list[ImageRecord], DecodeResult, Any] | None = None
        batches = stage.map(itertools.chain([first] if first else [], chunks))
        try:
            t_wait = time.perf_counter()
            for records, result in batches:
                self.stats.decode_wait_s += time.perf_counter() - t_wait
                self._record_failures(records, result)
                bar.update(len(records) - len(result.ok_positions))
                if result.ok_positions:
                    t0 = time.perf_counter()
                    fetch = self.encoder.submit(result.pixels)
                    self.stats.model_s += time.perf_counter() - t0
                    if in_flight is not None:
                        self._collect(*in_flight, bar)
                    in_flight = (records, result, fetch)
                if self.stop is not None and self.stop.requested:
                    break  # stop reading; what is embedded is committed below
                t_wait = time.perf_counter()
            if in_flight is not None:
                self._collect(*in_flight, bar)
            self.writer.close()
            self._report(force=True)
        finally:
            bar.close()
            batches.close()
            chunks.close()
            stage.close()
        if self.stop is not None:
            self.stop.check(f"after committing {self.writer.committed_rows} more rows")
        self.stats.loop_s = time.perf_counter() - t_loop
        self.stats.wall_s = time.perf_counter() - self.t_start
        return self._manifest()

    def _manifest(self) -> Manifest:
        cfg, lm, layout, stats, state = self.cfg, self.lm, self.layout, self.stats, self.state
        embedded_total = count_rows(layout.embeddings)
        failed_total = count_rows(layout.failures)
        if embedded_total == 0:
            raise DataError(f"no image could be embedded from {self.source.description} "
                            f"({failed_total} failed; see {layout.failures})")
        if cfg.output.npy:
            write_npy(layout.npy, read_vectors(layout.embeddings)[0])
        self._write_text_queries(embedded_total)
        rate = stats.embedded / stats.loop_s if stats.loop_s > 0 else 0.0
        log.info("embedded %d images this attempt (%d failed, %d already done) in %.1f s: %.1f images/s",
                 stats.embedded, stats.failed, state.rows + state.failures, stats.wall_s, rate)
        name = _name_in(layout)
        return Manifest(
            status="succeeded",
            started=self.started.isoformat(),
            finished=dt.datetime.now(dt.timezone.utc).isoformat(),
            host=platform.node(),
            run_dir=layout.run_dir,
            outputs=Outputs(embeddings=layout.embeddings_name, failures=name(layout.failures),
                            state=name(layout.state), npy=name(layout.npy) if cfg.output.npy else None,
                            thumbnails=name(layout.thumbnails) if cfg.project.thumbnails else None),
            config=cfg.to_dict(),
            model=ModelInfo(**lm.describe()),
            source={"description": self.source.description, **self.source.stats()},
            counts=Counts(seen=embedded_total + failed_total, embedded=embedded_total, failed=failed_total,
                          embedded_this_attempt=stats.embedded, failed_this_attempt=stats.failed,
                          resumed_from_earlier_attempts=state.rows + state.failures,
                          duplicate_paths_skipped=stats.duplicates),
            failure_reasons=dict(stats.reasons),
            timings={"model_load_s": round(lm.load_seconds, 3), "model_compute_s": round(stats.model_s, 3),
                     "waiting_for_decode_s": round(stats.decode_wait_s, 3), "embed_loop_s": round(stats.loop_s, 3),
                     "wall_s": round(stats.wall_s, 3)},
            images_per_s=round(rate, 2),
            decoder={"used": stats.decoder, **({"measured_images_per_s": {k: round(v, 1) for k, v in
                                                                          stats.decoder_rates.items()}}
                                               if stats.decoder_rates else {})},
            versions=_versions(),
        )

    def _write_text_queries(self, rows: int) -> None:
        """The prompts' text vectors beside the index (``RunLayout.text_queries``), the queries that tune the text
        index; only when it will be approximate (a shard: the merged run's size), an exact one needs no tuning."""
        from .index.plan import plan_index
        from .model import encode_text

        cfg, lm = self.cfg, self.lm
        if lm.text_column != CLS_COLUMN:
            return
        try:
            n = rows * (cfg.source.shard[1] if cfg.source.shard else 1)
            if plan_index(n, lm.embed_dim, cfg.index).kind == "flat":
                return
        except UsageError:  # no index fits the memory budget: `job index` will say so; the queries cost little
            pass
        import torch

        t0 = time.perf_counter()
        with torch.inference_mode():
            queries = encode_text(lm, prompts())
        write_npy(self.layout.text_queries, queries)
        log.info("encoded %d text prompts to tune the text index in %.1f s -> %s", len(queries),
                 time.perf_counter() - t0, self.layout.text_queries)


def _name_in(layout: RunLayout) -> Any:
    prefix = layout.run_dir.rstrip("/") + "/"
    return lambda url: url[len(prefix):] if url.startswith(prefix) else url


def embed(cfg: JobConfig) -> Manifest:
    """Embed every image of the configured source into ``cfg.output``; returns the manifest (the caller writes it).

    SIGTERM/SIGINT stop it cleanly (``job.stopping``): committed shards stay, ``Interrupted`` is raised."""
    with StopRequest() as stop:
        session = EmbedSession(cfg)
        session.stop = stop
        return session.run()
