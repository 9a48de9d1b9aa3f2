"""The greedy k-center engine: the same picks as the plain greedy, with the distance passes batched into matrix
products.

Plain greedy k-center makes one pass over all points per pick: a matrix-vector product, bound by memory bandwidth
(each pass reads the whole matrix to do 2 flops per 4 bytes). Here the passes are deferred and batched:

* **Candidates.** After a pass, the ``CANDIDATES`` eligible points farthest from every centre form the candidate set,
  and ``tau`` is the largest distance of an eligible point outside it. A point's distance to its nearest centre only
  shrinks as centres are added, so no point outside the set can ever be farther than ``tau``.
* **Certified picks.** The next pick is the candidate with the largest distance, kept exact against every centre
  (each new centre updates the candidates' distances: ``CANDIDATES`` x d per pick). While that distance is at least
  ``tau`` it is the farthest eligible point overall, exactly the plain greedy's pick, and the new centre waits in a
  pending list. Otherwise (or once ``MAX_PENDING`` centres wait) one pass applies every pending centre to every point
  at once: a matrix-matrix product (``job.index.exact_search`` on ``[z, 1]`` against ``[c, -|c|²/2]``, whose
  best inner product is the nearest centre), which BLAS runs at its compute peak, not at the memory's pace.

Each pass costs what a plain greedy's passes for its centres would (n x centres x d multiply-adds), but as one
matrix product; the picks between passes are certified, so they are the plain greedy's (``tests/test_curate_select.py``
compares them with a brute-force greedy). Measured: ``docs/benchmarks.md`` (Diverse subset). Memory: the matrix the points live in is not copied (a pool of its rows is
addressed through ``rows``); a few bytes per point; rows are gathered ``CHUNK`` at a time.
"""
from __future__ import annotations

import numpy as np

CHUNK = 32_768  # rows gathered at once: 32k x 769 float32 = 96 MiB at most
CANDIDATES = 2048  # points whose distance is kept exact between passes (1,024-4,096 measured alike)
MAX_PENDING = 512  # centres applied to every point in one pass at most


class FarthestFirst:
    """Nearest-centre distances over the pool ``rows`` of the matrix ``z`` (pool position i is ``z[rows[i]]``;
    ``rows=None``: every row of ``z``). ``eligible`` (bool per pool position) is read by reference at every
    :meth:`farthest`; after making more points eligible, call :meth:`invalidate`."""

    def __init__(self, z: np.ndarray, rows: np.ndarray | None, eligible: np.ndarray, *,
                 candidates: int = CANDIDATES, max_pending: int = MAX_PENDING) -> None:
        self.z, self.rows, self.eligible = z, rows, eligible
        self.n = len(eligible)
        self.sq = np.empty(self.n, np.float32)
        for s in range(0, self.n, CHUNK):
            block = self._block(s, min(self.n, s + CHUNK))
            self.sq[s:s + len(block)] = np.einsum("ij,ij->i", block, block)
        self.dist = np.full(self.n, np.inf, np.float32)  # squared distance to the nearest applied centre
        self.assign = np.full(self.n, -1, np.int64)  # that centre's number
        self.centre_pos: list[int] = []
        self.pending: list[int] = []
        self.size, self.max_pending = candidates, max_pending
        self._cand: np.ndarray | None = None
        self._cur = np.zeros(0, np.float32)
        self._cz, self._csq = np.zeros((0, z.shape[1]), np.float32), np.zeros(0, np.float32)
        self._tau = -np.inf
        self._buf: np.ndarray | None = None  # the [z, 1] rows of a pass, reused
        self.passes = 0
        self.touched = 0  # point-centre distances computed (a plain greedy computes one per point per centre)

    @property
    def count(self) -> int:
        """Centres so far (applied or pending)."""
        return len(self.centre_pos)

    def _block(self, s: int, e: int) -> np.ndarray:
        return self.z[s:e] if self.rows is None else self.z[self.rows[s:e]]

    def _gather(self, pos: np.ndarray) -> np.ndarray:
        return self.z[pos if self.rows is None else self.rows[pos]]

    def vector(self, pos: int) -> np.ndarray:
        """The vector of pool position ``pos``."""
        return self.z[pos if self.rows is None else self.rows[pos]]

    def add(self, pos: int) -> None:
        """Make pool position ``pos`` a centre (applied to every point at the next pass)."""
        self.centre_pos.append(int(pos))
        self.pending.append(int(pos))
        if self._cand is not None and len(self._cand):
            d = self._cz @ np.asarray(self.vector(pos), np.float32)
            d *= -2.0
            d += self._csq
            d += self.sq[pos]
            np.maximum(d, 0.0, out=d)
            np.minimum(self._cur, d, out=self._cur)
            self.touched += len(self._cand)
        if len(self.pending) >= self.max_pending:
            self.flush()

    def flush(self) -> None:
        """Apply the pending centres to every point (one batched pass)."""
        if not self.pending:
            return
        from ..index.exact import exact_search

        pos = np.asarray(self.pending, np.int64)
        first = self.count - len(pos)
        c = np.asarray(self._gather(pos), np.float32)
        base = np.hstack([c, (-0.5 * self.sq[pos])[:, None]]).astype(np.float32)
        if self._buf is None:
            self._buf = np.ones((min(self.n, CHUNK), base.shape[1]), np.float32)
        buf = self._buf
        for s in range(0, self.n, CHUNK):
            e = min(self.n, s + CHUNK)
            q = buf[: e - s]
            q[:, :-1] = self._block(s, e)
            j, best = exact_search(q, base, 1)
            d = np.maximum(self.sq[s:e] - 2.0 * best[:, 0], 0.0)
            closer = d < self.dist[s:e]
            self.dist[s:e][closer] = d[closer]
            self.assign[s:e][closer] = first + j[closer, 0]
        self.touched += self.n * len(pos)
        self.passes += 1
        self.pending = []
        self._cand = None

    def invalidate(self) -> None:
        """More points became eligible: the candidate set is rebuilt at the next :meth:`farthest`."""
        self.flush()
        self._cand = None

    def _candidates(self) -> None:
        self.flush()
        vals = np.where(self.eligible, self.dist, -np.inf)
        if self.size < self.n:
            kth = self.n - self.size - 1
            part = np.argpartition(vals, kth)
            cand, self._tau = part[kth + 1:], float(vals[part[kth]])
        else:
            cand, self._tau = np.arange(self.n), -np.inf
        cand = cand[vals[cand] > -np.inf]
        self._cand, self._cur = cand, self.dist[cand].copy()
        self._cz, self._csq = np.ascontiguousarray(self._gather(cand), np.float32), self.sq[cand]

    def farthest(self) -> int:
        """The eligible point farthest from every centre (-1 when no point is eligible; any eligible point is
        infinitely far before the first centre)."""
        for _ in range(2):
            if self._cand is None:
                self._candidates()
            assert self._cand is not None
            if not len(self._cand):
                return -1
            vals = np.where(self.eligible[self._cand], self._cur, -np.inf)
            j = int(np.argmax(vals))
            if vals[j] > -np.inf and vals[j] >= self._tau:
                return int(self._cand[j])
            self._cand = None  # not certified: apply what is pending and look again
        return -1

    def nearest_centre(self) -> np.ndarray:
        """Each point's nearest centre as a pool position (every pending centre applied first; -1 before any)."""
        self.flush()
        centres = np.asarray(self.centre_pos + [-1], np.int64)
        return centres[self.assign]
