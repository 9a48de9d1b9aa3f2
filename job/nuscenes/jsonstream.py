"""Streamed JSON: a big JSON array of flat objects cut into small valid arrays as its bytes arrive, and parsed.

msgspec parses when it is installed (fast, and decodes sample_data straight into slim typed rows),
the standard library otherwise.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator

from .schema import TablesError

try:  # msgspec: ~10x faster than json and decodes straight into slim typed rows
    import msgspec
except ImportError:  # pragma: no cover - exercised only where msgspec is missing
    msgspec = None  # type: ignore[assignment]

CHUNK_BYTES = 8 << 20
_WS = frozenset(b" \t\r\n")

if msgspec is not None:
    class _SampleDataRow(msgspec.Struct):
        """The sample_data fields the join uses; the others are skipped by the decoder."""

        token: str
        sample_token: str
        calibrated_sensor_token: str
        filename: str
        timestamp: int
        is_key_frame: bool
        ego_pose_token: str = ""
        prev: str = ""

    class _EgoPoseRow(msgspec.Struct):
        """The ego_pose fields the join uses."""

        token: str
        timestamp: int
        translation: list[float]

    _SD_DECODER = msgspec.json.Decoder(list[_SampleDataRow])
    _EP_DECODER = msgspec.json.Decoder(list[_EgoPoseRow])
    _ANY_DECODER = msgspec.json.Decoder()


def decode_any(data: bytes | bytearray) -> Any:
    """Parse one JSON document."""
    if msgspec is not None:
        return _ANY_DECODER.decode(data)
    return json.loads(data)


def decode_sample_data(data: bytes | bytearray, keep: Callable[[str], bool],
                       image: Callable[[str], bool]) -> tuple[int, list[tuple[Any, ...]], list[tuple[str, str]]]:
    """(rows parsed, kept rows as (token, sample_token, calibrated_sensor_token, filename, timestamp, is_key_frame,
    ego_pose_token, prev), (token, ego_pose_token) of every ``image`` row: a kept frame's predecessor may be one
    the filter drops, and its pose is still needed for the speed)."""
    if msgspec is not None:
        rows = _SD_DECODER.decode(data)
        return (len(rows), [(r.token, r.sample_token, r.calibrated_sensor_token, r.filename, r.timestamp,
                             r.is_key_frame, r.ego_pose_token, r.prev) for r in rows if keep(r.filename)],
                [(r.token, r.ego_pose_token) for r in rows if image(r.filename)])
    rows = json.loads(data)
    return (len(rows), [(r["token"], r["sample_token"], r["calibrated_sensor_token"], r["filename"],
                         int(r["timestamp"]), bool(r["is_key_frame"]), r.get("ego_pose_token", ""), r.get("prev", ""))
                        for r in rows if keep(r["filename"])],
            [(r["token"], r.get("ego_pose_token", "")) for r in rows if image(r["filename"])])


def decode_ego_pose(data: bytes | bytearray) -> list[tuple[str, int, float, float]]:
    """ego_pose rows as (token, timestamp, x, y)."""
    if msgspec is not None:
        return [(r.token, r.timestamp, float(r.translation[0]), float(r.translation[1]))
                for r in _EP_DECODER.decode(data)]
    return [(r["token"], int(r["timestamp"]), float(r["translation"][0]), float(r["translation"][1]))
            for r in json.loads(data)]


def _last_boundary(buf: bytearray) -> tuple[int, int] | None:
    """(index of ``}``, index of ``,``) of the last ``}<whitespace>,`` in ``buf``: the end of a row."""
    pos = len(buf)
    while True:
        comma = buf.rfind(b",", 0, pos)
        if comma < 0:
            return None
        j = comma - 1
        while j >= 0 and buf[j] in _WS:
            j -= 1
        if j >= 0 and buf[j] == 0x7D:  # "}"
            return j, comma
        pos = comma


def iter_array_slices(read: Callable[[int], bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes | bytearray]:
    """Cut a JSON array of flat objects, read ``chunk_bytes`` at a time, into smaller valid JSON arrays.

    Each slice ends at the last ``}`` followed by ``,`` seen so far (an object boundary: nuScenes
    rows hold no nested objects, and no string value contains ``}`` then ``,``), so at most one
    slice plus one read is in memory at a time. Parsing each slice stays exact; a malformed file still fails to parse.
    """
    buf = bytearray()
    started = False
    while True:
        data = read(chunk_bytes)
        buf += data
        if not started:
            stripped = buf.lstrip()
            if stripped:
                if not stripped.startswith(b"["):
                    raise TablesError("not a JSON array")
                del buf[: len(buf) - len(stripped) + 1]
                started = True
        if not data:
            tail = bytes(buf).rstrip()
            if tail.endswith(b"]"):
                tail = tail[:-1]
            elif started:
                raise TablesError("JSON array is not closed (file truncated?)")
            if tail.strip():
                yield b"[" + tail + b"]"
            return
        cut = _last_boundary(buf) if started else None
        if cut is not None:
            close, comma = cut
            piece = bytearray(b"[")
            piece += memoryview(buf)[: close + 1]
            piece += b"]"
            del buf[: comma + 1]
            yield bytes(piece) if msgspec is None else piece  # msgspec parses a bytearray in place


def reader_of(source: bytes | Callable[[int], bytes]) -> Callable[[int], bytes]:
    """A ``read(n)`` function over ``source``: bytes in memory, or already such a function."""
    if callable(source):
        return source
    view = memoryview(source)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = bytes(view[pos: pos + n])
        pos += len(out)
        return out

    return read
