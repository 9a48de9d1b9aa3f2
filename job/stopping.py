"""Graceful stop: SIGTERM / SIGINT ask the runner to stop reading, commit what is embedded, and exit 75.

``docker stop``, ``timeout``, a spot interruption (the instance script forwards it) and Ctrl-C all send
SIGTERM or SIGINT. The first one sets a flag the embed loop checks after every batch: it stops reading,
collects the batch in flight, commits the buffered rows as one more shard, and raises
:class:`~job.errors.Interrupted`; the same command resumes later. A second signal stops at once
(committed shards are safe either way; an uncommitted shard is simply embedded again).
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from .errors import Interrupted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A context manager that turns SIGTERM/SIGINT into a flag (main thread only; elsewhere it does nothing)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._saved.items():
            signal.signal(s, handler)
        self._saved.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            raise Interrupted(f"stopped by a second {signal.Signals(signum).name}")
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: finishing the batch in flight, committing, then stopping (exit %d)",
                    self.signal_name, Interrupted.exit_code)
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def check(self, where: str) -> None:
        """Raise Interrupted when a stop was asked for (between steps)."""
        if self.event.is_set():
            raise Interrupted(f"stopped by {self.signal_name} {where}; committed shards are kept, the same command "
                              "resumes")
