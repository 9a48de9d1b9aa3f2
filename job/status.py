"""Live status of a run: the ``_STATUS`` document in the run folder, its writer and its reader.

``_STATUS`` (JSON, local or ``s3://``) says what a run is doing now: ``status`` (running, succeeded, failed,
interrupted), ``reason`` (why it stopped), the current ``phase`` and the time every phase began, and during
embedding ``progress`` (done / total / failed, images/s, ETA), refreshed at least once a minute. The
instance script writes the phases before the job starts (check-gpu, scratch, mount, image, weights) and the
final word after it ends; the job writes embed, index, project and publish. Both follow this schema
(``tests/test_rehearsal.py`` reads what the real script writes through :func:`read_status`).

Within one attempt the first terminal status wins: a later writer (a trap, a shutdown) never replaces the
reason already recorded. A new attempt (a new instance resuming the run) starts a fresh document and keeps
the previous one's outcome under ``previous``.
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
from .runfolder import SHARDS_DIR

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

    def progress(self, done: int, total: int | None, failed: int, rate: float, *, force: bool = False) -> None:
        """Embedding progress; written at most every PROGRESS_EVERY_S seconds unless ``force``."""
        t = time.monotonic()
        if not force and t - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = t
        eta = (total - done) / rate if total is not None and rate > 0 and total >= done else None
        with self._lock:
            self.doc["progress"] = {"done": done, "total": total, "failed": failed,
                                    "images_per_s": round(rate, 1), "eta_s": None if eta is None else round(eta),
                                    "at": now()}
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


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_status(doc: dict[str, Any], log_tail: list[str]) -> str:
    """Human-readable status: what, where, progress and ETA, why it stopped, the last log lines."""
    if isinstance(doc.get("shards"), list):
        return format_run_status(doc, log_tail)
    out = [f"status  {doc['status']}" + (f" — {doc['reason']}" if doc.get("reason") else ""),
           f"phase   {doc.get('phase', '?')} (updated {doc.get('updated_at', '?')})"]
    host = ", ".join(str(doc[k]) for k in ("instance_type", "market") if doc.get(k))
    for label, value in (("run", doc.get("run_id")), ("uri", doc.get("run_uri")),
                         ("host", f"{doc['instance_id']}" + (f" ({host})" if host else "") if doc.get("instance_id")
                          else None), ("started", doc.get("started_at"))):
        if value:
            out.append(f"{label:<8}{value}")
    p = doc.get("progress")
    if p:
        total = p.get("total")
        pct = f" ({100 * p['done'] / total:.1f}%)" if total else ""
        out.append(f"images  {p['done']:,}/{total if total is not None else '?':,}{pct}, {p.get('failed', 0)} failed, "
                   f"{p.get('images_per_s', 0)} images/s, ETA {_duration(p.get('eta_s'))}"
                   if isinstance(total, int) else
                   f"images  {p['done']:,} done, {p.get('failed', 0)} failed, {p.get('images_per_s', 0)} images/s")
    phases = doc.get("phases") or []
    if phases:
        out.append("phases  " + " → ".join(f"{ph['phase']} {ph['at'][11:19]}" for ph in phases))
    if doc.get("previous"):
        prev = doc["previous"]
        out.append(f"before  {prev.get('status')}" + (f" — {prev['reason']}" if prev.get("reason") else ""))
    if log_tail:
        out.append("log     " + "\n        ".join(log_tail))
    return "\n".join(out)


# -- a run split into shards (``job run --shard I/N`` into OUTDIR/shards/I/, then ``job merge``) ----------------------

SHARD_KEYS = ("status", "reason", "phase", "progress", "started_at", "updated_at", "previous")


def _shard_indices(run_dir: str) -> list[int]:
    """The shard folders ``OUTDIR/shards/I/`` that exist (none: not a split run)."""
    url = fsutil.join(run_dir.rstrip("/"), SHARDS_DIR)
    try:
        fs, path = fsutil.url_to_fs(url)
        if not fs.exists(path):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except Exception as exc:  # botocore/aiohttp errors: the bucket or the network is unreachable
        raise DataError(f"cannot list {url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return sorted(int(n) for n in names if n.isdigit())


def read_run_status(run_dir: str) -> dict[str, Any]:
    """A run folder's status: its ``_STATUS``, or for a run split into shards (``shards/`` present) every shard's
    and the merge's together (:func:`aggregate`); the merge's is the run folder's own ``_STATUS``, once it runs."""
    try:
        merge: dict[str, Any] | None = read_status(run_dir)
    except UsageError:  # no _STATUS of its own: fine for a split run whose merge has not started
        merge = None
        if not _shard_indices(run_dir):
            raise
    indices = _shard_indices(run_dir)
    if not indices:
        assert merge is not None
        return merge
    docs: dict[int, dict[str, Any] | None] = {}
    for i in indices:
        shard_dir = fsutil.join(run_dir.rstrip("/"), SHARDS_DIR, str(i))
        docs[i] = read_status(shard_dir) if fsutil.exists(status_url(shard_dir)) else None
    return aggregate(docs, merge)


