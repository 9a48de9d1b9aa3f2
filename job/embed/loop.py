"""The embed loop: batches of records → decode stage → encoder → writer, with progress and a graceful stop.

Every piece is an interface, so the loop runs with fakes in tests (``tests/test_embed_loop.py``):

* ``batches``: lists of :class:`~job.sources.ImageRecord` (already free of duplicate paths);
* ``stage``: a :class:`~job.decode.DecodeStage` (CPU workers or nvJPEG);
* ``encoder``: an :class:`Encoder` whose ``submit`` starts a batch and returns a function that waits for its vectors,
  so the next batch is handed to the device before this one is collected (one batch in flight);
* ``writer``: a :class:`RowSink` (``job.embed.parts.PartWriter``: rows and failures, committed in parts);
* ``progress``: a :class:`ProgressSink` (``job.embed.progress.RunProgress``: tqdm and ``_STATUS``);
* ``stop``: a ``StopRequest`` checked after every batch: the loop stops reading, collects the batch in flight and
  commits what it holds.
"""
from __future__ import annotations

import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Iterator, Mapping, Protocol

import numpy as np

from ..decode import DecodeResult, DecodeStage
from ..sources import ImageRecord
from ..stopping import StopRequest

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """uint8 (n, H, W, 3) batches in; ``submit`` returns a function that waits for the (n, dim) vectors, or
    (n, 2, dim): the image vector and the CLS vector of one forward pass."""

    def submit(self, batch: Any) -> Callable[[], np.ndarray]: ...


class RowSink(Protocol):
    """Where embedded rows and failures go (``job.embed.parts.PartWriter``)."""

    committed_rows: int

    def add(self, path: str, vector: np.ndarray, width: int, height: int, meta: Mapping[str, Any] | None,
            thumbnail: bytes | None = None, text_vector: np.ndarray | None = None,
            content_hash: bytes | None = None) -> None: ...

    def add_failure(self, path: str, reason: str) -> None: ...

    def close(self) -> None: ...


class ProgressSink(Protocol):
    """Told how many images each batch embedded and failed."""

    def advance(self, embedded: int, failed: int) -> None: ...


@dataclass
class LoopStats:
    """What one run of the loop did (this attempt only)."""

    embedded: int = 0
    failed: int = 0
    decode_wait_s: float = 0.0
    model_s: float = 0.0
    loop_s: float = 0.0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.reasons[reason.split(":", 1)[0]] += 1


def batched(records: Iterable[ImageRecord], n: int) -> Generator[list[ImageRecord], None, None]:
    """Lists of ``n`` records (the last one shorter)."""
    it = iter(records)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def unique_paths(records: Iterable[ImageRecord], seen: set[str], on_duplicate: Callable[[], None]) -> Iterator[ImageRecord]:
    """Records whose path was not met before (two sources delivering one image: the first wins)."""
    for r in records:
        if r.path in seen:
            on_duplicate()
            continue
        seen.add(r.path)
        yield r


class EmbedLoop:
    """Drive batches through the stage, the encoder and the writer; ``run`` returns the :class:`LoopStats`."""

    def __init__(self, batches: Iterable[list[ImageRecord]], stage: DecodeStage, encoder: Encoder, writer: RowSink,
                 progress: ProgressSink, stop: StopRequest | None = None) -> None:
        self.batches = batches
        self.stage = stage
        self.encoder = encoder
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.stats = LoopStats()

    def _failures(self, records: list[ImageRecord], result: DecodeResult) -> int:
        n = 0
        for r in records:
            if r.error is not None:
                self.writer.add_failure(r.path, r.error)
                self.stats.fail(r.error)
                n += 1
        for pos, reason in result.failed:
            self.writer.add_failure(records[pos].path, reason)
            self.stats.fail(reason)
            n += 1
        return n

    def _collect(self, records: list[ImageRecord], result: DecodeResult, fetch: Callable[[], np.ndarray]) -> int:
        t0 = time.perf_counter()
        vectors = fetch()
        cls = vectors[:, 1] if vectors.ndim == 3 else None
        vectors = vectors[:, 0] if vectors.ndim == 3 else vectors
        self.stats.model_s += time.perf_counter() - t0
        for j, pos in enumerate(result.ok_positions):
            rec = records[pos]
            w, h = result.sizes[j]
            self.writer.add(rec.path, vectors[j], w, h, rec.meta, thumbnail=result.thumbs[j],
                            text_vector=None if cls is None else cls[j],
                            content_hash=result.hashes[j] if result.hashes else None)
        self.stats.embedded += len(result.ok_positions)
        return len(result.ok_positions)

    def _close_after_failure(self) -> None:
        """The encoder or the stage failed: what was already collected is committed (it is whole), and the original
        error is the one that surfaces even if the commit fails too (a lost lease refuses it)."""
        try:
            self.writer.close()
        except Exception as exc:  # noqa: BLE001 - the first error is the one to report
            log.warning("could not commit the rows embedded before the failure: %s", exc)

    def run(self) -> LoopStats:
        """Embed every batch (until a stop is asked for), then commit the last part."""
        t_loop = time.perf_counter()
        in_flight: tuple[list[ImageRecord], DecodeResult, Callable[[], np.ndarray]] | None = None
        decoded = self.stage.map(self.batches)
        try:
            t_wait = time.perf_counter()
            for records, result in decoded:
                self.stats.decode_wait_s += time.perf_counter() - t_wait
                failed = self._failures(records, result)
                embedded = 0
                if result.ok_positions:
                    t0 = time.perf_counter()
                    fetch = self.encoder.submit(result.pixels)
                    self.stats.model_s += time.perf_counter() - t0
                    if in_flight is not None:
                        embedded = self._collect(*in_flight)
                    in_flight = (records, result, fetch)
                self.progress.advance(embedded, failed)
                if self.stop is not None and self.stop.requested:
                    break  # stop reading; what is embedded is committed below
                t_wait = time.perf_counter()
            if in_flight is not None:
                self.progress.advance(self._collect(*in_flight), 0)
        except BaseException:
            self._close_after_failure()
            raise
        else:
            self.writer.close()
        finally:
            close = getattr(decoded, "close", None)
            if close is not None:
                close()
        self.stats.loop_s = time.perf_counter() - t_loop
        return self.stats
