"""``job run``: embed, then index and project when enabled, manifest last, then publish when asked."""
from __future__ import annotations

import logging
import time

from .config import JobConfig
from .embed import embed
from .runfolder import Manifest, RunLayout, write_manifest

log = logging.getLogger(__name__)


def summary(manifest: Manifest, layout: RunLayout) -> str:
    """One line for the log at the end of a run."""
    c = manifest.counts
    return (f"done: {c.embedded} embedded, {c.failed} failed, {manifest.images_per_s} images/s "
            f"-> {layout.embeddings}")


def run_pipeline(cfg: JobConfig) -> Manifest:
    """Embed, index, project; write the manifest last; publish when asked. Returns the manifest."""
    layout = RunLayout.for_output(cfg.output.out)
    manifest = embed(cfg)
    if cfg.index.enabled:
        from .index import build_run_index

        t0 = time.perf_counter()
        manifest.index = build_run_index(cfg, layout, expected_dim=manifest.model.embed_dim)
        manifest.outputs.index = layout.index.removeprefix(layout.run_dir.rstrip("/") + "/")
        manifest.timings["index_s"] = round(time.perf_counter() - t0, 3)
    if cfg.project.enabled:
        from .project import project_run

        t0 = time.perf_counter()
        manifest.projection = project_run(cfg, layout)
        manifest.outputs.umap = layout.umap.removeprefix(layout.run_dir.rstrip("/") + "/")
        manifest.timings["projection_s"] = round(time.perf_counter() - t0, 3)
    write_manifest(layout, manifest)
    if cfg.output.publish:
        from .publish import publish_run

        manifest.published = publish_run(layout, cfg.output.publish)
    log.info(summary(manifest, layout))
    return manifest
