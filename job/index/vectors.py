"""Index input: read an embeddings parquet into one (n, d) matrix with its ids, and refuse vectors unfit to index.

Vectors are L2-normalised, so every index uses inner product as cosine. Faiss ids are the
embeddings' ``id`` column, so a hit maps straight back to its metadata row.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np

from ..errors import DataError, UsageError
from ..runfolder import read_vectors

log = logging.getLogger(__name__)

CHECK_BLOCK = 65_536  # rows checked at a time (bounded temporary memory)


def check_vectors(x: np.ndarray, ids: np.ndarray, *, expected_dim: int | None = None, where: str = "") -> np.ndarray:
    """Refuse empty input, NaN/inf or zero vectors, duplicate ids, a wrong dimension; normalise if needed.

    Empty input and a wrong dimension are the caller's choice of file (UsageError); NaN/inf, zero vectors and
    duplicate ids are faults in the data (DataError).
    """
    what = where or "the embeddings"
    n, d = x.shape
    if n == 0:
        raise UsageError(f"{what} hold no vectors; embed some images first")
    if expected_dim is not None and d != expected_dim:
        raise UsageError(f"{what} have dimension {d}, but the run's model outputs "
                         f"{expected_dim}-d vectors; these embeddings do not belong to this run")
    renorm = False
    for s in range(0, n, CHECK_BLOCK):
        blk = x[s : s + CHECK_BLOCK]
        finite = np.isfinite(blk).all(axis=1)
        if not finite.all():
            bad = s + int(np.argmin(finite))
            count = sum(int((~np.isfinite(x[t : t + CHECK_BLOCK]).all(axis=1)).sum()) for t in range(0, n, CHECK_BLOCK))
            raise DataError(f"{what}: {count} vector(s) contain NaN or inf "
                            f"(first: row {bad}, id {int(ids[bad])}); re-embed those images")
        norms = np.linalg.norm(blk, axis=1)
        if (norms < 1e-6).any():
            bad = s + int(np.argmin(norms))
            raise DataError(f"{what}: row {bad} (id {int(ids[bad])}) is a zero vector")
        renorm |= bool((np.abs(norms - 1.0) > 1e-3).any())
    if renorm:
        log.warning("%s: vectors are not unit length; normalising them so inner product is cosine", where or "embeddings")
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    uniq = np.unique(ids)
    if len(uniq) != n:
        srt = np.sort(ids)
        dup = int(srt[np.nonzero(srt[1:] == srt[:-1])[0][0]])
        raise DataError(f"{what}: id {dup} appears more than once; ids must be unique")
    return np.ascontiguousarray(x, dtype=np.float32)


def ids_digest(ids: np.ndarray) -> str:
    """Order-independent fingerprint of a set of ids (ties an index to its embeddings)."""
    return hashlib.sha256(np.sort(np.asarray(ids, np.int64)).tobytes()).hexdigest()[:32]


def load_vectors(emb_url: str, *, expected_dim: int | None = None,
                 column: str = "embedding") -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) of an embeddings parquet, streamed into one matrix (``tables.read_vectors``) and checked
    (``check_vectors``).

    ``expected_dim``: the dimension the run's model outputs, when the caller knows it (a mismatch is refused).
    ``column``: which vector column (``embedding``, or the trained output ``embedding_trained`` for the text-query vectors).
    """
    x, ids = read_vectors(emb_url, column)
    where = emb_url if column == "embedding" else f"{emb_url} ({column})"
    return check_vectors(x, ids, expected_dim=expected_dim, where=where), ids
