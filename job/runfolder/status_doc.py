"""``_STATUS``'s typed shape (:class:`StatusDoc` and its parts): what a run is doing now and why it stopped, read and
written only through :mod:`job.status`. Its keys are a contract with the instance script (``cdk/scripts/user_data.sh``
via ``job/status/rules.py``), so they are spelled as stored, never renamed: these documents are :class:`Typed`, not
the manifest's ``Doc`` (whose keys ``documents.JSON_KEYS`` may rename)."""
from __future__ import annotations

from .documents import Typed


class PhaseMark(Typed):
    """A phase and when it began."""

    phase: str
    at: str


class Progress(Typed):
    """Embedding progress: done of total (exact, or ``total_estimated`` for a stream), images/s, ETA."""

    done: int = 0
    total: int | None = None
    failed: int = 0
    images_per_s: float = 0.0
    eta_s: int | None = None
    at: str = ""
    total_estimated: int | None = None


class Previous(Typed):
    """The outcome of the attempt before this one."""

    status: str | None = None
    reason: str | None = None
    phase: str | None = None
    updated_at: str | None = None


class Waiting(Typed):
    """A writer that found the output held by a live one and left (``status_rules`` rule 5)."""

    at: str
    host: str
    reason: str


class StatusDoc(Typed):
    """``_STATUS``: what a run is doing now and why it stopped (``job.status``; the merge rules: ``job.status.rules``).

    Its keys are a contract with the instance script (``cdk/scripts/user_data.sh`` via ``job/status/rules.py``), so
    they are spelled as stored and never renamed."""

    status: str
    reason: str = ""
    schema: int = 1
    started_at: str = ""
    attempt: str = ""
    phase: str | None = None
    phases: list[PhaseMark] = []
    progress: Progress | None = None
    previous: Previous | None = None
    shard: list[int] | None = None
    updated_at: str | None = None
    waiting: Waiting | None = None
    # written by the instance script (cdk/scripts/user_data.sh)
    run_id: str | None = None
    run_uri: str | None = None
    instance_id: str | None = None
    instance_type: str | None = None
    market: str | None = None
    data_source: str | None = None  # how the instance reached the dataset: the s3fs mount, or S3 directly and why
