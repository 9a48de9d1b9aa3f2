"""Embedding progress for people and for ``job status``: a tqdm bar in the log and the ``progress`` of ``_STATUS``.

The total is exact when the source listed its files, else estimated while a ``.tgz`` stream is read (the source's
``estimated_total``); the bar and ``_STATUS`` then show the estimate and an ETA from it.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..status import StatusWriter


class RunProgress:
    """Counts of one embedding attempt on top of what earlier attempts committed (``done_before``, ``failed_before``)."""

    def __init__(self, *, total: int | None, done_before: int, failed_before: int,
                 estimate: Callable[[], int | None], status: StatusWriter | None = None, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.total = total
        self.done_before, self.failed_before = done_before, failed_before
        self.embedded = self.failed = 0
        self._estimate = estimate
        self._status = status
        self._t0 = time.perf_counter()
        self.bar: Any = tqdm(total=total, initial=done_before, unit="img", desc="embed", disable=not enabled,
                             dynamic_ncols=True)

    def advance(self, embedded: int, failed: int) -> None:
        """One batch's embedded and failed images."""
        self.embedded += embedded
        self.failed += failed
        self.bar.update(embedded + failed)
        self._report(force=False)

    def _report(self, *, force: bool) -> None:
        estimate = None if self.total is not None else self._estimate()
        if estimate is not None and self.bar.total != estimate:
            self.bar.total = estimate  # a stream's estimated size: tqdm shows an ETA
        if self._status is None:
            return
        elapsed = time.perf_counter() - self._t0
        self._status.progress(self.done_before + self.embedded + self.failed, self.total,
                              self.failed_before + self.failed, self.embedded / elapsed if elapsed > 0 else 0.0,
                              estimated_total=estimate, force=force)

    def close(self) -> None:
        """The last word: ``_STATUS`` written now whatever the throttle, and the bar closed."""
        try:
            self._report(force=True)
        finally:
            self.bar.close()
