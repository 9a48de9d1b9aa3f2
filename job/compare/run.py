"""``job compare``: the same images embedded under each variant (model and checkpoint, pool, resize, size), each a real
run folder ``OUT/<variant>/`` made by ``job run``'s own pipeline (resumable, its lease, its manifest), each scored by
``job eval`` against one shared set of labels, then one table (``compare.json``, ``compare.md``) and one figure
(``compare.png``) in ``OUT``.

A variant whose run folder is complete (its manifest written, made with the same options) is not embedded again;
one killed half-way resumes where it stopped, as ``job run`` does. The scores are made again each time (cheap next to
embedding; the labels are derived once and reused through ``eval/labels.parquet``).

Decoding is not shared between variants with the same resize and size: each run decodes its images itself. Whether
that matters is measured, not assumed: the table carries every variant's ``model_compute_s`` and
``waiting_for_decode_s`` (the embed loop's own timings) — on the CPU the model dominates by far (docs/benchmarks.md).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from typing import Any

from .. import fsutil
from ..config import JobConfig, Variant
from ..errors import UsageError
from ..runfolder import Manifest, RunLayout, find_manifest, write_manifest
from .report import VariantRun, compare_png, comparison, markdown

log = logging.getLogger(__name__)

COMPARE_JSON, COMPARE_MD, COMPARE_PNG = "compare.json", "compare.md", "compare.png"


def variant_config(cfg: JobConfig, v: Variant, out: str) -> JobConfig:
    """The ``job run`` configuration of one variant: the comparison's source, device, decode workers, eval settings;
    the variant's model, weights, pool, resize and size; its own run folder; no UMAP map, no curation (the index is
    kept unless ``--no-index``: a variant's folder can be searched and served like any run). The eval step is run by
    the comparison, with the shared labels."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, model=v.model, pretrained=v.pretrained, pool=v.pool, image_size=v.size),
        decode=dataclasses.replace(cfg.decode, resize_mode=v.resize),
        output=dataclasses.replace(cfg.output, out=fsutil.join(out, v.label), publish=None),
        project=dataclasses.replace(cfg.project, enabled=False),
        curate=dataclasses.replace(cfg.curate, enabled=False),
        eval=dataclasses.replace(cfg.eval, enabled=False),
    )


def check_variants(cfg: JobConfig) -> None:
    """Every variant's model, weights and pool, checked before anything is embedded or written (one line, exit 2)."""
    from ..model import resolve_model_name, resolve_pretrained
    from ..model.pooling import check_pool, configured_pool

    if not cfg.compare.variants:
        raise UsageError("job compare needs at least one --variant SPEC (e.g. --variant model=ViT-L-14,pool=mean)")
    for v in cfg.compare.variants:
        try:
            name = resolve_model_name(v.model)
            resolve_pretrained(name, v.pretrained)
            declared = configured_pool(name)
            if declared is not None:
                check_pool(v.pool, declared, name)
        except UsageError as exc:
            raise UsageError(f"--variant {v.spec()}: {exc}") from None


def _finished(layout: RunLayout, vcfg: JobConfig) -> Manifest | None:
    """The variant's manifest when its run folder is complete and was made with these options; None when there is
    none yet; a UsageError when the folder holds a run made with other options (as ``job run`` says it)."""
    manifest = find_manifest(layout)
    if manifest is None or vcfg.output.overwrite:
        return None
    stored = fsutil.read_json(layout.state) if fsutil.exists(layout.state) else {}
    want = vcfg.embedding_identity()
    if want.get("image_size") is None:  # the model's own size: stored resolved
        want.pop("image_size")
    changed = sorted(k for k in want if stored.get(k) != want[k])
    if changed:
        raise UsageError(f"{layout.run_dir} holds a run made with other options ({', '.join(changed)}); use another "
                         "--out or pass --overwrite")
    return manifest


def run_variant(cfg: JobConfig, v: Variant, out: str) -> VariantRun:
    """Embed one variant through ``job run``'s pipeline (or find it complete), index it unless ``--no-index``."""
    from ..pipeline import run_pipeline

    vcfg = variant_config(cfg, v, out)
    layout = RunLayout.for_run(vcfg.output.out)
    manifest = _finished(layout, vcfg)
    if manifest is not None:
        log.info("variant %s: complete in %s, not embedded again", v.label, layout.run_dir)
        return VariantRun(v, layout, manifest, resumed=True)
    log.info("variant %s: %s -> %s", v.label, v.spec(), layout.run_dir)
    return VariantRun(v, layout, run_pipeline(vcfg), resumed=False)


def score_variants(cfg: JobConfig, runs: list[VariantRun]) -> None:
    """``job eval`` on every variant, recorded in its manifest; one set of labels for all variants with the same rows
    (derived, or reused, in the first; any variant whose rows differ — other failures — derives its own)."""
    import numpy as np

    from ..eval import load_labels, run_rows
    from ..steps import eval_step

    shared = None
    for r in runs:
        vcfg = variant_config(cfg, r.variant, "")
        rows = run_rows(r.layout)
        labels = None
        if shared is not None and np.array_equal(np.sort(rows.column("id").to_numpy()),
                                                 np.sort(shared.column("id").to_numpy())):
            labels = shared
        else:
            labels, _ = load_labels(r.layout, r.manifest, vcfg, rows)
            shared = labels if shared is None else shared
        eval_step(vcfg, r.layout, r.manifest, labels=labels)
        write_manifest(r.layout, r.manifest)


def compare(cfg: JobConfig, out: str) -> dict[str, Any]:
    """Run, score and tabulate every variant of ``cfg.compare`` under ``out``; returns the ``compare.json`` document.

    Every variant is checked first (bad model, weights, pool: one line, exit 2, nothing written)."""
    check_variants(cfg)
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    runs = [run_variant(cfg, v, out) for v in cfg.compare.variants]
    score_variants(cfg, runs)
    doc = comparison(cfg, runs, out, started=started, wall_s=time.perf_counter() - t0)
    table = markdown(doc)
    fsutil.atomic_write_bytes(fsutil.join(out, COMPARE_PNG), compare_png(doc))
    fsutil.atomic_write_bytes(fsutil.join(out, COMPARE_MD), table.encode())
    fsutil.write_json(fsutil.join(out, COMPARE_JSON), doc)
    return doc
