"""What reads a version's tables as their bytes arrive, in any order: the ``TableSink`` protocol the table locations are
read into (``job.sources.fill_from_location``, ``loading.fill_from_dir``), and ``TableBuilder``, the part both builders
share (``TablesBuilder`` for the metadata join, ``AnnotationBuilder`` for the eval's annotations): which tables are
still wanted, one parse wrapper that names the file in every error and times the parsing, small tables read whole."""
from __future__ import annotations

import time
from typing import Any, Callable, ClassVar, Protocol

from .jsonstream import CHUNK_BYTES, decode_any
from .schema import TablesError


class TableSink(Protocol):
    """One builder per table version: ``wants`` a table, is fed it (``add``), says what is ``missing``."""

    version: str

    def wants(self, table: str) -> bool: ...

    def missing(self) -> list[str]: ...

    def complete(self) -> bool: ...

    def add(self, table: str, source: bytes | Callable[[int], bytes]) -> None: ...


class TableBuilder:
    """Base of the builders: subclasses name their ``TABLES`` and implement ``wants`` and ``_parse``."""

    TABLES: ClassVar[tuple[str, ...]] = ()
    PARSE_ERRORS: ClassVar[tuple[type[BaseException], ...]] = (ValueError, KeyError, TypeError)
    version: str
    chunk_bytes: int = CHUNK_BYTES
    seconds: float = 0.0

    def wants(self, table: str) -> bool:
        raise NotImplementedError

    def _parse(self, table: str, source: bytes | Callable[[int], bytes]) -> None:
        raise NotImplementedError

    def missing(self) -> list[str]:
        return [t for t in self.TABLES if self.wants(t)]

    def complete(self) -> bool:
        return not self.missing()

    def add(self, table: str, source: bytes | Callable[[int], bytes]) -> None:
        """Parse one table from its bytes or a ``read(n)`` function; tables not needed are ignored."""
        if not self.wants(table):
            return
        t0 = time.perf_counter()
        try:
            self._parse(table, source)
        except TablesError as exc:
            raise TablesError(f"{self.version}/{table}.json: {exc}") from None
        except self.PARSE_ERRORS as exc:
            raise TablesError(f"{self.version}/{table}.json: cannot parse ({type(exc).__name__}: {exc})") from None
        finally:
            self.seconds += time.perf_counter() - t0

    def _whole(self, source: bytes | Callable[[int], bytes]) -> list[dict[str, Any]]:
        """A small table read whole and parsed."""
        data = source if isinstance(source, bytes) else b"".join(iter(lambda: source(self.chunk_bytes), b""))
        rows = decode_any(data)
        if not isinstance(rows, list):
            raise TablesError("not a JSON array")
        return rows
