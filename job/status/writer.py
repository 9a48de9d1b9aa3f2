"""Live status of a run: the ``_STATUS`` document in the run folder (``RunLayout.status``), its writer and reader.

``_STATUS`` (JSON, local or ``s3://``; typed as :class:`~job.runfolder.status_doc.StatusDoc`) says what a run is doing now:
``status`` (running, succeeded, failed, interrupted), ``reason`` (why it stopped), the current ``phase`` and the time
every phase began, and during embedding ``progress`` (done / total / failed, images/s, ETA; ``total_estimated`` while
a ``.tgz`` stream's total is unknown), refreshed at least twice a minute. The instance script writes the phases
before the job starts (check-gpu, scratch, mount, image, weights) and the final word after it ends; the job writes
embed, index, project and publish. Both apply the same merge rules, :mod:`job.status.rules` (one attempt, first
terminal status wins, the previous attempt's outcome kept). What ``job status`` prints from it: :mod:`job.status.view`.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import fsutil
from ..errors import DataError, UsageError
from ..runfolder import STATUS_FILE, RunLayout
from ..runfolder.documents import decode
from ..runfolder.status_doc import StatusDoc
from . import rules as status_rules

log = logging.getLogger(__name__)

SCHEMA = status_rules.SCHEMA
STATES = status_rules.STATES
TERMINAL = status_rules.TERMINAL
PROGRESS_EVERY_S = 30.0  # at least twice per minute during embedding


@dataclass
class StatusWriter:
    """Keeps a run's ``_STATUS`` current; every write is one atomic PUT/rename. Failures to write only warn."""

    run_dir: str
    doc: dict[str, Any] = field(default_factory=dict)
    _last_progress: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return RunLayout(self.run_dir).status

    @classmethod
    def open(cls, run_dir: str, shard: tuple[int, int] | None = None) -> StatusWriter:
        """Continue the document the instance script started for this attempt (a running one), or start a new
        attempt. A shard's document says which of how many it is (``shard: [I, N]``), so the run's status knows N
        before every shard started."""
        w = cls(run_dir)
        try:
            stored = _read_dict(w.url)
        except (DataError, OSError) as exc:
            log.warning("ignoring unreadable %s (%s)", w.url, exc)
            stored = None
        if stored is not None and stored.get("status") == "running":
            w.doc = stored
        else:
            w.doc = status_rules.start(status_rules.now(), uuid.uuid4().hex[:12], stored)
        if shard is not None:
            w.doc["shard"] = list(shard)
        return w

    def phase(self, name: str) -> None:
        """A new phase begins."""
        with self._lock:
            status_rules.enter_phase(self.doc, name)
            self._write()

    def progress(self, done: int, total: int | None, failed: int, rate: float, *,
                 estimated_total: int | None = None, force: bool = False) -> None:
        """Embedding progress; written at most every PROGRESS_EVERY_S seconds unless ``force``. ``total`` is exact or
        None; a stream that learns its size at the end gives ``estimated_total`` instead, and the ETA comes from it."""
        t = time.monotonic()
        if not force and t - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = t
        goal = total if total is not None else None if estimated_total is None else max(estimated_total, done)
        eta = (goal - done) / rate if goal is not None and rate > 0 and goal >= done else None
        p: dict[str, Any] = {"done": done, "total": total, "failed": failed, "images_per_s": round(rate, 1),
                             "eta_s": None if eta is None else round(eta), "at": status_rules.now()}
        if total is None and goal is not None:
            p["total_estimated"] = goal
        with self._lock:
            self.doc["progress"] = p
            self._write()

    def finish(self, status: str, reason: str = "") -> None:
        """The attempt ends; the first terminal status and reason of an attempt are kept (also one the instance
        script recorded meanwhile, e.g. a spot notice before it stopped the container)."""
        assert status in TERMINAL, status
        with self._lock:
            self._adopt()
            if self.doc.get("status") in TERMINAL:
                return
            status_rules.settle(self.doc, status, reason)
            self._write()

    def _adopt(self) -> None:
        try:
            stored = _read_dict(self.url)
        except (DataError, OSError):
            return
        status_rules.adopt(self.doc, stored)

    def _write(self) -> None:
        self._adopt()
        self.doc["updated_at"] = status_rules.now()
        try:
            fsutil.atomic_write_bytes(self.url, (json.dumps(self.doc, indent=1) + "\n").encode())
        except OSError as exc:  # status is best effort: never stop a run over it
            log.warning("could not write %s: %s", self.url, exc)


def note_waiting(run_dir: str, reason: str) -> None:
    """This writer found the output held by a live writer and leaves: say so in the run's ``_STATUS`` (a ``waiting``
    note in the holder's document, its status unchanged; ``status_rules`` rule 5). Best effort."""
    import platform

    url = RunLayout(run_dir).status
    try:
        stored = _read_dict(url)
        if stored is not None:
            status_rules.note_waiting(stored, platform.node(), reason)
            fsutil.atomic_write_bytes(url, (json.dumps(stored, indent=1) + "\n").encode())
    except (DataError, OSError) as exc:
        log.warning("could not note in %s why this writer left: %s", url, exc)


def _read_dict(url: str) -> dict[str, Any] | None:
    """The stored document as JSON gives it (None when there is none); DataError when it is not a status document."""
    try:
        fs, path = fsutil.url_to_fs(url)
        if not fs.exists(path):
            return None
        data = fs.cat_file(path)
    except Exception as exc:  # botocore/aiohttp errors: the bucket or the network is unreachable
        raise DataError(f"cannot read {url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise DataError(f"{url} is corrupt (not JSON: {exc})") from None
    if not status_rules.is_status(doc):
        raise DataError(f"{url} is corrupt (no valid status; valid: {', '.join(STATES)})")
    return dict(doc)


def read_status(run_dir: str) -> StatusDoc:
    """The ``_STATUS`` of a run folder: UsageError when there is none, DataError when it is not a status document."""
    url = RunLayout(run_dir.rstrip("/")).status
    doc = _read_dict(url)
    if doc is None:
        raise UsageError(f"{run_dir} holds no run status ({STATUS_FILE} not found): not a run folder, or the run "
                         "has not started yet")
    return decode(doc, StatusDoc, url, "status document")


def read_log_tail(run_dir: str, lines: int = 10) -> list[str]:
    """The last ``lines`` lines of the run's bootstrap log (the instance script's), if it is there."""
    try:
        fs, path = fsutil.url_to_fs(RunLayout(run_dir.rstrip("/")).bootstrap_log)
        if not fs.exists(path):
            return []
        text = fs.cat_file(path).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the log is a courtesy; the status says what matters
        return []
    return text.splitlines()[-lines:]
