"""The merge rules of ``_STATUS``, in one place, for both of its writers: the job (``job.status.StatusWriter``) and
the instance script (``cdk/scripts/user_data.sh`` runs this file with the instance's ``python3``; it is shipped
beside the script as a CDK asset). Standard library only: the instance has no project environment.

The document is a JSON object (typed on the job's side as ``job.runfolder.status_doc.StatusDoc``). The rules:

1. **One attempt** is one ``(started_at, attempt)`` pair. A writer continues the document of its own attempt and
   never rewrites another attempt's.
2. **A new attempt** (a new instance, a resumed run) starts a fresh document (``status: running``) and keeps the
   previous attempt's outcome under ``previous``.
3. **The first terminal status wins**: once an attempt is succeeded, failed or interrupted, a later writer (a trap, a
   shutdown) keeps that status and reason; only a ``force`` (the instance script recording the stop reason it saw
   before the job ended, e.g. a spot notice) replaces it, and a writer that finds its attempt already terminal in
   the stored copy adopts it.
4. **Phases** are appended with their time when the phase changes.
5. **A writer turned away** by a live lease on the output (``job.runfolder.lease``) changes nothing but a ``waiting`` note in
   the holder's document (who came, when, why it left); the holder keeps that note when it writes next.

Command lines (the instance script)::

    python3 status_rules.py MINE STORED STATUS REASON PHASE FORCE
    python3 status_rules.py note STORED HOST REASON
    python3 status_rules.py lease LEASE TIMEOUT_S

The first: MINE is this attempt's local copy (created when missing, rewritten in place); STORED the copy S3 holds now
(empty or missing: none). STATUS is running|succeeded|failed|interrupted, PHASE may be empty, FORCE is ``force`` or
empty. The environment gives STARTED_AT and ATTEMPT (this attempt) and RUN_ID, RUN_URI, INSTANCE_ID, INSTANCE_TYPE,
MARKET, DATA_SOURCE (how the dataset is read: the s3fs mount, or S3 directly and why). ``note`` adds rule 5's
``waiting`` note to STORED in place. ``lease`` reads a copy of the run's ``_LEASE`` (``job.runfolder.lease``'s format)
and prints who holds it when it is live (its heartbeat younger than TIMEOUT_S), nothing when
it is stale or unreadable: the instance script waits while another writer works on the run.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any, Optional

SCHEMA = 1
STATES = ("running", "succeeded", "failed", "interrupted")
TERMINAL = frozenset(STATES[1:])
PREVIOUS_KEYS = ("status", "reason", "phase", "updated_at")
INSTANCE_KEYS = ("RUN_ID", "RUN_URI", "INSTANCE_ID", "INSTANCE_TYPE", "MARKET", "DATA_SOURCE")

Doc = dict  # a _STATUS document as JSON gives it


def now() -> str:
    """UTC timestamp as written in ``_STATUS`` (one-second resolution)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_status(doc: Any) -> bool:
    """Whether ``doc`` is a status document at all (an object with a known status)."""
    return isinstance(doc, dict) and doc.get("status") in STATES


def same_attempt(a: Optional[Doc], b: Optional[Doc]) -> bool:
    """Rule 1: two documents of one attempt have the same start and the same ``attempt`` id."""
    if a is None or b is None:
        return False
    return (a.get("started_at"), a.get("attempt")) == (b.get("started_at"), b.get("attempt"))


def start(started_at: str, attempt: str, stored: Optional[Doc]) -> Doc:
    """Rule 2: the first document of a new attempt; the stored one's outcome becomes ``previous``."""
    doc: Doc = {"schema": SCHEMA, "status": "running", "reason": "", "started_at": started_at, "attempt": attempt,
                "phases": []}
    if is_status(stored):
        assert stored is not None
        doc["previous"] = {k: stored.get(k) for k in PREVIOUS_KEYS}
    return doc


def current(mine: Optional[Doc], stored: Optional[Doc], started_at: str, attempt: str) -> Doc:
    """This attempt's document: the stored copy when it is this attempt's (another writer of the attempt may have
    added to it), else our own, else a new one (rule 2)."""
    if mine is None:
        return start(started_at, attempt, stored)
    if is_status(stored) and same_attempt(stored, mine):
        assert stored is not None
        return stored
    return mine


