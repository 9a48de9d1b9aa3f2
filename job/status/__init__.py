"""The ``_STATUS`` contract: what a run is doing now and why it stopped. ``writer`` (the job's ``StatusWriter`` and
the reader), ``rules`` (the merge rules: standard library only, also run by the instance script as a shipped file, so
it imports nothing of the job), ``view`` (what ``job status`` shows: a split run's shards summed, AWS Batch's notes).

May import: the ground floor (``job.errors``, ``job.values``, ``job.config``, ``job.fsutil``) and ``job.runfolder``.
"""
from __future__ import annotations

from .view import aggregate, format_run_status, format_status, read_run_status
from .writer import STATES, TERMINAL, StatusWriter, note_waiting, read_log_tail, read_status

__all__ = ["STATES", "TERMINAL", "StatusWriter", "aggregate", "format_run_status", "format_status",
           "note_waiting", "read_log_tail", "read_run_status", "read_status"]
