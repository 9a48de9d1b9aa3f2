"""Thread fan-in: the inputs of one pass read by reader threads into one bounded queue, consumed as one stream."""
from __future__ import annotations

import logging
import queue
import threading
from typing import AbstractSet, Iterator, Sequence, cast

from ..errors import StorageError
from .base import ImageRecord, Input, ReadPass

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # records between the reader threads and the consumer
_DONE = object()  # what a reader thread puts last


class _Fault:
    """A storage fault in a reader thread, handed to the consumer to raise (the run stops; the same command resumes)."""

    def __init__(self, error: StorageError) -> None:
        self.error = error


class _FanIn:
    """``n_threads`` readers take the inputs in order, one at a time each; a broken input becomes one failure record,
    a storage fault that outlasted the retries stops the pass (the consumer raises it)."""

    def __init__(self, inputs: Sequence[Input], p: ReadPass, skip: AbstractSet[str], n_threads: int) -> None:
        self.p, self.skip = p, skip
        self.q: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self.todo = list(inputs)
        self.todo_lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, name=f"source-{i}", daemon=True) for i in range(n_threads)]

    def records(self) -> Iterator[ImageRecord]:
        """Every record the readers produce, until all of them ended; stops them when the consumer stops."""
        for t in self.threads:
            t.start()
        done = 0
        try:
            while done < len(self.threads):
                item = self.q.get()
                if item is _DONE:
                    done += 1
                    continue
                if isinstance(item, _Fault):
                    raise item.error
                yield cast(ImageRecord, item)
        finally:
            self._stop()

    def _stop(self) -> None:
        self.p.stop.set()
        while any(t.is_alive() for t in self.threads):
            try:
                self.q.get(timeout=0.05)
            except queue.Empty:
                pass
        for t in self.threads:
            t.join(timeout=1)

    def _put(self, item: object) -> bool:
        """Queue ``item`` unless the pass stops first (then False)."""
        while not self.p.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _next_input(self) -> Input | None:
        with self.todo_lock:
            return self.todo.pop(0) if self.todo else None

    def _work(self) -> None:
        try:
            while not self.p.stop.is_set():
                item = self._next_input()
                if item is None or not self._read(item):
                    return
        finally:
            self._signal_done()

    def _read(self, source: Input) -> bool:
        """Queue the records of one input; False when the pass stopped while queueing."""
        try:
            for rec in source.produce(self.p):
                if not self._put(rec):
                    return False
        except StorageError as exc:  # the network, not the data: stop; the same command resumes
            self._put(_Fault(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - a broken input ends as a failure, not a crash
            log.exception("reading %s failed", source.url)
            self.p.error(f"{source.url}: {type(exc).__name__}: {exc}")
            if source.url not in self.skip:
                self._put(ImageRecord(path=source.url, error=f"source error: {type(exc).__name__}: {exc}"))
        return True

    def _signal_done(self) -> None:
        """The consumer must learn that this thread ended, even when stopping (then make room in the queue)."""
        while True:
            try:
                self.q.put(_DONE, timeout=0.1)
                break
            except queue.Full:
                if self.p.stop.is_set():
                    try:
                        self.q.get_nowait()
                    except queue.Empty:
                        pass


def fan_in(inputs: Sequence[Input], p: ReadPass, skip: AbstractSet[str], n_threads: int) -> Iterator[ImageRecord]:
    """The records of ``inputs`` read by ``n_threads`` threads (1: one input after the other, in order)."""
    return _FanIn(inputs, p, skip, n_threads).records()
