"""Tokens as 64-bit keys, and where keys sit in a key column: the lookups the annotation join and the labels use
instead of dicts of Python strings."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def token_keys(tokens: Iterable[str]) -> np.ndarray:
    """64-bit keys of tokens (Python's string hash: the same within one process, which is where every table of one
    build is read; two of trainval's ~4M tokens share a key with probability ~1e-6)."""
    return np.fromiter((hash(t) for t in tokens), dtype=np.int64)


def positions(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each value in ``keys`` (unique), -1 where absent."""
    if len(keys) == 0:
        return np.full(len(values), -1, np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    at = np.clip(np.searchsorted(sorted_keys, values), 0, len(keys) - 1)
    return np.where(sorted_keys[at] == values, order[at], -1).astype(np.int64)
