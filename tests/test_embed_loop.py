"""``EmbedLoop`` with fakes for every interface: the order vectors come back in, both kinds of failure, a stop that
commits the batch in flight, and a writer closed when the encoder raises."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pytest

from job.decode import DecodeResult
from job.embed.loop import EmbedLoop, batched
from job.sources import ImageRecord


def _vector(path: str) -> np.ndarray:
    """A vector that names its image: the decoded pixel value the fake stage puts there."""
    return np.full(4, float(int(path.split("-")[1])), np.float32)


class FakeStage:
    """Decodes a record unless its path is in ``bad``; each decoded image's pixels hold its number."""

    def __init__(self, bad: set[str] = frozenset(), events: list[str] | None = None) -> None:
        self.bad, self.events, self.batches_read = bad, events if events is not None else [], 0

    def map(self, batches: Iterable[list[ImageRecord]]) -> Iterator[tuple[list[ImageRecord], DecodeResult]]:
        for records in batches:
            self.batches_read += 1
            ok = [i for i, r in enumerate(records) if r.error is None and r.path not in self.bad]
            failed = [(i, "decode: not a JPEG") for i, r in enumerate(records) if r.error is None and r.path in self.bad]
            pixels = np.stack([_vector(records[i].path) for i in ok]) if ok else np.zeros((0, 4), np.float32)
            self.events.append(f"decoded {self.batches_read}")
            yield records, DecodeResult(ok_positions=ok, pixels=pixels, sizes=[(16, 9)] * len(ok),
                                        thumbs=[None] * len(ok), failed=failed, hashes=[b"h" * 16] * len(ok))


class FakeEncoder:
    """The vectors are the pixels; ``fail_on`` makes the n-th submit (1-based) raise."""

    def __init__(self, events: list[str], fail_on: int | None = None, with_cls: bool = False) -> None:
        self.events, self.fail_on, self.with_cls, self.calls = events, fail_on, with_cls, 0

    def submit(self, batch: Any) -> Callable[[], np.ndarray]:
        self.calls += 1
        n = self.calls
        if n == self.fail_on:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.events.append(f"submit {n}")

        def fetch() -> np.ndarray:
            self.events.append(f"fetch {n}")
            return np.stack([batch, -batch], axis=1) if self.with_cls else batch

        return fetch


class FakeWriter:
    def __init__(self) -> None:
        self.rows: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        self.failures: list[tuple[str, str]] = []
        self.closed = 0
        self.committed_rows = 0

    def add(self, path: str, vector: np.ndarray, width: int, height: int, meta: Mapping[str, Any] | None,
            thumbnail: bytes | None = None, text_vector: np.ndarray | None = None,
            content_hash: bytes | None = None) -> None:
        assert (width, height) == (16, 9) and content_hash == b"h" * 16
        self.rows.append((path, vector, text_vector))

    def add_failure(self, path: str, reason: str) -> None:
        self.failures.append((path, reason))

    def close(self) -> None:
        self.closed += 1
        self.committed_rows = len(self.rows)


class FakeProgress:
    def __init__(self) -> None:
        self.embedded = self.failed = 0

    def advance(self, embedded: int, failed: int) -> None:
        self.embedded += embedded
        self.failed += failed


class StopAfter:
    """A StopRequest stand-in: ``requested`` turns true once the stage has read ``n`` batches."""

    def __init__(self, stage: FakeStage, n: int) -> None:
        self.stage, self.n = stage, n

    @property
    def requested(self) -> bool:
        return self.stage.batches_read >= self.n


def _records(n: int, errors: dict[int, str] | None = None) -> list[ImageRecord]:
    errors = errors or {}
    return [ImageRecord(path=f"img-{i}", data=b"x", error=errors.get(i)) for i in range(n)]


def test_vectors_come_back_in_input_order_one_batch_in_flight() -> None:
    events: list[str] = []
    stage, enc, writer, progress = FakeStage(events=events), FakeEncoder(events, with_cls=True), FakeWriter(), FakeProgress()
    records = _records(23)
    stats = EmbedLoop(batched(records, 5), stage, enc, writer, progress).run()
    assert [p for p, _, _ in writer.rows] == [r.path for r in records]
    for path, vector, cls in writer.rows:
        np.testing.assert_array_equal(vector, _vector(path))
        np.testing.assert_array_equal(cls, -_vector(path))  # (n, 2, dim): image vector, then CLS vector
    assert stats.embedded == progress.embedded == 23 and stats.failed == 0 and writer.closed == 1
    # batch n+1 goes to the device before batch n is collected
    assert events.index("submit 2") < events.index("fetch 1") and events[-1] == "fetch 5"


def test_both_kinds_of_failure_are_counted() -> None:
    events: list[str] = []
    records = _records(12, errors={3: "read: 404 Not Found", 7: "read: connection reset"})
    stage = FakeStage(bad={"img-0", "img-8", "img-11"}, events=events)
    writer, progress = FakeWriter(), FakeProgress()
    stats = EmbedLoop(batched(records, 4), stage, FakeEncoder(events), writer, progress).run()
    assert sorted(writer.failures) == sorted([("img-3", "read: 404 Not Found"), ("img-7", "read: connection reset"),
                                              ("img-0", "decode: not a JPEG"), ("img-8", "decode: not a JPEG"),
                                              ("img-11", "decode: not a JPEG")])
    assert stats.failed == progress.failed == 5 and stats.reasons == {"read": 2, "decode": 3}
    assert stats.embedded == progress.embedded == 7
    assert [p for p, _, _ in writer.rows] == [f"img-{i}" for i in (1, 2, 4, 5, 6, 9, 10)]


def test_a_stop_commits_the_batch_in_flight_and_reads_no_further() -> None:
    events: list[str] = []
    stage, writer = FakeStage(events=events), FakeWriter()
    stats = EmbedLoop(batched(_records(40), 4), stage, FakeEncoder(events), writer, FakeProgress(),
                      stop=StopAfter(stage, 3)).run()  # type: ignore[arg-type]
    assert stage.batches_read == 3  # nothing read after the stop
    assert writer.closed == 1 and writer.committed_rows == 12 == stats.embedded  # batch 3 was in flight: committed
    assert [p for p, _, _ in writer.rows] == [f"img-{i}" for i in range(12)]


def test_the_writer_is_closed_when_the_encoder_raises() -> None:
    events: list[str] = []
    writer = FakeWriter()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        EmbedLoop(batched(_records(20), 4), FakeStage(events=events), FakeEncoder(events, fail_on=3), writer,
                  FakeProgress()).run()
    # batch 1 was collected when batch 2 went in; batch 2 was in flight when batch 3's submit raised: not collected
    assert writer.closed == 1 and [p for p, _, _ in writer.rows] == [f"img-{i}" for i in range(4)]


def test_the_first_error_surfaces_when_the_commit_fails_too() -> None:
    class LostLease(FakeWriter):
        def close(self) -> None:
            raise PermissionError("the lease was taken over")

    events: list[str] = []
    with pytest.raises(RuntimeError, match="illegal memory access"):
        EmbedLoop(batched(_records(8), 4), FakeStage(events=events), FakeEncoder(events, fail_on=2), LostLease(),
                  FakeProgress()).run()
