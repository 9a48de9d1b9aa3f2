"""What the search page's API does, without HTTP: parse and check a query, search, shape the JSON.

Ids travel as strings: they are 63-bit hashes, beyond what a JavaScript number holds exactly.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import fsutil
from ..curate import CurationResults, curate_command, kind_counts
from ..errors import UsageError
from ..runfolder import read_table
from ..search import Searcher, Thumbnails, compose_where, json_safe, make_hits
from ..values import CAMERA_CHANNELS, parse_channels, parse_flag, parse_int, split_list
from .quality import QualityView

log = logging.getLogger(__name__)

K_MAX = 200  # hits one request may ask for
MAP_POINTS_MAX = 50_000  # points of the UMAP map sent to the page (a seeded sample above this)
IMAGE_BYTES_MAX = 25 << 20  # largest image a POST may carry
GROUP_MAX = 1000  # images of one duplicate group one request may ask for (a long standstill has hundreds)


@dataclass
class Query:
    """One checked request: what to search for, how many, and the filter."""

    k: int
    where: str | None
    text: str | None = None
    id: int | None = None
    image: bytes | None = None


def parse_filter(params: Mapping[str, str]) -> str | None:
    """The SQL condition of a request: ``where`` plus the channel / location / scene / night / rain shorthands."""
    where = params.get("where") or None
    return compose_where(where, channels=parse_channels(params.get("channel"), "channel"),
                         locations=split_list(params.get("location")), scenes=split_list(params.get("scene")),
                         night=parse_flag(params.get("night"), "night"), rain=parse_flag(params.get("rain"), "rain"))


class SearchService:
    """One run opened for the page: the Searcher, the UMAP map, thumbnails; safe to call from several threads."""

    def __init__(self, run: str, *, device: str | None = None, preload_model: bool = True) -> None:
        t0 = time.perf_counter()
        self.run = run
        self.searcher = Searcher.open(run, device=device)
        from ..runfolder import open_run

        self.layout = open_run(run).layout
        self.k_max = min(K_MAX, int(self.searcher.index.ntotal))
        self.thumbs = Thumbnails(self.layout, self.searcher.manifest)
        self._lock = threading.Lock()
        man = self.searcher.manifest
        self.curation = CurationResults(self.layout, man.curation if man is not None else None, run)
        self.quality = QualityView(self.layout, run)
        self._map = self._load_map()
        self.searcher.columns()  # DuckDB over the metadata, ready before the first request
        if preload_model and self.searcher.manifest is not None and self.searcher.manifest.model.name:
            self.searcher.model()
            self.searcher.text_space()
        log.info("opened %s in %.1f s: %d images, thumbnails from %s, map %s", run, time.perf_counter() - t0,
                 self.searcher.index.ntotal, self.thumbs.kind, "yes" if self._map else "no")

    # ------------------------------------------------------------------------------------------ queries
    def parse(self, params: Mapping[str, str], image: bytes | None = None) -> Query:
        """Check a request's parameters (UsageError: a 400 with the message)."""
        k = parse_int(params.get("k") or "24", "k", 1, self.k_max)
        where = parse_filter(params)
        text, id_ = params.get("text"), params.get("id")
        given = [name for name, v in (("text", text), ("id", id_), ("image", image)) if v]
        if len(given) != 1:
            raise UsageError("give exactly one of text=…, id=… or an image in the request body"
                             + (f" (got {', '.join(given)})" if given else ""))
        if image is not None and len(image) > IMAGE_BYTES_MAX:
            raise UsageError(f"the image is {len(image)} bytes; at most {IMAGE_BYTES_MAX} are accepted")
        return Query(k=k, where=where, text=text or None, image=image,
                     id=parse_int(id_, "id", 0, 2**63 - 1) if id_ else None)

    def search(self, q: Query) -> dict[str, Any]:
        """Run a checked query; the JSON the page shows."""
        s = self.searcher
        t0 = time.perf_counter()
        with self._lock:
            matches = len(s.matching(q.where)) if q.where else int(s.index.ntotal)
            if q.text is not None:
                hits, query, space = s.by_text(q.text, q.k, where=q.where), {"text": q.text}, "text"
            elif q.id is not None:
                hits, query, space = s.by_id(q.id, q.k, where=q.where), {"id": str(q.id)}, "image"
            else:
                assert q.image is not None
                hits, query, space = s.by_image(q.image, q.k, where=q.where), {"image": f"{len(q.image)} bytes"}, "image"
        took = (time.perf_counter() - t0) * 1000
        searched = s.text_space() if space == "text" else s.image
        return {"query": query, "k": q.k, "where": q.where, "matches": matches, "space": space,
                "column": searched.column, "took_ms": round(took, 1), "hits": self._cards(hits)}

    def _cards(self, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hits as the page shows them: JSON-safe, string ids, thumbnail URL, map position, curation badges."""
        out = [self._hit(h) for h in hits]
        if self.curation.available and out:
            for card, badge in zip(out, self.curation.badges(np.array([int(h["id"]) for h in hits], np.int64))):
                card["curation"] = badge
        return out

    def cards_of(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """Cards of images given by id (all in the run), ranked in the given order, ``score`` as given."""
        rows = self.searcher.rows_of(np.asarray(ids, np.int64))
        meta = self.searcher.table.take(np.asarray(rows, np.int64)).to_pylist() if len(rows) else []
        return self._cards(make_hits(np.asarray(scores, np.float64).tolist(), meta))

    def _hit(self, h: dict[str, Any]) -> dict[str, Any]:
        out = {key: json_safe(v) for key, v in h.items()}
        out["id"] = str(h["id"])
        out["thumb"] = f"/api/thumb/{h['id']}"
        if self._map is not None:
            pos = int(np.searchsorted(self._map["sorted_ids"], h["id"]))
            if pos < len(self._map["sorted_ids"]) and self._map["sorted_ids"][pos] == h["id"]:
                r = self._map["order"][pos]
                out["x"], out["y"] = round(float(self._map["x"][r]), 4), round(float(self._map["y"][r]), 4)
        return out

    # ------------------------------------------------------------------------------------------ the rest
    def thumbnail(self, id_text: str) -> bytes:
        """JPEG bytes of an image's thumbnail (UsageError for an id that is not in the run: a 404)."""
        id_ = parse_int(id_text, "id", 0, 2**63 - 1)
        row = self.searcher.row_of(id_)
        path = str(self.searcher.table.column("path")[row].as_py())
        return self.thumbs.get(id_, path)

    def _load_map(self) -> dict[str, Any] | None:
        if not fsutil.exists(self.layout.umap):
            return None
        t = read_table(self.layout.umap, ["id", "x", "y"])
        ids = t.column("id").to_numpy().astype(np.int64)
        order = np.argsort(ids, kind="stable")
        return {"ids": ids, "x": t.column("x").to_numpy(), "y": t.column("y").to_numpy(),
                "order": order, "sorted_ids": ids[order]}

    def map_points(self) -> dict[str, Any]:
        """The UMAP map for the page: x, y, id and channel of every point (a seeded sample above MAP_POINTS_MAX, which
        always keeps the subset's picks), and ``selected``: the positions of the subset's picks among them."""
        if self._map is None:
            return {"points": 0, "x": [], "y": [], "id": [], "channel": [], "channels": list(CAMERA_CHANNELS),
                    "selected": [], "selected_rank": []}
        m = self._map
        rows = np.arange(len(m["ids"]))
        cur = self.curation
        picked = np.isin(m["ids"], cur.sel_ids) if cur.has_selection else np.zeros(len(rows), bool)
        if len(rows) > MAP_POINTS_MAX:
            sample = np.random.default_rng(0).choice(len(rows), MAP_POINTS_MAX, replace=False)
            rows = np.union1d(sample, np.flatnonzero(picked))
        table = self.searcher.table
        codes = [-1] * len(rows)
        if "channel" in table.column_names:
            at = self.searcher.rows_of(m["ids"][rows])
            channel = table.column("channel").take(np.clip(at, 0, None)).to_pylist()
            codes = [CAMERA_CHANNELS.index(c) if r >= 0 and c in CAMERA_CHANNELS else -1
                     for r, c in zip(at.tolist(), channel)]
        selected = np.flatnonzero(picked[rows])
        rank = {int(i): int(r) for i, r in zip(cur.sel_ids, cur.sel_rank)} if cur.has_selection else {}
        return {"points": int(len(m["ids"])), "x": np.round(m["x"][rows].astype(np.float64), 4).tolist(),
                "y": np.round(m["y"][rows].astype(np.float64), 4).tolist(), "id": [str(i) for i in m["ids"][rows].tolist()],
                "channel": codes, "channels": list(CAMERA_CHANNELS), "selected": selected.tolist(),
                "selected_rank": [rank[int(i)] for i in m["ids"][rows][selected]]}

    # ------------------------------------------------------------------------------------------ curation
    def duplicates(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The duplicate group of image ``id``: the image kept first, then every image that repeats it (kind, cosine
        to the image it repeats), in time order; at most ``limit`` of them (``size`` says how many there are)."""
        id_ = parse_int(params.get("id") or "", "id", 0, 2**63 - 1)
        limit = parse_int(params.get("limit") or "200", "limit", 1, GROUP_MAX)
        self.curation.require()
        self.searcher.row_of(id_)  # NotFound (404) for an id that is not in the run
        g = self.curation.group(id_)
        members = np.arange(len(g.ids))
        if "timestamp" in self.searcher.table.column_names and len(members):
            rows = self.searcher.rows_of(g.ids)
            ts = self.searcher.table.column("timestamp").take(rows).to_numpy(zero_copy_only=False)
            members = np.lexsort((g.ids, ts))
        members = members[: limit - 1]
        cards = self.cards_of(np.r_[g.root, g.ids[members]], np.r_[1.0, g.cosines[members]])
        cards[0].update(role="kept", kind=None, cosine=None, keep_id=None, repeats_id=None, repeats_cosine=None)
        for card, j in zip(cards[1:], members):
            card.update(role="repeats", kind=str(g.kinds[j]), cosine=round(float(g.cosines[j]), 6),
                        keep_id=str(int(g.keep_ids[j])), repeats_id=str(int(g.repeats_ids[j])),
                        repeats_cosine=round(float(g.repeats_cosines[j]), 6))
        info = self.curation.info() or {}
        return {"id": str(id_), "root": str(g.root), "size": g.size, "shown": len(cards),
                "by_kind": kind_counts(g.kinds),
                "threshold": info.get("threshold"), "still_metres": info.get("still_metres"), "members": cards}

    def rare(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Images by descending uniqueness (rarest first) among those matching the request's filter; ``offset``
        pages through them."""
        k = parse_int(params.get("k") or "24", "k", 1, self.k_max)
        offset = parse_int(params.get("offset") or "0", "offset", 0, 2**31)
        where = parse_filter(params)
        self.curation.require()
        t0 = time.perf_counter()
        with self._lock:
            among = self.searcher.matching(where) if where else None
        ids, uniq, total = self.curation.rarest(k, offset, among)
        hits = self.cards_of(ids, uniq)
        for h in hits:
            h["rank"] += offset
        return {"query": {"order": "rarest first"}, "k": k, "offset": offset, "where": where, "matches": total,
                "space": "uniqueness", "column": "uniqueness", "took_ms": round((time.perf_counter() - t0) * 1000, 1),
                "hits": hits}

    def selection(self) -> dict[str, Any]:
        """The diverse subset (``selection.parquet``) in pick order: rank, id, coverage cosine, map position."""
        self.curation.require("selection")
        cur = self.curation
        order = np.argsort(cur.sel_rank, kind="stable")
        cards = self.cards_of(cur.sel_ids[order], np.nan_to_num(cur.sel_cos[order], nan=1.0))
        for card, j in zip(cards, order):
            cov = float(cur.sel_cos[j])
            card.update(rank=int(cur.sel_rank[j]), coverage_cosine=None if not np.isfinite(cov) else round(cov, 6))
        info = cur.info() or {}
        return {"n": len(cards), "radius_cosine": info.get("radius_cosine"), "balance": info.get("balance", []),
                "labelled": info.get("labelled", 0), "strata": info.get("strata", []), "picks": cards}

    def info(self) -> dict[str, Any]:
        """What the page needs to draw its filters and header."""
        s = self.searcher
        mf = s.meta_filter()
        man = s.manifest
        text = s.text_space()
        return {"run": self.run, "images": int(s.index.ntotal), "k_max": self.k_max,
                "model": f"{man.model.name} / {man.model.pretrained}" if man else None,
                "pool": man.model.pool if man else None, "index": s.meta.factory,
                "text_space": {"column": text.column, "source": text.source}, "columns": mf.columns,
                "channels": mf.distinct("channel"), "locations": mf.distinct("location"),
                "scenes": mf.distinct("scene_name", limit=2000), "has_map": self._map is not None,
                "thumbnails": self.thumbs.kind, "curation": self.curation.info(), "curate_hint": curate_command(self.run),
                "quality": self.quality.available, "quality_hint": self.quality.hint}
