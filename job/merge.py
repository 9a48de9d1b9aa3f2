"""``job merge``: turn the N finished shards of a run folder (``job run --shard I/N``) into one complete run.

Each shard is an ordinary run folder, ``OUTDIR/shards/I/``. The merge checks that every shard 0..N-1
finished (has its manifest) with the same vector-shaping options and weights, then lays the shards'
committed parts out as ``OUTDIR``'s own datasets — hard links on a local disk, server-side copies
(``CopyObject``) on S3, so the vectors never pass through the merging machine — sums counts and
timings into one manifest, and ends like ``job run``: index, UMAP map, manifest last, publish.
Merging again redoes it from the shards (they are never modified).
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from typing import Any

from . import fsutil
from .config import JobConfig
from .errors import DataError, UsageError
from .pipeline import tracked
from .runfolder import (
    SHARDS_DIR,
    Counts,
    Lease,
    Manifest,
    Outputs,
    PartKey,
    RunLayout,
    find_manifest,
    list_parts,
    open_dataset,
    part_url,
)
from .status import StatusWriter
from .steps import finish_run, preflight
from .stopping import StopRequest

log = logging.getLogger(__name__)


@dataclass
class Shards:
    """The finished shards of a run folder, in order."""

    root: RunLayout
    count: int
    manifests: list[Manifest]
    identity: dict[str, Any]  # the vector-shaping options they share (without the shard spec)


def _found(root: RunLayout) -> dict[int, str]:
    fs, path = fsutil.url_to_fs(root.shards_dir)
    if not fs.exists(path):
        raise UsageError(f"{root.run_dir} has no {SHARDS_DIR}/ folder; run `python -m job run --shard I/N --out "
                         f"{root.run_dir} …` for each shard I first")
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return {int(n): n for n in names if n.isdigit()}


def _count_of(i: int, m: Manifest) -> int:
    shard = (m.config.get("source") or {}).get("shard")
    if not shard or int(shard[0]) != i:
        raise DataError(f"{SHARDS_DIR}/{i} holds a run that was not made with --shard {i}/N (its options: "
                        f"shard={shard!r})")
    return int(shard[1])


def check_shards(root: RunLayout) -> Shards:
    """Every shard 0..N-1 finished with the same options, or a DataError naming the ones that did not."""
    found = _found(root)
    manifests = {i: find_manifest(root.shard(i)) for i in sorted(found)}
    done = {i: m for i, m in manifests.items() if m is not None}
    if not done:
        raise DataError(f"no shard of {root.run_dir} has finished yet ({len(found)} started; none has a manifest)")
    counts = {i: _count_of(i, m) for i, m in done.items()}
    if len(set(counts.values())) > 1:
        raise DataError("the shards were made with different N: " +
                        ", ".join(f"{SHARDS_DIR}/{i} is 1 of {n}" for i, n in counts.items()))
    n = next(iter(counts.values()))
    problems = [f"{SHARDS_DIR}/{i} was never started" for i in range(n) if i not in found]
    problems += [f"{SHARDS_DIR}/{i} has not finished (no manifest: still running or killed; "
                 f"`job run --shard {i}/{n} …` resumes it)" for i in sorted(found) if i < n and i not in done]
    problems += [f"{SHARDS_DIR}/{i} is outside 0..{n - 1}" for i in sorted(found) if i >= n]
    if problems:
        raise DataError(f"cannot merge {root.run_dir}: " + "; ".join(problems))
    identities = {i: _identity(root.shard(i)) for i in range(n)}
    first = identities[0]
    for i, ident in identities.items():
        changed = sorted(k for k in set(first) | set(ident) if first.get(k) != ident.get(k))
        if changed:
            raise DataError(f"{SHARDS_DIR}/{i} was made with other options than {SHARDS_DIR}/0 "
                            f"({', '.join(changed)}); re-run it with the same options")
    return Shards(root, n, [done[i] for i in range(n)], first)


def _identity(layout: RunLayout) -> dict[str, Any]:
    ident = dict(fsutil.read_json(layout.state))
    ident.pop("shard", None)
    return ident


def _link(fs: Any, src: str, dst: str) -> None:
    """``dst`` becomes ``src``'s content without moving the bytes through here where the file system allows."""
    if fsutil.is_local(fs):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another device, or links not supported
            shutil.copyfile(src, dst)
    else:
        fs.copy(src, dst)


