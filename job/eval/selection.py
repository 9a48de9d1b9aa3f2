"""A curated run's subset (``curation/selection.parquet``, ``job curate --select N``) against random subsets of the same
size: does it capture the rare categories?

A category is *rare* when fewer than ``--rare-share`` of the scored images show it. For the subset of m images drawn
from the run's N rows: how many images of the rare categories it holds, and how many rare categories it hits at least
once. A random subset of m rows holds a hypergeometric number of a category's R images: mean m·R/N, and at least one
with probability 1 − C(N−R, m)/C(N, m); the expected number of rare categories hit is the sum of those. The p-value
is the share of random subsets holding at least as many rare images as the selection (exact, not simulated).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from scipy.stats import hypergeom

from .. import fsutil
from ..runfolder import RunLayout, read_table


def selection_ids(layout: RunLayout) -> np.ndarray | None:
    """The ids of the run's curated subset, or None when the run has none."""
    url = layout.curation.selection
    if not fsutil.exists(url):
        return None
    return read_table(url, ["id"]).column("id").to_numpy()


def score_selection(selected: np.ndarray, labels: pa.Table, rows: int, rare_share: float) -> dict[str, Any]:
    """The subset's rare-category capture against random subsets of the same size from the run's ``rows`` rows."""
    n_img = labels.num_rows
    ids = labels.column("id").to_numpy()
    chosen = np.isin(ids, selected)
    m, n = int(len(selected)), int(rows)
    cats = labels.column("categories").to_pylist()
    per: dict[str, list[int]] = {}
    for i, cs in enumerate(cats):
        for c in cs:
            per.setdefault(c, []).append(i)
    rare = sorted(c for c, r in per.items() if len(r) < rare_share * n_img)
    table: dict[str, dict[str, float]] = {}
    expected_hits = 0.0
    for c in rare:
        r = len(per[c])
        p_any = float(1.0 - hypergeom.pmf(0, n, r, m))
        expected_hits += p_any
        table[c] = {"images": r, "in_subset": int(chosen[per[c]].sum()), "random_mean": round(m * r / n, 4),
                    "random_hits_any": round(p_any, 4)}
    rare_rows = np.zeros(n_img, bool)
    for c in rare:
        rare_rows[per[c]] = True
    r_all = int(rare_rows.sum())
    got = int((rare_rows & chosen).sum())
    sd = float(hypergeom.std(n, r_all, m)) if r_all else 0.0
    return {
        "subset": m, "rows": n, "rare_share": rare_share, "rare_categories": len(rare),
        "rare_images": r_all, "rare_images_in_subset": got,
        "random_rare_images_mean": round(m * r_all / n, 4) if n else 0.0, "random_rare_images_sd": round(sd, 4),
        "p_value": round(float(hypergeom.sf(got - 1, n, r_all, m)), 6) if r_all else 1.0,
        "rare_categories_hit": sum(1 for v in table.values() if v["in_subset"] > 0),
        "random_rare_categories_hit_mean": round(expected_hits, 4),
        "categories": table,
    }


def selection_lines(rec: dict[str, Any]) -> list[str]:
    """Two lines for ``job eval``'s table."""
    return [f"curated subset of {rec['subset']}: {rec['rare_images_in_subset']} images of "
            f"{rec['rare_categories']} rare categories (random subsets: {rec['random_rare_images_mean']:.1f} "
            f"± {rec['random_rare_images_sd']:.1f}, p = {rec['p_value']:.3g})",
            f"rare categories hit: {rec['rare_categories_hit']} of {rec['rare_categories']} (random subsets: "
            f"{rec['random_rare_categories_hit_mean']:.1f} on average)"]
