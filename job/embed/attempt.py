"""Runner of one output: builds the stages from the config (:func:`build`), runs the embed loop over what is not done
yet (:class:`Embedding`), and returns the output's manifest (the caller writes it, last)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .. import fsutil
from ..config import JobConfig
from ..decode import DecodePool, DecodeStage
from ..errors import DataError, UsageError
from ..runfolder import (
    CLS_COLUMN,
    Counts,
    Lease,
    Manifest,
    ModelInfo,
    Outputs,
    RunLayout,
    embedding_schema,
    read_vectors,
    write_manifest,
    write_npy,
)
from ..sources import ImageRecord, Source, open_source
from ..stopping import StopRequest
from .fallback import FallbackDecodeStage, FallbackEncoder
from .loop import EmbedLoop, LoopStats, batched, unique_paths
from .parts import PartWriter
from .progress import RunProgress
from .resume import Ledger, ResumeState, check_complete, prepare_run
from .text_queries import encode_text_queries

if TYPE_CHECKING:
    from ..model.load import LoadedModel
    from ..status import StatusWriter

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
                "fsspec", "s3fs", "faiss-gpu", "faiss-cpu", "umap-learn"):
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
    encoder: FallbackEncoder
    workers: int
    lease: Lease
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    t_start: float = field(default_factory=time.perf_counter)
    duplicates: int = 0
    listed: set[str] = field(default_factory=set)  # paths the source gave this attempt (each once)
    decoder: str = "cpu"
    decoder_rates: dict[str, float] = field(default_factory=dict)
    _stage: FallbackDecodeStage | None = None

    def close(self) -> None:
        """Release the output's lease (the caller does, once the manifest is written or the attempt ends)."""
        self.lease.release()

    def __enter__(self) -> Embedding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify(self) -> Ledger:
        """Completeness before the manifest (``resume.check_complete``): every image listed this attempt or committed
        by an earlier one is embedded or failed exactly once; the lease is still ours."""
        self.lease.check()
        return check_complete(self.layout, self.state.done_paths | self.listed, self.lease.owner)

    def decode_stage(self, first: list[ImageRecord]) -> DecodeStage:
        """The CPU pool, or nvJPEG (with the CPU pool behind it) when chosen (``--decode auto`` measures both on the
        first batch)."""
        cfg, lm = self.cfg, self.lm
        self.decoder, self.decoder_rates = pick_decoder(cfg, lm, first, self.workers)
        log.info("embedding %s with %s (%s, pool %s, %s, %s) on %s, %s decode%s, batch %d",
                 self.source.description, lm.name, lm.weights.describe(), lm.pool, cfg.decode.resize_mode,
                 str(lm.dtype).replace("torch.", ""), lm.device, self.decoder,
                 f" ({self.workers} workers)" if self.decoder == "cpu" else "", cfg.decode.batch_size)

        def cpu() -> DecodeStage:
            return DecodePool(self.workers, lm.image_size, cfg.decode.resize_mode, lm.interpolation,
                              cfg.project.thumbnails)

        if self.decoder != "gpu":
            return cpu()
        from ..decode.gpu import GpuDecodeStage

        self._stage = FallbackDecodeStage(lambda: GpuDecodeStage(lm.image_size, cfg.decode.resize_mode, lm.device),
                                          cpu, fast_name="gpu", safe_name="cpu")
        return self._stage

    def run(self, *, stop: StopRequest | None = None, status: StatusWriter | None = None) -> Manifest:
        """Embed what is not done yet, commit the last part, and return the manifest (not yet written).

        ``stop`` ends the loop cleanly after the batch in flight (then ``Interrupted`` is raised); ``status`` receives
        the progress."""
        def duplicate() -> None:
            self.duplicates += 1

        records = unique_paths(self.source.records(skip=self.state.done_paths), self.listed, duplicate)
        batches = batched(records, self.cfg.decode.batch_size)
        first = next(batches, [])
        stage = self.decode_stage(first)
        progress = RunProgress(total=self.source.total, done_before=self.state.rows + self.state.failures,
                               failed_before=self.state.failures, estimate=self.source.estimated_total,
                               status=status, enabled=self.cfg.progress)
        try:
            loop = EmbedLoop(itertools.chain([first] if first else [], batches), stage, self.encoder, self.writer,
                             progress, stop)
            with fsutil.faults("embedding into", self.layout.run_dir):
                stats = loop.run()
        finally:
            progress.close()
            batches.close()
            stage.close()
        if stop is not None:
            stop.check(f"after committing {self.writer.committed_rows} more rows")
        return self.manifest(stats, wall_s=time.perf_counter() - self.t_start)

    def manifest(self, stats: LoopStats, *, wall_s: float) -> Manifest:
        """The output's manifest after this attempt (counts over every attempt), once every image is accounted for
        (:meth:`verify`); writes ``--npy`` and the text queries, which come before it. Whoever writes the manifest
        calls :meth:`verify` again right before (``finish_run``, :func:`embed`)."""
        cfg, lm, layout, state = self.cfg, self.lm, self.layout, self.state
        if stats.embedded + stats.failed != len(self.listed):
            raise DataError(f"the embed loop accounted for {stats.embedded + stats.failed} of the {len(self.listed)} "
                            f"images it was given; no manifest was written. Run the same command to resume")
        with fsutil.faults("checking", layout.run_dir):
            ledger = self.verify()  # also leaves one copy of a path committed twice, before anything reads the vectors
        embedded_total, failed_total = ledger.rows, ledger.failures
        if embedded_total == 0:
            raise DataError(f"no image could be embedded from {self.source.description} "
                            f"({failed_total} failed; see {layout.failures})")
        if cfg.output.npy:
            write_npy(layout.npy, read_vectors(layout.embeddings)[0])
        encode_text_queries(cfg, lm, layout, embedded_total)
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
            model=ModelInfo(**{**lm.describe(), **self.encoder_ran()}),
            source={"description": self.source.description, **self.source.stats()},
            counts=Counts(seen=embedded_total + failed_total + self.duplicates, embedded=embedded_total,
                          failed=failed_total,
                          embedded_this_attempt=stats.embedded, failed_this_attempt=stats.failed,
                          resumed_from_earlier_attempts=state.rows + state.failures,
                          duplicate_paths_skipped=self.duplicates),
            failure_reasons=dict(stats.reasons),
            timings={"model_load_s": round(lm.load_seconds, 3), "model_compute_s": round(stats.model_s, 3),
                     "waiting_for_decode_s": round(stats.decode_wait_s, 3), "embed_loop_s": round(stats.loop_s, 3),
                     "wall_s": round(wall_s, 3)},
            images_per_s=round(rate, 2),
            decoder=self.decoder_ran(),
            versions=_versions(),
        )


    def encoder_ran(self) -> dict[str, Any]:
        """What the encoder ran on in the end (after any fallback): precision, compiled, the fallbacks."""
        label = self.encoder.ran
        return {"precision": label.split()[-1], "compiled": label.startswith("compiled"),
                "fallbacks": list(self.encoder.fallbacks)}

    def decoder_ran(self) -> dict[str, Any]:
        """The decoder that ran, what ``--decode auto`` measured, and a fallback from nvJPEG if there was one."""
        out: dict[str, Any] = {"used": self.decoder if self._stage is None else self._stage.used}
        if self.decoder_rates:
            out["measured_images_per_s"] = {k: round(v, 1) for k, v in self.decoder_rates.items()}
        if self._stage is not None and self._stage.fallback:
            out["fallback"] = self._stage.fallback
        return out


