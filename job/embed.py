"""Runner of one output: builds the stages from the config (:func:`build`), runs the embed loop over what is not done
yet (:class:`Embedding`), and returns the output's manifest (the caller writes it, last)."""
from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import JobConfig
from .decode import DecodePool, DecodeStage
from .embed_loop import EmbedLoop, LoopStats, batched, unique_paths
from .errors import DataError, UsageError
from .progress import RunProgress
from .runfolder import Counts, Manifest, ModelInfo, Outputs, RunLayout
from .sources import ImageRecord, Source, open_source
from .steps import text_queries_step
from .stopping import StopRequest
from .store import CLS_COLUMN, PartWriter, ResumeState, embedding_schema, prepare_run
from .tables import count_rows, read_vectors, write_npy

if TYPE_CHECKING:
    from .model import ImageEncoder, LoadedModel
    from .status import StatusWriter

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


@dataclass
class Embedding:
    """The pieces of one attempt at embedding an output, built and checked by :func:`build` before anything is
    written, and :meth:`run`, which embeds what earlier attempts did not and returns the manifest."""

    cfg: JobConfig
    layout: RunLayout
    source: Source
    lm: LoadedModel
    state: ResumeState
    writer: PartWriter
    encoder: ImageEncoder
    workers: int
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    t_start: float = field(default_factory=time.perf_counter)
    duplicates: int = 0
    decoder: str = "cpu"
    decoder_rates: dict[str, float] = field(default_factory=dict)

    def decode_stage(self, first: list[ImageRecord]) -> DecodeStage:
        """The CPU pool, or nvJPEG when chosen (``--decode auto`` measures both on the first batch)."""
        cfg, lm = self.cfg, self.lm
        if cfg.project.thumbnails and cfg.decode.decoder != "cpu" and lm.device.type == "cuda":
            log.info("thumbnails are made by the CPU decoder: decoding on the CPU")
            self.decoder = "cpu"
        elif cfg.decode.decoder == "cpu" or lm.device.type != "cuda":
            self.decoder = "cpu"
        else:
            from .decode_gpu import choose_decoder

            self.decoder, self.decoder_rates = choose_decoder(cfg.decode.decoder, first, lm.image_size,
                                                              cfg.decode.resize_mode, lm.device, self.workers)
        log.info("embedding %s with %s (%s, pool %s, %s, %s) on %s, %s decode%s, batch %d",
                 self.source.description, lm.name, lm.weights.describe(), lm.pool, cfg.decode.resize_mode,
                 str(lm.dtype).replace("torch.", ""), lm.device, self.decoder,
                 f" ({self.workers} workers)" if self.decoder == "cpu" else "", cfg.decode.batch_size)
        if self.decoder == "gpu":
            from .decode_gpu import GpuDecodeStage

            return GpuDecodeStage(lm.image_size, cfg.decode.resize_mode, lm.device)
        return DecodePool(self.workers, lm.image_size, cfg.decode.resize_mode, lm.interpolation,
                          cfg.project.thumbnails)

    def run(self, *, stop: StopRequest | None = None, status: StatusWriter | None = None) -> Manifest:
        """Embed what is not done yet, commit the last part, and return the manifest (not yet written).

        ``stop`` ends the loop cleanly after the batch in flight (then ``Interrupted`` is raised); ``status`` receives
        the progress."""
        def duplicate() -> None:
            self.duplicates += 1

        records = unique_paths(self.source.records(skip=self.state.done_paths), set(), duplicate)
        batches = batched(records, self.cfg.decode.batch_size)
        first = next(batches, [])
        stage = self.decode_stage(first)
        progress = RunProgress(total=self.source.total, done_before=self.state.rows + self.state.failures,
                               failed_before=self.state.failures, estimate=self.source.estimated_total,
                               status=status, enabled=self.cfg.progress)
        try:
            loop = EmbedLoop(itertools.chain([first] if first else [], batches), stage, self.encoder, self.writer,
                             progress, stop)
            stats = loop.run()
        finally:
            progress.close()
            batches.close()
            stage.close()
        if stop is not None:
            stop.check(f"after committing {self.writer.committed_rows} more rows")
        return self.manifest(stats, wall_s=time.perf_counter() - self.t_start)

    def manifest(self, stats: LoopStats, *, wall_s: float) -> Manifest:
        """The output's manifest after this attempt (counts over every attempt); writes ``--npy`` and the text
        queries, which come before it."""
        cfg, lm, layout, state = self.cfg, self.lm, self.layout, self.state
        embedded_total = count_rows(layout.embeddings)
        failed_total = count_rows(layout.failures)
        if embedded_total == 0:
            raise DataError(f"no image could be embedded from {self.source.description} "
                            f"({failed_total} failed; see {layout.failures})")
        if cfg.output.npy:
            write_npy(layout.npy, read_vectors(layout.embeddings)[0])
        text_queries_step(cfg, lm, layout, embedded_total)
        rate = stats.embedded / stats.loop_s if stats.loop_s > 0 else 0.0
        log.info("embedded %d images this attempt (%d failed, %d already done) in %.1f s: %.1f images/s",
                 stats.embedded, stats.failed, state.rows + state.failures, wall_s, rate)
        return Manifest(
            status="succeeded",
            started=self.started.isoformat(),
            finished=dt.datetime.now(dt.timezone.utc).isoformat(),
            host=platform.node(),
            run_dir=layout.run_dir,
            outputs=Outputs(embeddings=layout.embeddings_name, failures=layout.rel(layout.failures),
                            state=layout.rel(layout.state), npy=layout.rel(layout.npy) if cfg.output.npy else None,
                            thumbnails=layout.rel(layout.thumbnails) if cfg.project.thumbnails else None),
            config=cfg.to_dict(),
            model=ModelInfo(**lm.describe()),
            source={"description": self.source.description, **self.source.stats()},
            counts=Counts(seen=embedded_total + failed_total, embedded=embedded_total, failed=failed_total,
                          embedded_this_attempt=stats.embedded, failed_this_attempt=stats.failed,
                          resumed_from_earlier_attempts=state.rows + state.failures,
                          duplicate_paths_skipped=self.duplicates),
            failure_reasons=dict(stats.reasons),
            timings={"model_load_s": round(lm.load_seconds, 3), "model_compute_s": round(stats.model_s, 3),
                     "waiting_for_decode_s": round(stats.decode_wait_s, 3), "embed_loop_s": round(stats.loop_s, 3),
                     "wall_s": round(wall_s, 3)},
            images_per_s=round(rate, 2),
            decoder={"used": self.decoder, **({"measured_images_per_s": {k: round(v, 1) for k, v in
                                                                       self.decoder_rates.items()}}
                                              if self.decoder_rates else {})},
            versions=_versions(),
        )


