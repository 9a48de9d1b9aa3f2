"""The steps after embedding, each in one place: run it, write its files through the run folder, record its outputs
and its time in the manifest.

``job run`` and ``job merge`` end with :func:`finish_run` (index → map → curation → eval → manifest last → publish);
``job index --run``, ``job project --run``, ``job curate --run`` and ``job eval --run`` run one step on a finished run and rewrite its manifest. Every step takes the manifest it
records into, or None for bare embeddings (no manifest to update).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, TypeVar

from . import fsutil
from .config import JobConfig
from .runfolder import Curation, Evaluation, IndexInfo, Manifest, Projection, RunLayout, RunRef, write_manifest
from .stopping import StopRequest

if TYPE_CHECKING:
    import pyarrow as pa

    from .project import UmapParams
    from .status import StatusWriter

log = logging.getLogger(__name__)
T = TypeVar("T")


def preflight(cfg: JobConfig, columns: list[str]) -> None:
    """The options of the steps after embedding, checked against the embeddings' columns before anything is written
    (``job run`` before it embeds, ``job merge`` before it lays the shards out): a bad one exits 2 with nothing written
    rather than after hours of embedding."""
    if cfg.curate.enabled:
        from .curate.load import check_options

        check_options(cfg.curate, columns)


def rerun_step(ref: RunRef, step: Callable[[Manifest | None], T]) -> T:
    """``job index --run``, ``job project --run``, ``job curate --run``: one step on a finished run, recorded in its
    manifest, which is written again (when the run has one: bare embeddings have none)."""
    result = step(ref.manifest)
    if ref.manifest is not None:
        write_manifest(ref.layout, ref.manifest)
    return result


def _timed(manifest: Manifest | None, key: str, t0: float) -> None:
    if manifest is not None:
        manifest.timings[key] = round(time.perf_counter() - t0, 3)


def index_step(cfg: JobConfig, layout: RunLayout, manifest: Manifest | None) -> tuple[IndexInfo, IndexInfo | None]:
    """The output's image index and, when it has text vectors, its text-query index; recorded in ``manifest``."""
    from .index import build_run_index, build_run_text_index

    t0 = time.perf_counter()
    dim = manifest.model.embed_dim if manifest is not None else None
    image = build_run_index(cfg, layout, expected_dim=dim)
    text = build_run_text_index(cfg, layout, expected_dim=dim)
    if manifest is not None:
        manifest.index, manifest.text_index = image, text
        manifest.outputs.index = layout.rel(layout.index)
        manifest.outputs.text_index = layout.rel(layout.text_index) if text is not None else None
    _timed(manifest, "index_s", t0)
    return image, text


def project_step(cfg: JobConfig, layout: RunLayout, manifest: Manifest | None,
                 params: UmapParams | None = None) -> Projection:
    """The 2-D UMAP map of the output's embeddings; recorded in ``manifest``."""
    from .project import project_run

    t0 = time.perf_counter()
    projection = project_run(cfg, layout, params)
    if manifest is not None:
        manifest.projection = projection
        manifest.outputs.umap = layout.rel(layout.umap)
    _timed(manifest, "projection_s", t0)
    return projection


def curate_step(cfg: JobConfig, layout: RunLayout, manifest: Manifest | None, *,
                build_index: bool = False) -> Curation:
    """Duplicates, rarity and a diverse subset (``job.curate.run``) in ``curation/``; recorded in ``manifest``.
    ``build_index``: a run without an index gets one first (``index_step``, recorded too), unless the graph is
    exact (``job curate --run`` on an imported run; ``job run --no-index --curate`` keeps its choice)."""
    from .curate.run import curate_run

    t0 = time.perf_counter()
    info = curate_run(layout, cfg.curate, progress=cfg.progress,
                      build_index=(lambda: index_step(cfg, layout, manifest)) if build_index else None)
    if manifest is not None:
        manifest.curation = info
        manifest.outputs.curation = layout.rel(layout.curation_dir)
    _timed(manifest, "curation_s", t0)
    return info


def eval_step(cfg: JobConfig, layout: RunLayout, manifest: Manifest | None, *,
              labels: pa.Table | None = None) -> Evaluation:
    """Scores against nuScenes' annotations (``job.eval``) in ``eval/``; recorded in ``manifest``. ``labels``: ground
    truth made for the same rows elsewhere (``job compare`` shares one set across its variants)."""
    from .eval import evaluate_run

    t0 = time.perf_counter()
    info = evaluate_run(layout, cfg, manifest=manifest, labels=labels)
    if manifest is not None:
        manifest.eval = info
        manifest.outputs.eval = layout.rel(layout.eval_dir)
    _timed(manifest, "eval_s", t0)
    return info


def _has_annotations(manifest: Manifest) -> bool:
    """A nuScenes source (for a merged run: its shards'): its tables may hold annotations (mini, trainval)."""
    return (manifest.source or {}).get("kind") == "nuscenes"


def _eval_in_run(cfg: JobConfig, layout: RunLayout, manifest: Manifest) -> None:
    """The eval step of ``job run`` / ``job merge``: a run whose tables hold no annotations (the test split), or whose
    annotation tables cannot be found or read (a storage fault included), is not failed after its embedding for that;
    the log says why and how to score it later (``tests/test_eval_run.py``)."""
    from .errors import JobError
    from .eval import NoAnnotations

    try:
        with fsutil.faults("the eval step on", layout.run_dir):
            eval_step(cfg, layout, manifest)
    except NoAnnotations as exc:
        log.info("no eval: %s", exc)
    except JobError as exc:
        log.warning("the eval step did not run (%s); score the run later with: python -m job eval --run %s",
                    exc, layout.run_dir)


def summary(manifest: Manifest, layout: RunLayout) -> str:
    """One line for the log at the end of a run."""
    c = manifest.counts
    return (f"done: {c.embedded} embedded, {c.failed} failed, {manifest.images_per_s} images/s "
            f"-> {layout.embeddings}")


def finish_run(cfg: JobConfig, layout: RunLayout, manifest: Manifest, *, status: StatusWriter | None = None,
               stop: StopRequest | None = None, verify: Callable[[], object] | None = None) -> Manifest:
    """The steps after embedding: index, UMAP map, curation, eval, manifest (last), publish. ``job merge`` ends the same way.
    ``verify`` (the embedding's completeness check) runs right before the manifest is written."""
    def phase(name: str) -> None:
        if stop is not None:
            stop.check(f"before the {name} step")
        if status is not None:
            status.phase(name)

    if cfg.index.enabled:
        phase("index")
        with fsutil.faults("the index step on", layout.run_dir):
            index_step(cfg, layout, manifest)
    if cfg.project.enabled:
        phase("project")
        with fsutil.faults("the projection step on", layout.run_dir):
            project_step(cfg, layout, manifest)
    if cfg.curate.enabled:
        phase("curate")
        with fsutil.faults("the curation step on", layout.run_dir):
            curate_step(cfg, layout, manifest)
    if cfg.eval.enabled and _has_annotations(manifest):
        phase("eval")
        _eval_in_run(cfg, layout, manifest)
    if stop is not None:
        stop.check("before writing the manifest")
    if verify is not None:
        verify()
    if cfg.output.publish:
        from .publish import publish_run

        phase("publish")
        write_manifest(layout, manifest)  # complete here; the copy publishes it last, then says where it went
        manifest.published = publish_run(layout, cfg.output.publish)
    write_manifest(layout, manifest)
    log.info(summary(manifest, layout))
    return manifest
