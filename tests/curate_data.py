"""Synthetic vectors for the curation tests: clustered unit vectors (CLIP-like) with planted near duplicates."""
from __future__ import annotations

import numpy as np


def clustered(n: int, d: int = 64, clusters: int = 12, seed: int = 0, spread: float = 0.35) -> np.ndarray:
    """n unit vectors around ``clusters`` centres in a cone (random pairs cosine ~0.4, nearest ~0.9)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(d)
    centres = rng.standard_normal((clusters, d))
    lab = rng.integers(0, clusters, n)
    x = 0.8 * shared / np.linalg.norm(shared) + 0.7 * centres[lab] / np.sqrt(d) * 1.2
    x = x + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def plant(x: np.ndarray, sources: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    """Copies of ``x[sources]`` moved by a little noise (cosine to the source ~ 1 - noise^2 / 2), unit length."""
    rng = np.random.default_rng(seed)
    y = x[sources] + noise * rng.standard_normal((len(sources), x.shape[1])).astype(np.float32) / np.sqrt(x.shape[1])
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
