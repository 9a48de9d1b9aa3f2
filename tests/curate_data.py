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


def copies_at(x: np.ndarray, sources: np.ndarray, cosines: np.ndarray, seed: int = 2) -> np.ndarray:
    """Unit vectors at exactly the given cosine to ``x[sources]`` (the source turned by a random orthogonal part)."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(sources), x.shape[1]), np.float32)
    for a in range(0, len(sources), 65_536):  # in blocks: the bench makes 700,000 copies of 768-d vectors
        s = x[sources[a:a + 65_536]].astype(np.float64)
        u = rng.standard_normal(s.shape)
        u -= (u * s).sum(axis=1, keepdims=True) * s
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        c = np.asarray(cosines[a:a + 65_536], np.float64)[:, None]
        y = c * s + np.sqrt(1.0 - c * c) * u
        out[a:a + len(s)] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return out


def planted(base: np.ndarray, share: float = 0.02, big_group: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``base`` plus copies of some of its rows: half re-encodes (cosine 0.999-0.99995 to the source), half near
    copies (0.96-0.999), in groups of 1-6 copies of one source and one group of ``big_group`` (more than k).
    Returns (vectors, the source row of each row or -1)."""
    rng = np.random.default_rng(seed)
    n = len(base)
    m = max(big_group + 1, int(round(n * share)))
    sizes = rng.integers(1, 7, m)
    sizes[0] = big_group
    sources = np.repeat(rng.choice(n, len(sizes), replace=False), sizes)[:m]
    cos = np.where(rng.random(m) < 0.5, rng.uniform(0.999, 0.99995, m), rng.uniform(0.96, 0.999, m))
    return np.concatenate([base, copies_at(base, sources, cos, seed + 1)]), np.r_[np.full(n, -1), sources]


def every_copied(base: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``base`` and one copy of every row (cosines as ``planted``): no image is without a copy."""
    rng = np.random.default_rng(seed)
    n = len(base)
    cos = np.where(rng.random(n) < 0.5, rng.uniform(0.999, 0.99995, n), rng.uniform(0.96, 0.999, n))
    return np.concatenate([base, copies_at(base, np.arange(n), cos, seed + 1)]), np.r_[np.full(n, -1), np.arange(n)]


def _around_mean(x: np.ndarray, count: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=0)
    mean /= np.linalg.norm(mean)
    y = mean + spread * rng.standard_normal((count, x.shape[1])) / np.sqrt(x.shape[1])
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def with_rare(x: np.ndarray, src: np.ndarray, share: float = 0.005, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Plus ``share`` rare images: directions of their own, far from every cluster and from each other."""
    count = max(1, int(round(len(x) * share)))
    rare = _around_mean(x, count, 1.6, np.random.default_rng(seed))
    return np.concatenate([x, rare]), np.r_[src, np.full(count, -1)]


def with_blank(x: np.ndarray, src: np.ndarray, count: int = 300, seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Plus ``count`` near-blank frames: one direction of their own, each within cosine ~0.98 of the others."""
    rng = np.random.default_rng(seed)
    blank = _around_mean(x, 1, 1.2, rng)[0]
    y = blank + 0.14 * rng.standard_normal((count, x.shape[1])) / np.sqrt(x.shape[1])
    y = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
    return np.concatenate([x, y]), np.r_[src, np.full(count, -1)]