def build(cfg: JobConfig) -> Embedding:
    """Every stage of one attempt, checked before anything is written: the source (inputs validated, tables
    loaded), the model, the run folder (resume state, option check), the writer and the encoder."""
    from .model import ImageEncoder, load_model

    layout = RunLayout.for_run(cfg.output.out, cfg.source.shard)
    if not cfg.source.sources:
        raise UsageError("no input: give --image-dir DIR or --source URI (a folder, s3:// prefix or .tgz archives)")
    source = open_source(cfg.source)
    lm = load_model(cfg.model)
    if cfg.decode.decoder == "gpu" and lm.device.type != "cuda":
        raise UsageError("--decode gpu needs a CUDA device; valid choices here: auto, cpu")
    identity = {**cfg.embedding_identity(), "weights_sha256": lm.weights_sha256, "image_size": lm.image_size}
    state = prepare_run(layout, identity, overwrite=cfg.output.overwrite)
    with_cls = lm.text_column == CLS_COLUMN
    writer = PartWriter(layout, embedding_schema(lm.embed_dim, source.meta_fields, text_vectors=with_cls),
                        part_size=cfg.output.part_size, part_seconds=cfg.output.part_seconds,
                        start_part=state.next_part, thumbnails=cfg.project.thumbnails, identity=identity)
    encoder = ImageEncoder(lm, compile_model=cfg.model.compile, with_cls=with_cls)
    workers = default_workers(lm.device.type) if cfg.decode.workers is None else cfg.decode.workers
    return Embedding(cfg, layout, source, lm, state, writer, encoder, workers)


def embed(cfg: JobConfig) -> Manifest:
    """Embed every image of the configured source into ``cfg.output``; returns the manifest (the caller writes it).

    SIGTERM/SIGINT stop it cleanly (``job.stopping``): committed parts stay, ``Interrupted`` is raised."""
    with StopRequest() as stop:
        return build(cfg).run(stop=stop)
