"""``job run``: embed, then index and project when enabled, manifest last, then publish when asked.

``_STATUS`` in the run folder follows the phases and the embedding progress (``job.status``);
SIGTERM/SIGINT end the run cleanly with exit 75 (``job.stopping``).
"""
from __future__ import annotations

import logging
import time

from .config import JobConfig
from .embed import EmbedSession
from .errors import Interrupted
from .runfolder import Manifest, RunLayout, write_manifest
from .status import StatusWriter
from .stopping import StopRequest

log = logging.getLogger(__name__)


def summary(manifest: Manifest, layout: RunLayout) -> str:
    """One line for the log at the end of a run."""
    c = manifest.counts
    return (f"done: {c.embedded} embedded, {c.failed} failed, {manifest.images_per_s} images/s "
            f"-> {layout.embeddings}")


def run_pipeline(cfg: JobConfig) -> Manifest:
    """Embed, index, project; write the manifest last; publish when asked. Returns the manifest."""
    layout = RunLayout.for_run(cfg.output.out, cfg.source.shard)
    with StopRequest() as stop:
        session = EmbedSession(cfg)  # every input is checked here, before anything is written
        session.stop = stop
        # A stop asked for while the model loaded ends the attempt here, before _STATUS is touched: the instance
        # script has already recorded why (a new document opened now would replace its reason).
        stop.check("while the model was loading")
        status = session.status = StatusWriter.open(layout.run_dir, cfg.source.shard)
        with tracked(status):
            status.phase("embed")
            manifest = session.run()
            if cfg.source.shard is not None:
                # a shard is an ordinary run folder of embeddings; `job merge` indexes and projects all shards
                write_manifest(layout, manifest)
                log.info("shard %d/%d: %s; run `python -m job merge --run %s` once every shard is done",
                         *cfg.source.shard, summary(manifest, layout), cfg.output.out)
                return manifest
            return finish_run(cfg, layout, manifest, status=status, stop=stop)


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


def finish_run(cfg: JobConfig, layout: RunLayout, manifest: Manifest, *, status: StatusWriter | None = None,
               stop: StopRequest | None = None) -> Manifest:
    """The steps after embedding: index, UMAP map, manifest (last), publish. ``job merge`` ends the same way."""
    def phase(name: str) -> None:
        if stop is not None:
            stop.check(f"before the {name} step")
        if status is not None:
            status.phase(name)

    if cfg.index.enabled:
        from .index import build_run_index, build_run_text_index, text_index_url

        phase("index")
        t0 = time.perf_counter()
        manifest.index = build_run_index(cfg, layout, expected_dim=manifest.model.embed_dim)
        manifest.outputs.index = layout.index.removeprefix(layout.run_dir.rstrip("/") + "/")
        manifest.text_index = build_run_text_index(cfg, layout, expected_dim=manifest.model.embed_dim)
        if manifest.text_index is not None:
            manifest.outputs.text_index = text_index_url(layout).removeprefix(layout.run_dir.rstrip("/") + "/")
        manifest.timings["index_s"] = round(time.perf_counter() - t0, 3)
    if cfg.project.enabled:
        from .project import project_run

        phase("project")
        t0 = time.perf_counter()
        manifest.projection = project_run(cfg, layout)
        manifest.outputs.umap = layout.umap.removeprefix(layout.run_dir.rstrip("/") + "/")
        manifest.timings["projection_s"] = round(time.perf_counter() - t0, 3)
    if stop is not None:
        stop.check("before writing the manifest")
    write_manifest(layout, manifest)
    if cfg.output.publish:
        from .publish import publish_run

        phase("publish")
        manifest.published = publish_run(layout, cfg.output.publish)
    log.info(summary(manifest, layout))
    return manifest
