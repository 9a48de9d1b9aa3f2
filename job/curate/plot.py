"""The figure a person checks the near-duplicate threshold against: the k-NN graph's neighbour distances, each
image's nearest one, the bulk's left flank as the ``auto`` rule modelled it, and the threshold."""
from __future__ import annotations

import io
import math

import numpy as np

from .threshold import NearThreshold, log_distance


def threshold_histogram(nn_cosines: np.ndarray, threshold: NearThreshold, edge_cosines: np.ndarray | None = None, *,
                        title: str | None = None, bins: int = 80) -> bytes:
    """PNG bytes: the images' distance to their nearest neighbour (bars) and, when given, every graph edge's
    (outline), as 1 - cosine on a log scale, with the threshold marked and its rule written under it. Everything at
    or left of the line is a near duplicate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = log_distance(nn_cosines)
    ze = log_distance(edge_cosines) if edge_cosines is not None else np.zeros(0)
    t = float(np.log10(max(1.0 - threshold.cosine, 1e-7)))
    fig, ax = plt.subplots(figsize=(9, 4.4), dpi=110)
    every = np.concatenate([z, ze, [t]])
    edges = np.linspace(float(every.min()) - 0.2, float(every.max()) + 0.2, bins + 1)
    widths = np.diff(10 ** edges)
    counts, _ = np.histogram(z, bins=edges)
    ax.bar(10 ** edges[:-1], counts, width=widths, align="edge", color="#4c72b0", edgecolor="white", linewidth=0.3,
           label=f"nearest neighbour of each image ({len(z):,})")
    if len(ze):
        e_counts, _ = np.histogram(ze, bins=edges)
        ax.stairs(e_counts, 10 ** edges, color="#55a868", linewidth=1.2, label=f"every graph edge ({len(ze):,})")
    f = threshold.flank
    if f is not None:
        xs = np.linspace(f.peak - 6 * f.sigma, f.peak, 200)
        per_bin = f.height * (edges[1] - edges[0])
        ax.plot(10 ** xs, per_bin * np.exp(-0.5 * ((xs - f.peak) / f.sigma) ** 2), color="#8172b2", linestyle="--",
                linewidth=1.2, label=f"the bulk's left flank as modelled ({f.sigma:.3f} decades)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    flagged = int(np.sum(z <= t))
    ax.axvline(10 ** t, color="#c44e52", linewidth=2,
               label=f"threshold: cosine >= {threshold.cosine:.6g} ({flagged:,} images at or left of it)")
    ax.set_xlabel("distance to a neighbour, 1 - cosine (log scale)")
    ax.set_ylabel("count (log scale above 1)")
    ax.set_title(title or "Neighbour distances and the near-duplicate threshold")
    ax.legend(loc="upper left", fontsize=7.5, frameon=False)
    rule = threshold.rule if len(threshold.rule) <= 170 else threshold.rule[:167] + "..."
    fig.text(0.01, 0.01, rule, fontsize=6.5, color="#444444")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    assert math.isfinite(t)
    return buf.getvalue()
