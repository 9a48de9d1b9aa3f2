"""What ``job status`` shows: a run split into shards seen as one (:func:`aggregate` of every shard's ``_STATUS`` and
the merge's) and the human-readable text of a status document. The documents themselves, their writer and their
reader are :mod:`job.status`'s."""
from __future__ import annotations

import json
import logging
from typing import Any

from .. import fsutil
from ..errors import DataError, UsageError
from ..runfolder import RunLayout, StatusDoc
from .writer import SCHEMA, read_status


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
                          else None), ("data", doc.get("data_source")), ("started", doc.get("started_at"))):
        if value:
            out.append(f"{label:<8}{value}")
    p = doc.get("progress")
    if p:
        line = f"images  {_progress_text(p)}, {p.get('images_per_s', 0)} images/s"
        if p.get("eta_s") is not None and doc.get("status") == "running":
            line += f", ETA {_duration(p['eta_s'])}" + (" (estimated from the bytes read)"
                                                         if p.get("total_estimated") is not None else "")
        out.append(line)
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
log = logging.getLogger(__name__)


def _shard_indices(run_dir: str) -> list[int]:
    """The shard folders ``OUTDIR/shards/I/`` that exist (none: not a split run)."""
    url = RunLayout(run_dir.rstrip("/")).shards_dir
    try:
        fs, path = fsutil.url_to_fs(url)
        if not fs.exists(path):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except Exception as exc:  # botocore/aiohttp errors: the bucket or the network is unreachable
        raise DataError(f"cannot list {url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return sorted(int(n) for n in names if n.isdigit())


def _batch_notes(run_dir: str) -> dict[str, dict[str, Any]]:
    """The run's Batch notes by name (``shard-<I>``, ``merge``); none outside AWS Batch."""
    url = RunLayout(run_dir.rstrip("/")).batch_notes_dir
    try:
        fs, path = fsutil.url_to_fs(url)
        if not fs.exists(path):
            return {}
        files = [f for f in fs.ls(path, detail=False) if f.endswith(".json")]
        texts = {f.rstrip("/").rsplit("/", 1)[-1][: -len(".json")]: fs.cat_file(f) for f in files}
    except Exception as exc:  # botocore/aiohttp errors: the bucket or the network is unreachable
        raise DataError(f"cannot read {url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    parsed = {name: _json_object(f"{url}/{name}.json", text) for name, text in texts.items()}
    return {name: doc for name, doc in parsed.items() if doc is not None}


def _json_object(url: str, text: bytes) -> dict[str, Any] | None:
    """A note's JSON object, or None (logged) when it is not one."""
    try:
        doc = json.loads(text)
    except ValueError:
        log.warning("ignoring %s: not JSON", url)
        return None
    return doc if isinstance(doc, dict) else None


def _launch_note(run_dir: str) -> dict[str, Any] | None:
    """The group's latest failed launch (``_launch.json``, written outside the job), or None."""
    url = RunLayout(run_dir.rstrip("/")).launch_note
    if not fsutil.exists(url):
        return None
    try:
        note = fsutil.read_json(url)
    except ValueError:  # a torn or foreign file: the run's own _STATUS still says what it knows
        log.warning("ignoring %s: not JSON", url)
        return None
    return note if isinstance(note, dict) else None


def waiting_for_capacity(doc: dict[str, Any] | None, note: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run as ``waiting``, when its group's latest failed launch (``_launch.json``, ``RunLayout.launch_note``) is newer
    than anything its instances wrote and the run has not succeeded: no instance runs, and AWS says why (no capacity
    for any allowed type, the G/VT quota, an AZ without the type). None when the note does not apply."""
    if not note or not note.get("at"):
        return None
    if doc is not None and (doc.get("status") == "succeeded" or str(doc.get("updated_at") or "") >= str(note["at"])):
        return None
    where = f" in {note['az']}" if note.get("az") else ""
    waiting: dict[str, Any] = {
        "status": "waiting", "phase": "launch", "updated_at": note["at"], "launch": note,
        "reason": f"waiting for capacity: the group's last launch{where} failed at {note['at']}: "
                  f"{note.get('message') or note.get('cause') or 'no reason given'}",
    }
    if doc is not None:
        waiting["previous"] = {k: doc.get(k) for k in ("status", "reason", "phase", "updated_at")}
        waiting.update({k: doc[k] for k in ("run_id", "run_uri", "started_at") if doc.get(k)})
    return waiting


def _batch_reason(note: dict[str, Any]) -> str:
    return f"AWS Batch: {note.get('statusReason') or 'the job failed'}"


def read_run_status(run_dir: str) -> dict[str, Any]:
    """What ``job status`` shows of a run folder, as JSON-able data: its ``_STATUS``, or for a run split into shards
    (``shards/`` present) every shard's and the merge's together (:func:`aggregate`); the merge's is the run folder's
    own ``_STATUS``, once it runs."""
    missing: UsageError | None = None
    try:
        merge: StatusDoc | None = read_status(run_dir)
    except UsageError as exc:  # no _STATUS of its own: not a run, or a split run whose merge has not started
        merge, missing = None, exc
    indices = _shard_indices(run_dir)
    notes = _batch_notes(run_dir) if indices or merge is None else {}
    if not indices and not notes:
        doc = merge.to_dict() if merge is not None else None
        waiting = waiting_for_capacity(doc, _launch_note(run_dir))
        if waiting is not None:
            return waiting
        if doc is None:
            assert missing is not None
            raise missing
        return doc
    root = RunLayout(run_dir.rstrip("/"))
    docs: dict[int, StatusDoc | None] = {}
    for i in indices:
        try:
            docs[i] = read_status(root.shard(i).run_dir)
        except UsageError:  # that shard has not started
            docs[i] = None
    return aggregate(docs, merge, notes)


def aggregate(shard_docs: dict[int, StatusDoc | None], merge_doc: StatusDoc | None,
              notes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One status for a split run: each shard's (``pending`` until its ``_STATUS`` appears) and the merge's.

    ``notes`` (AWS Batch's word on a job it ended FAILED, :func:`_batch_notes`) make a shard that is pending, running
    or interrupted ``failed`` with Batch's reason (its own ``failed`` reason stays); the merge the same when it has
    no ``_STATUS``.

    ``status`` is the merge's once it runs; before, ``failed`` when a shard failed, ``interrupted`` when no shard
    is left running and one stopped (exit 75: resumable; AWS Batch retries it), else ``running``. ``progress`` sums
    done/total/failed and the running shards' images/s; ``eta_s`` is the slowest running shard's. Both stay
    unknown while a shard has not started; a ``.tgz`` stream's total is known at its end only, until then its
    ``total_estimated`` (from the bytes read) makes the sum a ``total_estimated`` too.
    """
    shards = {i: None if d is None else d.to_dict() for i, d in shard_docs.items()}
    merge = None if merge_doc is None else merge_doc.to_dict()
    notes = notes or {}
    noted = [int(k[len("shard-"):]) for k in notes if k.startswith("shard-") and k[len("shard-"):].isdigit()]
    count = max([max(shards, default=-1) + 1, max(noted, default=-1) + 1]
                + [int(d["shard"][1]) for d in shards.values() if d and d.get("shard")])
    rows: list[dict[str, Any]] = []
    for i in range(count):
        d = shards.get(i)
        row = ({"index": i, "status": "pending"} if d is None else
               {"index": i, **{k: d[k] for k in SHARD_KEYS if d.get(k) is not None}})
        if f"shard-{i}" in notes and row["status"] not in ("succeeded", "failed"):
            row.update(status="failed", reason=_batch_reason(notes[f"shard-{i}"]))
        rows.append(row)
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
    elif "merge" in notes:  # Batch ended the merge without it running (its shards did not all succeed, say)
        status, reason, phase = "failed", f"merge: {_batch_reason(notes['merge'])}", "merge"
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
    guesses = [int(p["total"] if p.get("total") is not None else p["total_estimated"]) for p in progress
               if p.get("total") is not None or p.get("total_estimated") is not None]
    doc: dict[str, Any] = {
        "schema": SCHEMA, "status": status, "reason": reason, "phase": phase,
        "summary": f"{tally} of {count} shards",
        "shards": rows,
        "merge": ({"status": "failed", "reason": _batch_reason(notes["merge"])} if merge is None and "merge" in notes
                  else None if merge is None else {k: merge.get(k) for k in ("status", "reason", "phase", "phases",
                                                                             "started_at", "updated_at") if k in merge}),
        "progress": {
            "done": sum(int(p.get("done", 0)) for p in progress),
            "total": sum(totals) if len(totals) == count else None,
            "failed": sum(int(p.get("failed", 0)) for p in progress),
            "images_per_s": round(sum(float(p.get("images_per_s", 0)) for p in running), 1),
            "eta_s": max(etas) if running and "pending" not in states and len(etas) == len(running) else None,
        },
    }
    if len(totals) < count and len(guesses) == count:
        doc["progress"]["total_estimated"] = sum(guesses)
    updated = [str(d["updated_at"]) for d in [*shards.values(), merge] if d and d.get("updated_at")]
    if updated:
        doc["updated_at"] = max(updated)
    return doc


def _progress_text(p: dict[str, Any]) -> str:
    """``done/total (pct), failed``; ``~`` marks an estimated total, none known: ``done, failed``."""
    total, approx = p.get("total"), ""
    if not isinstance(total, int) and isinstance(p.get("total_estimated"), int):
        total, approx = p["total_estimated"], "~"
    if not isinstance(total, int):
        return f"{p.get('done', 0):,} done, {p.get('failed', 0)} failed"
    pct = f" ({100 * p.get('done', 0) / total:.1f}%)" if total else ""
    return f"{p.get('done', 0):,}/{approx}{total:,}{pct}, {p.get('failed', 0)} failed"


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
