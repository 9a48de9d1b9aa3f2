"""Where a run's annotation tables are, and reading them: from the same place the run's own tables came from.

The manifest records where the embedding read its nuScenes tables (``source.metadata.from``: a ``--nuscenes-meta``
location, a ``*_meta.tgz``, a dataroot's ``v1.0-*`` folder (local or ``s3://``), or an archive that carried them, such as
``v1.0-mini.tgz``). The annotation tables sit beside them in every official layout, so they are read from there
through ``job.sources.fill_from_location`` (the one reader of table locations) into
:class:`job.nuscenes.AnnotationBuilder` (streamed, columnar). ``--nuscenes-meta`` overrides the location. An archive
that carries its tables after its images (as ``v1.0-mini.tgz`` may) is streamed again up to its last table.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from ..errors import DataError, UsageError
from ..nuscenes import AnnotationBuilder, Annotations, MissingTables, TablesError
from ..runfolder import Manifest
from ..sources import NoTablesError, fill_from_location

log = logging.getLogger(__name__)


def table_locations(manifest: Manifest | None, override: str | None = None) -> list[str]:
    """Where to look for the tables, best first: ``override``, then where the run's tables came from, then the
    run's ``--nuscenes-meta`` and its sources."""
    if override:
        return [override]
    found: list[str] = []
    if manifest is not None:
        meta: Any = (manifest.source or {}).get("metadata") or {}
        found += [str(u) for u in meta.get("from") or []]
        for shard in (manifest.source or {}).get("shards") or []:
            found += [str(u) for u in (shard.get("metadata") or {}).get("from") or []]
        src = manifest.config.get("source") or {}
        if src.get("nuscenes_meta"):
            found.append(str(src["nuscenes_meta"]))
        found += [str(u) for u in src.get("sources") or []]
    return list(dict.fromkeys(found))


def read_annotations(locations: Sequence[str], sd_tokens: Sequence[str], *, anon: bool | None = None,
                     versions: Sequence[str] = ()) -> tuple[Annotations, str]:
    """The annotation tables of the first location that holds them, restricted to the images ``sd_tokens``; and that
    location. Several table versions at one place (a dataroot with mini and trainval): the one holding most of the
    wanted images. UsageError when no location holds tables; DataError when they are broken."""
    if not locations:
        raise UsageError("no nuScenes tables recorded for this run; give --nuscenes-meta (a v1.0-* folder, a dataroot "
                         "or a meta .tgz)")
    tried: list[str] = []
    for loc in locations:
        try:
            builders = fill_from_location(loc, anon, lambda v: AnnotationBuilder(v, sd_tokens))
        except NoTablesError as exc:
            tried.append(str(exc))
            continue
        except MissingTables as exc:
            tried.append(str(exc))
            continue
        except FileNotFoundError as exc:
            tried.append(f"{loc}: {exc}")
            continue
        except TablesError as exc:
            raise DataError(f"annotation tables at {loc}: {exc}") from None
        if versions:
            builders = [b for b in builders if b.version in versions] or builders
        built = [b.build() for b in builders]
        best = max(built, key=lambda a: a.n_images)
        if best.n_images == 0:
            tried.append(f"{loc}: tables {', '.join(a.version for a in built)} hold none of the run's images")
            continue
        log.info("annotation tables: %s (%s): %d boxes over %d of the run's images", loc, best.version, best.n_boxes,
                 best.n_images)
        return best, loc
    raise UsageError("no nuScenes annotation tables found (" + "; ".join(tried) + "); give --nuscenes-meta "
                     "(a v1.0-* folder, a dataroot or a meta .tgz)")
