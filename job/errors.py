"""The job's error types: one for bad input (exit 2), one for bad data or a failed step (exit 1).

Library code raises these and never ``SystemExit``; only the CLI turns them into exit codes.
"""
from __future__ import annotations


class JobError(Exception):
    """Base of the job's own errors; ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class UsageError(JobError, ValueError):
    """Bad user input (an option, a path that holds no run, a wrong choice): exit 2, nothing written."""

    exit_code = 2


class NotFound(UsageError):
    """A thing the user named is not there (an id that is not in the run, a run folder without embeddings): exit 2,
    and a 404 on the search page."""


class DataError(JobError, RuntimeError):
    """The data or a step failed (no image could be embedded, an index that does not match): exit 1, reason logged."""

    exit_code = 1


class StorageError(DataError):
    """S3 (or the network) kept failing after every retry: one line naming the operation and the URL; committed parts
    are kept and the same command resumes. Exit 1."""


class Interrupted(JobError):
    """A graceful stop (SIGTERM/SIGINT): committed shards are kept and the same command resumes. Exit 75
    (EX_TEMPFAIL, "try again"), distinct from success, bad input and failure, so a scheduler can retry it."""

    exit_code = 75
