"""The figure a person checks the near-duplicate threshold against: a histogram of nearest-neighbour distances."""
from __future__ import annotations

import io

import numpy as np

from .threshold import NearThreshold, log_distance


def threshold_histogram(nn_cosines: np.ndarray, threshold: NearThreshold, *, title: str | None = None,
                        bins: int = 80) -> bytes:
    """PNG bytes: the images' distance to their nearest neighbour (1 - cosine, log scale) with the threshold
    marked and the rule written under it. Everything left of the line is a near duplicate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = log_distance(nn_cosines)
    t = float(np.log10(max(1.0 - threshold.cosine, 1e-7)))
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    lo = min(float(z.min()) if len(z) else t, t) - 0.2
    hi = max(float(z.max()) if len(z) else t, t) + 0.2
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(z, bins=edges)
    ax.bar(10 ** edges[:-1], counts, width=np.diff(10 ** edges), align="edge", color="#4c72b0", edgecolor="white",
           linewidth=0.3, label=f"{len(z):,} images")
    ax.set_xscale("log")
    flagged = int(np.sum(z <= t))
    ax.axvline(10 ** t, color="#c44e52", linewidth=2,
               label=f"threshold: cosine >= {threshold.cosine:.6g} ({flagged:,} at or left of it)")
    ax.set_xlabel("distance to the nearest other image, 1 - cosine (log scale)")
    ax.set_ylabel("images")
    ax.set_title(title or "Nearest-neighbour distances and the near-duplicate threshold")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    rule = threshold.rule if len(threshold.rule) <= 150 else threshold.rule[:147] + "..."
    fig.text(0.01, 0.01, rule, fontsize=7, color="#444444")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
