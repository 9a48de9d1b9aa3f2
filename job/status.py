"""Live status of a run: the ``_STATUS`` document in the run folder, its writer and its reader.

``_STATUS`` (JSON, local or ``s3://``) says what a run is doing now: ``status`` (running, succeeded, failed,
interrupted), ``reason`` (why it stopped), the current ``phase`` and the time every phase began, and during
embedding ``progress`` (done / total / failed, images/s, ETA; ``total_estimated`` while a ``.tgz`` stream's total is
unknown), refreshed at least once a minute. The
instance script writes the phases before the job starts (check-gpu, scratch, mount, image, weights) and the
final word after it ends; the job writes embed, index, project and publish. Both follow this schema
(``tests/test_rehearsal.py`` reads what the real script writes through :func:`read_status`).

Within one attempt the first terminal status wins: a later writer (a trap, a shutdown) never replaces the
reason already recorded. A new attempt (a new instance resuming the run) starts a fresh document and keeps
the previous one's outcome under ``previous``. What ``job status`` prints from it: :mod:`job.status_view`.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import fsutil
from .errors import DataError, UsageError

log = logging.getLogger(__name__)

STATUS_FILE = "_STATUS"
BOOTSTRAP_LOG = "_bootstrap.log"
SCHEMA = 1
STATES = ("running", "succeeded", "failed", "interrupted")
TERMINAL = frozenset(STATES[1:])
PROGRESS_EVERY_S = 30.0  # at least twice per minute during embedding


def now() -> str:
    """UTC timestamp as written in ``_STATUS``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_url(run_dir: str) -> str:
    """Where a run folder's ``_STATUS`` lives."""
    return fsutil.join(run_dir, STATUS_FILE)


@dataclass
class StatusWriter:
    """Keeps a run's ``_STATUS`` current; every write is one atomic PUT/rename. Failures to write only warn."""

    run_dir: str
    doc: dict[str, Any] = field(default_factory=dict)
    _last_progress: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, run_dir: str, shard: tuple[int, int] | None = None) -> StatusWriter:
        """Continue the document the instance script started for this attempt, or start one. A shard's document
        says which of how many it is (``shard: [I, N]``), so the run's status knows N before every shard started."""
        w = cls(run_dir)
        try:
            current = read_status(run_dir) if fsutil.exists(status_url(run_dir)) else None
        except (DataError, OSError) as exc:
            log.warning("ignoring unreadable %s (%s)", status_url(run_dir), exc)
            current = None
        if current is not None and current.get("status") == "running":
            w.doc = current
        else:
            w.doc = {"schema": SCHEMA, "status": "running", "reason": "", "started_at": now(),
                     "attempt": uuid.uuid4().hex[:12], "phases": []}
            if current is not None:
                w.doc["previous"] = {k: current.get(k) for k in ("status", "reason", "phase", "updated_at")}
        if shard is not None:
            w.doc["shard"] = list(shard)
        return w

    def phase(self, name: str) -> None:
        """A new phase begins."""
        with self._lock:
            self.doc["phase"] = name
            self.doc.setdefault("phases", []).append({"phase": name, "at": now()})
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
                             "eta_s": None if eta is None else round(eta), "at": now()}
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
            self._adopt_terminal()
            if self.doc.get("status") in TERMINAL:
                return
            self.doc["status"], self.doc["reason"] = status, reason
            self._write()

    def _adopt_terminal(self) -> None:
        """Take over a terminal status another writer recorded for this same attempt."""
        if self.doc.get("status") in TERMINAL:
            return
        try:
            stored = read_status(self.run_dir)
        except (UsageError, DataError):
            return
        if same_attempt(stored, self.doc) and stored.get("status") in TERMINAL:
            self.doc["status"], self.doc["reason"] = stored["status"], stored.get("reason", "")

    def _write(self) -> None:
        self._adopt_terminal()
        self.doc["updated_at"] = now()
        try:
            fsutil.atomic_write_bytes(status_url(self.run_dir), (json.dumps(self.doc, indent=1) + "\n").encode())
        except OSError as exc:  # status is best effort: never stop a run over it
            log.warning("could not write %s: %s", status_url(self.run_dir), exc)


def same_attempt(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two documents belong to one attempt: same start and same ``attempt`` id (the instance script's
    ``<time>-<instance-id>``, or the job's own); the start alone has one-second resolution."""
    return (a.get("started_at"), a.get("attempt")) == (b.get("started_at"), b.get("attempt"))


def read_status(run_dir: str) -> dict[str, Any]:
    """The ``_STATUS`` of a run folder: UsageError when there is none, DataError when it is not a status document."""
    url = status_url(run_dir.rstrip("/"))
    try:
        fs, path = fsutil.url_to_fs(url)
        if not fs.exists(path):
            raise UsageError(f"{run_dir} holds no run status ({STATUS_FILE} not found): not a run folder, or the run "
                             "has not started yet")
        data = fs.cat_file(path)
    except (UsageError, DataError):
        raise
    except Exception as exc:  # botocore/aiohttp errors: the bucket or the network is unreachable
        raise DataError(f"cannot read {url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise DataError(f"{url} is corrupt (not JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("status") not in STATES:
        raise DataError(f"{url} is corrupt (no valid status; valid: {', '.join(STATES)})")
    return doc


def read_log_tail(run_dir: str, lines: int = 10) -> list[str]:
    """The last ``lines`` lines of the run's bootstrap log (the instance script's), if it is there."""
    try:
        fs, path = fsutil.url_to_fs(fsutil.join(run_dir.rstrip("/"), BOOTSTRAP_LOG))
        if not fs.exists(path):
            return []
        text = fs.cat_file(path).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the log is a courtesy; the status says what matters
        return []
    return text.splitlines()[-lines:]
