"""Fast paths that fall back instead of ending the run: an encoder tier that fails (``torch.compile``, bf16/fp16) gives
way to the next (eager, then fp32), and nvJPEG decode that fails gives way to the CPU decode pool — each time with one
warning, and the batch that failed is done again by the safe path, so nothing is lost. What finally ran is recorded
(``ran`` / ``fallbacks``) for the manifest.

None of these paths has run on a user's GPU before the first cloud run, and that run is on the user's bill: an
unsupported op in bf16, a compiler error, or an nvJPEG fault on one odd file must cost a warning, not the run.
"""
from __future__ import annotations

import collections
import itertools
import logging
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..decode.cpu import DecodeResult, DecodeStage, R

log = logging.getLogger(__name__)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FallbackEncoder:
    """Encoder tiers, fastest first: ``tiers`` is a list of (label, factory) — e.g. ("compiled bf16", …), ("eager
    bf16", …), ("eager fp32", …). A tier is built when first needed; when it raises, at submit or when its result is
    collected, the next tier takes over and redoes the batch. The last tier's errors are real errors."""

    def __init__(self, tiers: Sequence[tuple[str, Callable[[], Any]]]) -> None:
        if not tiers:
            raise ValueError("at least one encoder tier")
        self.tiers = list(tiers)
        self.level = 0
        self.fallbacks: list[str] = []
        self._encoder: Any = None
        self.batches = 0

    @property
    def ran(self) -> str:
        """The label of the tier that is running (the last one used)."""
        return self.tiers[self.level][0]

    def _active(self) -> Any:
        if self._encoder is None:
            self._encoder = self.tiers[self.level][1]()
        return self._encoder

    def _fall(self, exc: BaseException) -> None:
        if self.level + 1 >= len(self.tiers):
            raise exc
        failed = self.tiers[self.level][0]
        self.level += 1
        self._encoder = None
        note = f"{failed} failed at batch {self.batches + 1} ({_why(exc)}); continuing with {self.ran}"
        self.fallbacks.append(note)
        log.warning("encoder: %s", note)

    def submit(self, batch: Any) -> Callable[[], np.ndarray]:
        """Start a batch on the active tier; the returned function waits for its vectors (redoing the batch on the
        next tier if this one fails)."""
        while True:
            level = self.level
            try:
                fetch = self._active().submit(batch)
                break
            except Exception as exc:  # noqa: BLE001 - any failure of a fast path: the next tier redoes it
                self._fall(exc)
        self.batches += 1

        def wait() -> np.ndarray:
            try:
                return np.asarray(fetch())
            except Exception as exc:  # noqa: BLE001
                if self.level == level:  # a later batch may already have fallen
                    self._fall(exc)
                return self.submit(batch)()

        return wait

    def __call__(self, batch: Any) -> np.ndarray:
        out = self.submit(batch)()
        return out[:, 0] if out.ndim == 3 else out


class FallbackDecodeStage:
    """A fast decode stage (nvJPEG) with a safe one (the CPU pool) behind it. When the fast stage cannot start, or a
    batch throws, the safe stage decodes that batch, the ones the fast stage had read ahead, and the rest."""

    def __init__(self, fast: Callable[[], DecodeStage], safe: Callable[[], DecodeStage], *, fast_name: str = "gpu",
                 safe_name: str = "cpu") -> None:
        self._make_fast, self._make_safe = fast, safe
        self.fast_name, self.safe_name = fast_name, safe_name
        self.used = fast_name
        self.fallback: str | None = None
        self._stages: list[DecodeStage] = []

    def _fall(self, exc: BaseException, batch: int) -> None:
        self.used = self.safe_name
        self.fallback = f"{self.fast_name} decode failed at batch {batch} ({_why(exc)}); decoding on the {self.safe_name}"
        log.warning("decode: %s", self.fallback)

    def map(self, chunks: Iterable[list[R]]) -> Iterator[tuple[list[R], DecodeResult]]:
        it = iter(chunks)
        pending: collections.deque[list[R]] = collections.deque()

        def feed() -> Iterator[list[R]]:
            for chunk in it:
                pending.append(chunk)
                yield chunk

        done = 0
        try:
            fast = self._make_fast()
        except Exception as exc:  # noqa: BLE001 - nvJPEG could not start: the CPU pool does it all
            self._fall(exc, 1)
        else:
            self._stages.append(fast)
            results = fast.map(feed())
            while True:
                try:
                    recs, result = next(results)
                except StopIteration:
                    return
                except Exception as exc:  # noqa: BLE001
                    self._fall(exc, done + 1)
                    close = getattr(results, "close", None)
                    if close is not None:
                        close()
                    fast.close()
                    break
                pending.popleft()
                done += 1
                yield recs, result
        safe = self._make_safe()
        self._stages.append(safe)
        yield from safe.map(itertools.chain(list(pending), it))

    def close(self) -> None:
        for stage in self._stages:
            stage.close()
