"""``config_from_args``: the one checked JobConfig of an invocation, from whatever options its subcommand defined."""
from __future__ import annotations

import argparse
from typing import Any

from ..config import (
    DEFAULT_SOURCE,
    CompareConfig,
    CurateConfig,
    DecodeConfig,
    EvalConfig,
    IndexConfig,
    IndexOverrides,
    JobConfig,
    ModelConfig,
    OutputConfig,
    ProjectConfig,
    SearchConfig,
    ServeConfig,
    SourceConfig,
    StatusConfig,
)
from ..values import CAMERA_CHANNELS, parse_channels, parse_shard, split_list


class _Args:
    """The parsed namespace with defaults for options a subcommand does not define."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.a = vars(ns)

    def get(self, name: str, default: Any) -> Any:
        v = self.a.get(name)
        return default if v is None else v


def _source(a: _Args) -> SourceConfig:
    given = list(a.get("source", [])) + list(a.get("image_dir", []))
    sources = split_list(given) if given else ((DEFAULT_SOURCE,) if a.get("_default_source", False) else ())
    return SourceConfig(sources=sources, anon=a.get("anon", None), nuscenes_meta=a.get("nuscenes_meta", None),
                        channels=parse_channels(a.get("channels", None)) or CAMERA_CHANNELS, keyframes_only=bool(a.get("keyframes_only", True)),
                        scenes=split_list(a.get("scenes", None)), limit=a.get("limit", None),
                        shard=parse_shard(a.get("shard", "")) if a.get("shard", None) else None)


def _index(a: _Args) -> IndexConfig:
    d, o = IndexConfig(), IndexOverrides()
    own = a.get("command", "") == "index"  # ``job search`` has a --search-params of its own
    overrides = IndexOverrides(
        nlist=a.get("nlist", None), pq_m=a.get("pq_m", None), pq_bits=a.get("pq_bits", None),
        refine=a.get("refine", None), hnsw_m=a.get("hnsw_m", None), ef_construction=a.get("ef_construction", None),
        train_size=a.get("train_size", None), search_params=a.get("search_params", None) if own else None,
        queries=a.get("queries", o.queries), seed=a.get("seed", o.seed))
    return IndexConfig(index_type=a.get("index_type", d.index_type), factory=a.get("factory", None),
                       max_memory=a.get("max_memory", None), target_recall=a.get("target_recall", d.target_recall),
                       enabled=not a.get("no_index", False), overrides=overrides,
                       embeddings=a.get("embeddings", None) if own else None,
                       index_out=a.get("index_out", None), device=a.get("device", d.device))


def _search(a: _Args, command: str) -> SearchConfig:
    """``job search`` and ``job serve``: the run, the query, and the metadata filters."""
    d = SearchConfig()
    own = command in ("search", "serve")
    night, rain = a.a.get("night"), a.a.get("rain")  # None: not given (either way)
    return SearchConfig(
        run=a.get("run", None) if own else None, index=a.get("index", None),
        embeddings=a.get("embeddings", None) if own else None,
        text=a.get("text", None), image=a.get("image", None), id=a.get("id", None), k=a.get("k", d.k),
        device=a.get("device", d.device) if own else d.device,
        search_params=a.get("search_params", None) if own else None,
        json=bool(a.get("json", False)), where=a.get("where", None),
        channels=parse_channels(a.get("channel", None), "--channel"),
        locations=split_list(a.get("location", None)), scenes=split_list(a.get("scene", None)),
        night=night if own else None, rain=rain if own else None)


def _curate(a: _Args, command: str) -> CurateConfig:
    """``job curate``, and ``--curate`` of ``job run`` / ``job merge``."""
    d = CurateConfig()
    return CurateConfig(
        enabled=command == "curate" or bool(a.get("curate", False)), k=a.get("curate_k", d.k),
        method=a.get("curate_method", d.method), near_threshold=a.get("near_threshold", d.near_threshold),
        still_metres=a.get("still_metres", d.still_metres), still_cosine=a.get("still_cosine", d.still_cosine),
        still_gap_s=a.get("still_gap_s", d.still_gap_s), uniqueness=a.get("uniqueness", d.uniqueness),
        uniqueness_weights=a.get("uniqueness_weights", None) or d.uniqueness_weights, select=a.get("select", None),
        balance=split_list(a.get("balance", None)), shares=a.get("shares", d.shares), labelled=a.get("labelled", None),
        min_gap_s=a.get("min_gap_s", None), export=a.get("export", None),
        device=a.get("curate_device", d.device), seed=a.get("seed", d.seed))


def _eval(a: _Args, command: str) -> EvalConfig:
    """``job eval``, and the eval step of ``job run`` / ``job merge`` (``--no-eval`` skips it)."""
    d = EvalConfig()
    return EvalConfig(
        enabled=not a.get("no_eval", False), min_visibility=a.get("min_visibility", d.min_visibility),
        min_positives=a.get("min_positives", d.min_positives), image_queries=a.get("image_queries", d.image_queries),
        prompts=a.get("prompts", None), nuscenes_meta=a.get("nuscenes_meta", None) if command == "eval" else None,
        searchad=a.get("searchad", None), rare_share=a.get("rare_share", d.rare_share), seed=a.get("seed", d.seed))


def config_from_args(ns: argparse.Namespace) -> JobConfig:
    """Build the JobConfig; every section checks itself, so a bad value is a UsageError here, before anything is
    read or written."""
    a, d = _Args(ns), JobConfig()
    command = a.get("command", "")
    out = a.get("out", None) or a.get("run", None) or d.output.out
    cfg = JobConfig(
        model=ModelConfig(
            model=a.get("model", "" if command == "import" else d.model.model),  # import: "" when unknown
            pretrained=a.get("pretrained", d.model.pretrained),
            pool=a.get("pool", "cls" if command == "import" else d.model.pool), text_vectors=a.get("text_vectors", d.model.text_vectors),
            image_size=a.get("image_size", None),
            device=a.get("device", d.model.device) if command not in ("search", "serve") else d.model.device,
            precision=a.get("precision", d.model.precision), seed=a.get("seed", d.model.seed),
            compile=bool(a.get("compile", False)), cache_dir=a.get("cache_dir", None),
            weights_cache=a.get("weights_cache", None), tokenizer=a.get("tokenizer", None)),
        decode=DecodeConfig(resize_mode=a.get("resize_mode", d.decode.resize_mode), workers=a.get("workers", None),
                            decoder=a.get("decoder", d.decode.decoder),
                            batch_size=a.get("batch_size", d.decode.batch_size)),
        source=_source(a),
        output=OutputConfig(out=out, part_size=a.get("part_size", d.output.part_size),
                            part_seconds=a.get("part_seconds", d.output.part_seconds),
                            npy=bool(a.get("npy", False)), overwrite=bool(a.get("overwrite", False)),
                            publish=a.get("publish", None) or a.get("to", None),
                            lease_timeout=a.get("lease_timeout", d.output.lease_timeout)),
        index=_index(a),
        project=ProjectConfig(
            enabled=not a.get("no_project", False), fit_sample=a.get("fit_sample", d.project.fit_sample),
            thumbnails=bool(a.get("thumbnails", False)), seed=a.get("seed", d.project.seed),
            n_neighbors=a.get("n_neighbors", d.project.n_neighbors), min_dist=a.get("min_dist", d.project.min_dist),
            n_epochs=a.get("n_epochs", None), backend=a.get("backend", d.project.backend)),
        search=_search(a, command),
        serve=ServeConfig(host=a.get("host", d.serve.host), port=a.get("port", d.serve.port)),
        status=StatusConfig(run=a.get("run", None) if command == "status" else None, watch=a.get("watch", None),
                            lines=a.get("lines", d.status.lines), json=bool(a.get("json", False))),
        curate=_curate(a, command),
        eval=_eval(a, command),
        compare=CompareConfig(variants=tuple(a.get("variant", None) or ())),
        log_level=a.get("log_level", d.log_level),
        progress=not a.get("no_progress", False),
    )
    return cfg
