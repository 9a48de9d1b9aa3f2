"""Strata of a subset and how many picks each gets: the combinations of the ``--balance`` columns' values, and their
target shares (``--shares``): ``proportional`` to the images they hold, ``equal``, or given per value
(``location=boston-seaport:0.4``).

Given shares name values of one or more columns. For each named column, the values named get their share and the
values not named split what is left in proportion to their images (when every value is named and the shares sum to
less than 1, they are scaled up to 1). A stratum's weight is the product of its values' shares over the named
columns, spread over its combinations with the other balance columns in proportion to their images; the weights are
normalised over the strata that have images.

Targets are ``total · weight``; a stratum cannot get more picks than it has images to pick from, and what it cannot
take is handed to the others in proportion to their weights (water-filling). The integer quotas are the targets
rounded by largest remainder, so each is within one pick of its target; ``proportional`` and ``equal`` also give every
stratum with images at least one pick (the rarest value is never left out), given shares give a value at share 0 none.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UsageError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Strata:
    """A stratum code per row (0..m-1), each stratum's label (``location=boston-seaport, channel=CAM_FRONT``) and its
    value per balance column."""

    codes: np.ndarray
    labels: list[str]
    columns: tuple[str, ...]
    values: list[tuple[str, ...]]

    @classmethod
    def of(cls, balance: Mapping[str, Sequence[Any] | np.ndarray] | None, rows: np.ndarray) -> Strata:
        """The strata of ``rows`` (indices into the columns of ``balance``); one stratum ``all`` without balance."""
        if not balance:
            return cls(np.zeros(len(rows), np.int64), ["all"], (), [()])
        per = [_encode(np.asarray(v, dtype=object)[rows]) for v in balance.values()]
        key = np.zeros(len(rows), np.int64)
        for codes, names in per:  # one integer per combination, in the columns' sorted order
            key = key * max(1, len(names)) + codes
        combos, inverse = np.unique(key, return_inverse=True)
        values: list[tuple[str, ...]] = []
        for k in combos.tolist():
            parts = []
            for _, names in reversed(per):
                k, j = divmod(k, max(1, len(names)))
                parts.append(names[j])
            values.append(tuple(reversed(parts)))
        labels = [", ".join(f"{c}={v}" for c, v in zip(balance, t, strict=True)) for t in values]
        return cls(np.asarray(inverse).reshape(-1).astype(np.int64), labels, tuple(balance), values)

    def __len__(self) -> int:
        return len(self.labels)


def _encode(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """A column's values as codes into its sorted distinct values (as text; None is ""), hashed in Arrow: 1.4M rows
    in well under a second, where a Python loop over them took ~13 s (``bench/select_bench.py``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pc.fill_null(pc.cast(pa.array(values, from_pandas=True), pa.string()), "")
    enc = pc.dictionary_encode(arr).combine_chunks() if isinstance(arr, pa.ChunkedArray) else pc.dictionary_encode(arr)
    names = enc.dictionary.to_pylist()
    order = np.argsort(np.array(names, dtype=object), kind="stable")
    rank = np.empty(len(names), np.int64)
    rank[order] = np.arange(len(names))
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return rank[codes] if len(names) else codes, [names[i] for i in order]


def check_balance(columns: Sequence[str], available: Sequence[str]) -> list[str]:
    """The balance columns, each known; a UsageError naming an unknown one and the valid choices otherwise."""
    out = [c.strip() for c in columns if c.strip()]
    for c in out:
        if c not in available:
            raise UsageError(f"balance column {c!r} unknown; valid choices: {', '.join(sorted(available))}")
    return out


def weights(strata: Strata, counts: np.ndarray, shares: str | Sequence[tuple[str, str, float]]) -> np.ndarray:
    """Each stratum's target share of the picks (sums to 1 over the strata with ``counts`` > 0)."""
    counts = np.asarray(counts, np.float64)
    has = counts > 0
    if not has.any():
        return np.zeros(len(counts))
    if shares == "equal":
        w = has.astype(np.float64)
    elif isinstance(shares, str) or not shares:
        w = counts.copy()
    else:
        w = _given(strata, counts, shares)
    total = w[has].sum()
    if total <= 0:
        raise UsageError("--shares gives every value that has images to pick a share of 0; nothing can be picked")
    return np.where(has, w / total, 0.0)


def _given(strata: Strata, counts: np.ndarray, shares: Sequence[tuple[str, str, float]]) -> np.ndarray:
    named: dict[str, dict[str, float]] = {}
    for column, value, share in shares:
        named.setdefault(column, {})[value] = share
    w = counts.copy()
    for column, given in named.items():
        j = strata.columns.index(column)
        present: dict[str, float] = {}
        for s, vals in enumerate(strata.values):
            present[vals[j]] = present.get(vals[j], 0.0) + counts[s]
        unknown = sorted(set(given) - {v for v, c in present.items() if c > 0})
        if unknown:
            valid = ", ".join(sorted(v for v, c in present.items() if c > 0))
            raise UsageError(f"--shares {column}={unknown[0]}: no image to pick has that {column}; valid values: "
                             f"{valid}")
        rest = {v: c for v, c in present.items() if v not in given and c > 0}
        left = 1.0 - sum(given.values())
        marginal = dict(given)
        if rest:
            mass = sum(rest.values())
            marginal.update({v: left * c / mass for v, c in rest.items()})
        elif left > 1e-9:
            log.info("--shares: every %s is named and the shares sum to %.3g; scaled to 1", column, 1 - left)
            marginal = {v: s / (1 - left) for v, s in given.items()}
        # the stratum's share of its column value is the value's share spread over the value's strata by their images
        w = np.array([w[s] / present[vals[j]] * marginal.get(vals[j], 0.0) if present[vals[j]] else 0.0
                      for s, vals in enumerate(strata.values)])
    return w


def _water_fill(total: int, w: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Targets ``total · w`` with no stratum above its ``cap``; what a full stratum cannot take goes to the others in
    proportion to their weights. A UsageError when the strata with a share cannot hold ``total``."""
    t = np.zeros(len(w))
    open_ = (w > 0) & (cap > 0)
    left = float(total)
    while left > 1e-9 and open_.any():
        add = left * w[open_] / w[open_].sum()
        room = cap[open_] - t[open_]
        t[open_] += np.minimum(add, room)
        left = total - t.sum()
        open_ &= t < cap - 1e-12
    if left > 1e-6:
        raise UsageError(f"the strata with a share hold only {int(cap[w > 0].sum())} images to pick, fewer than the "
                         f"{total} asked; lower --select or give more values a share")
    return t


def quotas(strata: np.ndarray, total: int, w: np.ndarray | None = None, *, min_one: bool = True,
           targets_out: list[np.ndarray] | None = None) -> np.ndarray:
    """Picks per stratum (codes 0..m-1 per candidate): ``total · w`` (default: proportional to the candidates),
    capped by the candidates each has, rounded by largest remainder, at least one for every stratum with candidates
    when ``min_one``. ``targets_out`` receives the unrounded targets."""
    counts = np.bincount(strata)
    m = int(np.sum(counts > 0))
    if min_one and total < m:
        raise UsageError(f"select {total} is fewer than the {m} balance groups that have images; select at least {m} "
                         "or balance over fewer columns")
    if total > counts.sum():
        raise UsageError(f"select {total} is more than the {int(counts.sum())} images there are to pick from")
    w = counts / counts.sum() if w is None else np.asarray(w, np.float64)[: len(counts)]
    t = _water_fill(total, w, counts.astype(np.float64))
    if targets_out is not None:
        targets_out.append(t)
    q = np.minimum(np.floor(t + 1e-9), counts).astype(np.int64)
    rem = t - q
    while q.sum() < total:
        j = int(np.argmax(np.where(q < counts, rem, -np.inf)))
        q[j] += 1
        rem[j] -= 1
    if min_one:
        for zero in np.nonzero((q == 0) & (counts > 0))[0]:
            q[zero] = 1
            donor = int(np.argmax(np.where(q > 1, q - t, -np.inf)))
            q[donor] -= 1
    return q