def pick_decoder(cfg: JobConfig, lm: LoadedModel, first: list[ImageRecord], workers: int) -> tuple[str, dict[str, float]]:
    """Where JPEGs are decoded: ``cpu`` or ``gpu`` (nvJPEG), and what ``--decode auto`` measured."""
    if cfg.project.thumbnails and cfg.decode.decoder != "cpu" and lm.device.type == "cuda":
        log.info("thumbnails are made by the CPU decoder: decoding on the CPU")
        return "cpu", {}
    if cfg.decode.decoder == "cpu" or lm.device.type != "cuda":
        return "cpu", {}
    from ..decode.gpu import choose_decoder

    return choose_decoder(cfg.decode.decoder, first, lm.image_size, cfg.decode.resize_mode, lm.device, workers)


def encoder_tiers(cfg: JobConfig, lm: LoadedModel, *, with_cls: bool) -> list[tuple[str, Callable[[], Any]]]:
    """The encoders to try, fastest first: compiled (``--compile`` on CUDA), eager in the run's precision, and eager
    fp32 (the model loaded again in fp32) when the precision is lower (``fallback.FallbackEncoder``)."""
    from ..model.load import ImageEncoder, load_model

    precision = str(lm.dtype).replace("torch.", "").replace("float32", "fp32").replace("bfloat16", "bf16") \
        .replace("float16", "fp16")
    tiers: list[tuple[str, Callable[[], Any]]] = []
    if cfg.model.compile and lm.device.type == "cuda":
        tiers.append((f"compiled {precision}", lambda: ImageEncoder(lm, compile_model=True, with_cls=with_cls)))
    tiers.append((f"eager {precision}", lambda: ImageEncoder(lm, with_cls=with_cls)))
    if precision != "fp32":
        tiers.append(("eager fp32", lambda: ImageEncoder(load_model(dataclasses.replace(cfg.model, precision="fp32")),
                                                         with_cls=with_cls)))
    return tiers