def adopt(doc: Doc, stored: Optional[Doc]) -> Doc:
    """What another writer recorded in this same attempt's stored copy: its terminal status (rule 3) and a
    ``waiting`` note (rule 5)."""
    if not (is_status(stored) and same_attempt(stored, doc)):
        return doc
    assert stored is not None
    if doc.get("status") not in TERMINAL and stored.get("status") in TERMINAL:
        doc["status"], doc["reason"] = stored["status"], stored.get("reason", "")
    if stored.get("waiting") and stored.get("waiting") != doc.get("waiting"):
        doc["waiting"] = stored["waiting"]
    return doc


def note_waiting(stored: Doc, host: str, reason: str, at: Optional[str] = None) -> Doc:
    """Rule 5: a writer that found the output held by a live writer (``job.runfolder.lease``) leaves without touching the run,
    recording why in the holder's document (``waiting``); the holder's status stays as it is."""
    stored["waiting"] = {"at": at or now(), "host": host, "reason": reason}
    return stored


def enter_phase(doc: Doc, phase: str, at: Optional[str] = None) -> Doc:
    """Rule 4: a new phase begins (nothing changes when it is the current one)."""
    if phase and doc.get("phase") != phase:
        doc["phase"] = phase
        doc.setdefault("phases", []).append({"phase": phase, "at": at or now()})
    return doc


def settle(doc: Doc, status: str, reason: str = "", *, force: bool = False) -> Doc:
    """Rule 3: record how the attempt ended, unless it already ended (``force``: record it anyway)."""
    if status not in STATES:
        raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATES)}")
    if status != "running" and (doc.get("status") not in TERMINAL or force):
        doc["status"], doc["reason"] = status, reason
    return doc


def lease_holder(lease: Any, timeout_s: float, at: Optional[datetime.datetime] = None) -> Optional[str]:
    """Who holds a live lease (``job.runfolder.lease``'s JSON: owner, host, pid, heartbeat), as one phrase; None when it is
    stale or unreadable."""
    try:
        beat = datetime.datetime.fromisoformat(str(lease["heartbeat"]))
        age = ((at or datetime.datetime.now(datetime.timezone.utc)) - beat).total_seconds()
        owner, host, pid = str(lease["owner"]), str(lease["host"]), int(lease["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if age >= timeout_s:
        return None
    return f"attempt {owner} on host {host} (pid {pid}), last heartbeat {max(0, age):.0f} s ago"


def _load(path: str) -> Optional[Doc]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def instance_update(mine_path: str, stored_path: str, status: str, reason: str, phase: str, force: bool,
                    env: Any) -> Doc:
    """What the instance script does on every status change: continue this attempt's document (or start one),
    stamp the instance's fields, apply the phase and the status, and rewrite ``mine_path``."""
    stored = _load(stored_path)
    doc = current(_load(mine_path), stored if is_status(stored) else None, env["STARTED_AT"], env["ATTEMPT"])
    doc.update({k.lower(): env[k] for k in INSTANCE_KEYS if env.get(k)})
    enter_phase(doc, phase)
    settle(doc, status, reason, force=force)
    doc["updated_at"] = now()
    _write(mine_path, doc)
    return doc


USAGE = ("usage: status_rules.py MINE STORED STATUS REASON PHASE FORCE | status_rules.py note STORED HOST REASON | "
         "status_rules.py lease LEASE TIMEOUT_S")


def _write(path: str, doc: Doc) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    """The command lines of the module docstring; exit 0 done, 1 failed, 2 bad usage."""
    try:
        if len(argv) == 4 and argv[0] == "note":
            stored = _load(argv[1])
            if is_status(stored):
                assert stored is not None
                _write(argv[1], note_waiting(stored, argv[2], argv[3]))
            return 0
        if len(argv) == 3 and argv[0] == "lease":
            holder = lease_holder(_load(argv[1]) or {}, float(argv[2]))
            if holder:
                print(holder)
            return 0
        if len(argv) == 6:
            mine, stored_path, status, reason, phase, force = argv
            instance_update(mine, stored_path, status, reason, phase, force == "force", os.environ)
            return 0
    except (KeyError, ValueError, OSError) as exc:
        print(f"status_rules.py: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
