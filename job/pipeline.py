"""``job run``: embed, then the steps (index, map; manifest last; publish) — :func:`job.steps.finish_run`.

``_STATUS`` in the run folder follows the phases and the embedding progress (``job.status``);
SIGTERM/SIGINT end the run cleanly with exit 75 (``job.stopping``).
"""
from __future__ import annotations

import logging

from .config import JobConfig
from .embed import Embedding, build
from .errors import Interrupted, UsageError
from .runfolder import LeaseHeld, Manifest, RunLayout, write_manifest
from .status import StatusWriter, note_waiting
from .steps import finish_run, preflight, summary
from .stopping import StopRequest

log = logging.getLogger(__name__)


def run_pipeline(cfg: JobConfig) -> Manifest:
    """Embed, index, project; write the manifest last; publish when asked. Returns the manifest."""
    layout = RunLayout.for_run(cfg.output.out, cfg.source.shard)
    _check_device(cfg, layout)
    with StopRequest() as stop:
        try:
            # every input is checked here, and the output's lease taken, before any write
            embedding = build(cfg, lambda columns: preflight(cfg, columns))
        except LeaseHeld as exc:
            note_waiting(layout.run_dir, str(exc))
            raise
        # A stop asked for while the model loaded ends the attempt here, before _STATUS is touched: the instance
        # script has already recorded why (a new document opened now would replace its reason).
        with embedding:
            stop.check("while the model was loading")
            status = StatusWriter.open(layout.run_dir, cfg.source.shard)
            return _embed_and_finish(cfg, embedding, status, stop)


def _check_device(cfg: JobConfig, layout: RunLayout) -> None:
    """``--device cuda`` without a GPU torch can use ends the run in seconds, and ``_STATUS`` says why (the cloud run
    asks for CUDA: a reason there beats an exit code; ``tests/test_embed.py::test_device_cuda_fails_fast_in_status``)."""
    if cfg.model.device != "cuda":
        return
    from .model.device import pick_device

    try:
        pick_device("cuda")
    except UsageError as exc:
        StatusWriter.open(layout.run_dir, cfg.source.shard).finish("failed", str(exc))
        raise


def _embed_and_finish(cfg: JobConfig, embedding: Embedding, status: StatusWriter, stop: StopRequest) -> Manifest:
    layout = embedding.layout
    with tracked(status):
        status.phase("embed")
        manifest = embedding.run(stop=stop, status=status)
        if cfg.source.shard is not None:
            # a shard is an ordinary run folder of embeddings; `job merge` indexes and projects all shards
            embedding.verify()
            write_manifest(layout, manifest)
            log.info("shard %d/%d: %s; run `python -m job merge --run %s` once every shard is done",
                     *cfg.source.shard, summary(manifest, layout), cfg.output.out)
            return manifest
        return finish_run(cfg, layout, manifest, status=status, stop=stop, verify=embedding.verify)


class tracked:  # noqa: N801 - used as a context manager, reads like one
    """Record how an attempt ends in ``_STATUS``: succeeded, interrupted (with the signal) or failed (with why)."""

    def __init__(self, status: StatusWriter) -> None:
        self.status = status

    def __enter__(self) -> StatusWriter:
        return self.status

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.status.finish("succeeded")
        elif isinstance(exc, (Interrupted, KeyboardInterrupt)):
            self.status.finish("interrupted", str(exc) or "interrupted")
        else:
            self.status.finish("failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                               if str(exc).strip() else type(exc).__name__)