def build(cfg: JobConfig, preflight: Callable[[list[str]], None] | None = None) -> Embedding:
    """Every stage of one attempt, checked before anything is written: the source (inputs validated, tables
    loaded), ``preflight`` (the run's later steps check their options against the embeddings' columns:
    ``job.steps.preflight``), the output's lease (another live writer: stop at once, before minutes of model
    loading), the model, the run folder (resume state, option check), the writer and the encoder."""
    from ..model.device import pick_device
    from ..model.load import load_model

    layout = RunLayout.for_run(cfg.output.out, cfg.source.shard)
    if not cfg.source.sources:
        raise UsageError("no input: give --image-dir DIR or --source URI (a folder, s3:// prefix or .tgz archives)")
    device = pick_device(cfg.model.device)  # --device cuda without a usable GPU ends here, in seconds
    if cfg.decode.decoder == "gpu" and device.type != "cuda":
        raise UsageError("--decode gpu needs a CUDA device; valid choices here: auto, cpu")
    source = open_source(cfg.source)
    if preflight is not None:  # the later steps' options against the columns the embeddings will have
        preflight(list(embedding_schema(1, source.meta_fields).names))
    lease = Lease.for_output(layout.lease, cfg.output.lease_timeout)
    try:
        lm = load_model(cfg.model)
        identity = {**cfg.embedding_identity(), "weights_sha256": lm.weights_sha256, "image_size": lm.image_size}
        state = prepare_run(layout, identity, overwrite=cfg.output.overwrite, attempt=lease.owner)
        with_cls = lm.text_column == CLS_COLUMN
        writer = PartWriter(layout, embedding_schema(lm.embed_dim, source.meta_fields, text_vectors=with_cls),
                            part_size=cfg.output.part_size, part_seconds=cfg.output.part_seconds,
                            start_part=state.next_part, attempt=lease.owner, thumbnails=cfg.project.thumbnails,
                            identity=identity, guard=lease.check)
        encoder = FallbackEncoder(encoder_tiers(cfg, lm, with_cls=with_cls))
    except BaseException:
        lease.release()
        raise
    workers = default_workers(lm.device.type) if cfg.decode.workers is None else cfg.decode.workers
    return Embedding(cfg, layout, source, lm, state, writer, encoder, workers, lease)


def embed(cfg: JobConfig) -> Manifest:
    """Embed every image of the configured source into ``cfg.output`` and write its manifest, last, once every image
    is accounted for; returns the manifest.

    SIGTERM/SIGINT stop it cleanly (``job.stopping``): committed parts stay, ``Interrupted`` is raised."""
    with StopRequest() as stop, build(cfg) as embedding:
        manifest = embedding.run(stop=stop)
        embedding.verify()
        write_manifest(embedding.layout, manifest)
        return manifest
