"""Model registry: architecture names and aliases, our default weights per model, and ``--pretrained`` resolution.

Architectures are open_clip's (``open_clip.list_models()``); the aliases are the product brief's
spellings. ``--pretrained`` is an open_clip tag (the spelling open_clip accepts), ``openclip`` (our
default tag for the model, ``DEFAULT_TAGS``), a local file, an ``s3://`` (any fsspec) URL, ``hf-hub:``,
or ``none``. Unknown names fail with the list of valid ones.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

log = logging.getLogger(__name__)

# The product brief's spellings, mapped onto open_clip architecture names.
MODEL_ALIASES: dict[str, str] = {
    "vit_l_14": "ViT-L-14",
    "vit-l/14": "ViT-L-14",
    "vit_b_32": "ViT-B-32",
    "vit-b/32": "ViT-B-32",
    "vit_b_16": "ViT-B-16",
    "vit-b/16": "ViT-B-16",
    "vit_h_14": "ViT-H-14",
}

# ``--pretrained openclip`` resolves to these tags. For ViT-L-14: DataComp-XL (MIT licensed weights,
# ImageNet zero-shot 79.2% vs 75.3% for LAION-2B and 75.5% for OpenAI's); see the README for why.
DEFAULT_TAGS: dict[str, str] = {
    "ViT-L-14": "datacomp_xl_s13b_b90k",
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-H-14": "laion2b_s32b_b79k",
}


def available_models() -> list[str]:
    """open_clip architecture names plus our aliases."""
    import open_clip

    return sorted(open_clip.list_models()) + sorted(MODEL_ALIASES)


def resolve_model_name(name: str) -> str:
    """Map an alias or open_clip name (``ViT-L/14`` too) to the open_clip architecture name."""
    import open_clip

    if name.startswith("hf-hub:"):
        return name
    key = name.strip()
    if key.lower() in MODEL_ALIASES:
        return MODEL_ALIASES[key.lower()]
    models = open_clip.list_models()
    for candidate in (key, key.replace("/", "-")):
        if candidate in models:
            return candidate
    aliases = sorted(a for a in MODEL_ALIASES if "/" not in a)
    raise UsageError(
        f"unknown model {name!r}; valid choices: {', '.join(aliases + sorted(DEFAULT_TAGS))} or any of the "
        f"{len(models)} open_clip architectures (list them with: python -m job models)"
    )


@dataclass(frozen=True)
class WeightsSpec:
    """What ``--pretrained`` resolved to."""

    kind: str  # "none" | "tag" | "file" | "url" | "hf-hub"
    value: str | None  # tag name, file path, URL, hub id; None for "none"

    def describe(self) -> str:
        return "random init (seeded)" if self.kind == "none" else f"{self.kind}:{self.value}"


def resolve_pretrained(model: str, pretrained: str) -> WeightsSpec:
    """Classify ``--pretrained`` and validate tags against open_clip's registry for ``model``."""
    import open_clip

    p = pretrained.strip()
    if p.lower() in ("none", "random", ""):
        return WeightsSpec("none", None)
    if p.startswith("hf-hub:"):
        return WeightsSpec("hf-hub", p)
    if "://" in p:
        return WeightsSpec("url", p)
    if os.path.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")):
        if not os.path.isfile(p):
            raise UsageError(f"checkpoint file {p!r} does not exist")
        return WeightsSpec("file", p)
    if model.startswith("hf-hub:"):
        raise UsageError(f"--pretrained {p!r} cannot be combined with an hf-hub model; use --pretrained none or omit it")
    tags = open_clip.list_pretrained_tags_by_model(model)
    tag = DEFAULT_TAGS.get(model) if p.lower() == "openclip" else p
    if p.lower() == "openclip" and tag is None:
        if not tags:
            raise UsageError(f"model {model!r} has no open_clip pretrained weights; use --pretrained none or a file")
        tag = tags[0]
    # open_clip itself matches tags case-insensitively with '-' and '_' alike (laion2b-s34b-b79k)
    tag = next((t for t in tags if t.lower().replace("-", "_") == str(tag).lower().replace("-", "_")), None)
    if tag is None:
        raise UsageError(
            f"unknown pretrained tag {p!r} for {model}; valid choices: openclip, none, a checkpoint file, "
            f"s3://…, hf-hub:…, or one of {', '.join(tags) or '(none known)'}"
        )
    return WeightsSpec("tag", tag)


def _fetch_url(url: str, cache_dir: str | None) -> str:
    """Download a checkpoint URL (``s3://`` …) once into the cache and return the local path."""
    from .. import fsutil

    cache = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "vit-embedding-drivedata")
    os.makedirs(cache, exist_ok=True)
    digest = hashlib.sha1(url.encode()).hexdigest()[:16]
    local = os.path.join(cache, f"{digest}-{url.rsplit('/', 1)[-1]}")
    if not os.path.exists(local):
        fs, path = fsutil.url_to_fs(url)
        if not fs.exists(path):
            raise UsageError(f"checkpoint {url} does not exist")
        log.info("downloading checkpoint %s", url)
        tmp = f"{local}.tmp-{os.getpid()}"
        fs.get(path, tmp)
        os.replace(tmp, local)
    return local


def cached_tag_weights(name: str, tag: str, cache_url: str, cache_dir: str | None) -> tuple[str, dict[str, Any]]:
    """(local checkpoint path, preprocessing) of open_clip tag weights through a shared cache (e.g. on S3).

    The cache holds one checkpoint per ``<cache_url>/<model>/<tag>/``. When it is there it is fetched
    (once per machine, into the local cache); otherwise open_clip downloads it from its hub as usual
    and it is stored in the shared cache for the next run. The tag's mean/std/interpolation come from
    open_clip's registry, so a cached checkpoint embeds exactly as the tag does.
    """
    import open_clip

    from .. import fsutil

    pcfg = open_clip.get_pretrained_cfg(name, tag)
    preprocess = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}
    folder = fsutil.join(cache_url, name, tag)
    fs, path = fsutil.url_to_fs(folder)
    found = sorted(p for p in (fs.ls(path, detail=False) if fs.exists(path) else []) if ".tmp-" not in p)
    if found:
        remote = fsutil.join(folder, found[0].rstrip("/").rsplit("/", 1)[-1])
        log.info("weights %s/%s from the shared cache %s", name, tag, remote)
        return _fetch_url(remote, cache_dir), preprocess
    local = open_clip.download_pretrained(pcfg, cache_dir=cache_dir)
    if not local:
        raise UsageError(f"open_clip has no download for {name}/{tag}")
    remote = fsutil.join(folder, os.path.basename(local))
    log.info("storing the weights of %s/%s in the shared cache %s", name, tag, remote)
    try:
        rfs, rpath = fsutil.url_to_fs(remote)
        rfs.makedirs(path, exist_ok=True)
        rfs.put_file(local, rpath)
    except OSError as exc:  # the run goes on; the next one downloads again
        log.warning("could not store the weights in %s: %s", remote, exc)
    return local, preprocess
