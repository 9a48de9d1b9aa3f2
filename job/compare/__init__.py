"""Compare: ``job compare`` embeds the same images under each variant (model and checkpoint, pool, resize, size) — each
a run folder made by ``job run``'s pipeline — scores each with ``job eval`` against one set of labels, and writes one
table (``compare.json``, ``compare.md``) and one figure (``compare.png``). ``run`` chains the stages, ``report``
renders the outputs. Variants are parsed once, in ``job.config.Variant`` (grammar: ``job.values.parse_key_values``).

May import: every unit below the command line except ``merge`` (its sibling): the pipeline, the steps, the eval,
the model registry, the run folder, the ground floor.
"""
from __future__ import annotations

from .report import VariantRun, compare_png, comparison, markdown
from .run import COMPARE_JSON, COMPARE_MD, COMPARE_PNG, check_variants, compare, variant_config

__all__ = ["COMPARE_JSON", "COMPARE_MD", "COMPARE_PNG", "VariantRun", "check_variants", "compare", "compare_png",
           "comparison", "markdown", "variant_config"]