def aggregate(shards: dict[int, dict[str, Any] | None], merge: dict[str, Any] | None) -> dict[str, Any]:
    """One status for a split run: each shard's (``pending`` until its ``_STATUS`` appears) and the merge's.

    ``status`` is the merge's once it runs; before, ``failed`` when a shard failed, ``interrupted`` when no shard
    is left running and one stopped (exit 75: resumable; AWS Batch retries it), else ``running``. ``progress`` sums
    done/total/failed and the running shards' images/s; ``eta_s`` is the slowest running shard's. Both stay
    unknown while a shard has not started or does not know its total (a ``.tgz`` stream learns it at the end).
    """
    count = max([max(shards, default=-1) + 1] + [int(d["shard"][1]) for d in shards.values() if d and d.get("shard")])
    rows: list[dict[str, Any]] = []
    for i in range(count):
        d = shards.get(i)
        rows.append({"index": i, "status": "pending"} if d is None else
                    {"index": i, **{k: d[k] for k in SHARD_KEYS if d.get(k) is not None}})
    states = [r["status"] for r in rows]
    tally = ", ".join(f"{states.count(s)} {s}" for s in ("succeeded", "running", "interrupted", "failed", "pending")
                      if states.count(s))
    first = {s: next((r for r in rows if r["status"] == s), None) for s in ("failed", "interrupted")}
    if merge is not None:
        status, reason = merge["status"], f"merge: {merge['reason']}" if merge.get("reason") else ""
        phase = f"merge: {merge.get('phase', '?')}"
    elif first["failed"] is not None:
        row = first["failed"]
        status, reason, phase = "failed", f"shard {row['index']}: {row.get('reason', '')}".rstrip(": "), "shards"
    elif "running" not in states and "pending" not in states and first["interrupted"] is not None:
        row = first["interrupted"]
        status, reason, phase = "interrupted", f"shard {row['index']}: {row.get('reason', '')}".rstrip(": "), "shards"
    else:
        status, reason = "running", ""
        phase = "merge pending" if states.count("succeeded") == count else "shards"
    progress = [dict(r.get("progress") or {}) for r in rows]
    for r, p in zip(rows, progress):  # an archive stream knows its total only at the end: a finished shard did it all
        if r["status"] == "succeeded" and p and p.get("total") is None:
            p["total"] = p.get("done", 0)
    running = [p for r, p in zip(rows, progress) if r["status"] == "running"]
    etas = [int(p["eta_s"]) for p in running if p.get("eta_s") is not None]
    totals = [int(p["total"]) for p in progress if p.get("total") is not None]
    doc: dict[str, Any] = {
        "schema": SCHEMA, "status": status, "reason": reason, "phase": phase,
        "summary": f"{tally} of {count} shards",
        "shards": rows,
        "merge": None if merge is None else {k: merge.get(k) for k in ("status", "reason", "phase", "phases",
                                                                       "started_at", "updated_at") if k in merge},
        "progress": {
            "done": sum(int(p.get("done", 0)) for p in progress),
            "total": sum(totals) if len(totals) == count else None,
            "failed": sum(int(p.get("failed", 0)) for p in progress),
            "images_per_s": round(sum(float(p.get("images_per_s", 0)) for p in running), 1),
            "eta_s": max(etas) if running and "pending" not in states and len(etas) == len(running) else None,
        },
    }
    updated = [str(d["updated_at"]) for d in [*shards.values(), merge] if d and d.get("updated_at")]
    if updated:
        doc["updated_at"] = max(updated)
    return doc


def _progress_text(p: dict[str, Any]) -> str:
    total = p.get("total")
    if not isinstance(total, int):
        return f"{p.get('done', 0):,} done, {p.get('failed', 0)} failed"
    pct = f" ({100 * p.get('done', 0) / total:.1f}%)" if total else ""
    return f"{p.get('done', 0):,}/{total:,}{pct}, {p.get('failed', 0)} failed"


def format_run_status(doc: dict[str, Any], log_tail: list[str]) -> str:
    """Human-readable status of a split run: the whole, then one line per shard and one for the merge."""
    out = [f"status  {doc['status']}" + (f" — {doc['reason']}" if doc.get("reason") else ""),
           f"phase   {doc.get('phase', '?')}; {doc.get('summary', '')} (updated {doc.get('updated_at', '?')})"]
    p = doc.get("progress") or {}
    line = f"images  {_progress_text(p)}"
    if p.get("images_per_s"):
        line += f", {p['images_per_s']} images/s"
    if p.get("eta_s") is not None:
        line += f", ETA {_duration(p['eta_s'])} (slowest shard)"
    out.append(line)
    for r in doc["shards"]:
        text = f"shard {r['index']:<3} {r['status']:<11}"
        if r["status"] == "running" and r.get("phase"):
            text += f" {r['phase']}"
        if r.get("progress"):
            sp = r["progress"]
            text += f" {_progress_text(sp)}"
            if r["status"] == "running":
                text += f", {sp.get('images_per_s', 0)} images/s, ETA {_duration(sp.get('eta_s'))}"
        if r.get("reason"):
            text += f" — {r['reason']}"
        if r.get("previous"):
            text += f" (earlier attempt: {r['previous'].get('status')})"
        out.append(text)
    m = doc.get("merge")
    if m is None:
        out.append("merge     not started (it runs once every shard succeeded)")
    else:
        phases = " → ".join(f"{ph['phase']} {ph['at'][11:19]}" for ph in m.get("phases") or [])
        out.append(f"merge     {m['status']:<11} {m.get('phase', '')}" + (f" — {m['reason']}" if m.get("reason") else "")
                   + (f" ({phases})" if phases else ""))
    if log_tail:
        out.append("log     " + "\n        ".join(log_tail))
    return "\n".join(out)