def _lay_out(shards: Shards) -> dict[str, int]:
    """The shards' committed parts become the root's datasets (shard I's part N as part I·100000+N, same attempt
    id); returns parts per dataset."""
    root = shards.root
    fs, _ = fsutil.url_to_fs(root.run_dir)
    made: collections.Counter[str] = collections.Counter()
    for i in range(shards.count):
        shard = root.shard(i)
        done = list_parts(shard.embeddings)
        for kind, src_folder, dst_folder in (("embeddings", shard.embeddings, root.embeddings),
                                             ("failures", shard.failures, root.failures),
                                             ("thumbnails", shard.thumbnails, root.thumbnails)):
            for key, src in list_parts(src_folder).items():
                if key in done:  # parts of a shard's interrupted last attempt are not part of the run
                    merged = PartKey(i * 100_000 + key.number, key.attempt)
                    _link(fs, src, fsutil.url_to_fs(part_url(dst_folder, merged))[1])
                    made[kind] += 1
    return dict(made)


def _clear(root: RunLayout) -> None:
    """Remove an earlier merge's outputs (manifest first, so the folder never looks complete meanwhile)."""
    for url in [root.manifest, *(u for u in root.owned() if u != root.manifest)]:
        fs, path = fsutil.url_to_fs(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def merged_manifest(shards: Shards, started: float) -> Manifest:
    """One manifest for the whole run: counts, failure reasons and timings summed over the shards."""
    ms, root = shards.manifests, shards.root
    base = ms[0]
    config = dict(base.config)
    config["source"] = {**config.get("source", {}), "shard": None}
    config["output"] = {**config.get("output", {}), "out": root.run_dir}
    counts = Counts(**{f: sum(getattr(m.counts, f) for m in ms) for f in Counts.__struct_fields__})
    reasons: collections.Counter[str] = collections.Counter()
    timings: dict[str, float] = {}
    for m in ms:
        reasons.update(m.failure_reasons)
        for k, v in m.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    timings["merge_s"] = time.perf_counter() - started
    loop = sum(m.timings.get("embed_loop_s", 0.0) for m in ms)
    return Manifest(
        status="succeeded", started=min(m.started for m in ms), finished=dt.datetime.now(dt.timezone.utc).isoformat(),
        host=platform.node(), run_dir=root.run_dir,
        outputs=Outputs(embeddings=root.embeddings_name, failures=root.rel(root.failures),
                        state=root.rel(root.state),
                        thumbnails=root.rel(root.thumbnails) if any(m.outputs.thumbnails for m in ms) else None),
        config=config, model=base.model, counts=counts, failure_reasons=dict(reasons),
        timings={k: round(v, 3) for k, v in timings.items()},
        images_per_s=round(counts.embedded_this_attempt / loop, 2) if loop > 0 else 0.0,
        source={"description": f"{shards.count} shards of {base.source.get('description', '?')}",
                **({"kind": base.source["kind"]} if "kind" in base.source else {}),
                **_metadata(ms),
                "shards": [{"index": i, "host": m.host, "started": m.started, "finished": m.finished,
                            "embedded": m.counts.embedded, "failed": m.counts.failed, "images_per_s": m.images_per_s,
                            **({"mode": m.source["shard"].get("mode")} if "shard" in m.source else {})}
                           for i, m in enumerate(ms)]},
        decoder=base.decoder, versions=base.versions,
    )


def _metadata(ms: list[Manifest]) -> dict[str, Any]:
    """Where the shards' nuScenes tables came from and which versions (the eval step reads the annotations there)."""
    metas = [m.source.get("metadata") or {} for m in ms]
    found = list(dict.fromkeys(str(u) for meta in metas for u in meta.get("from") or []))
    versions = list(dict.fromkeys(str(v) for meta in metas for v in meta.get("versions") or []))
    return {"metadata": {"from": found, "versions": versions}} if found or versions else {}


def merge_run(cfg: JobConfig) -> Manifest:
    """``job merge --run OUTDIR``: check the shards, lay them out, then index, project, manifest, publish."""
    t0 = time.perf_counter()
    root = RunLayout.for_output(cfg.output.out)
    shards = check_shards(root)  # nothing is written before every shard checks out
    preflight(cfg, list(open_dataset(root.shard(0).embeddings).schema.names))
    with StopRequest() as stop, Lease.for_output(root.lease, cfg.output.lease_timeout):
        status = StatusWriter.open(root.run_dir)
        with tracked(status):
            status.phase("merge")
            _clear(root)
            made = _lay_out(shards)
            first = root.shard(0)
            if fsutil.exists(first.text_queries):  # the same prompts through the same model in every shard
                _link(fsutil.url_to_fs(root.run_dir)[0], fsutil.url_to_fs(first.text_queries)[1],
                      fsutil.url_to_fs(root.text_queries)[1])
            fsutil.write_json(root.state, shards.identity)
            log.info("merged %d shards of %s: %s", shards.count, root.run_dir,
                     ", ".join(f"{n} {kind} parts" for kind, n in sorted(made.items())))
            return finish_run(cfg, root, merged_manifest(shards, t0), status=status, stop=stop)
