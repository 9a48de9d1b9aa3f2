"""``job compare``'s section of the config (``JobConfig.compare``): its variants, each parsed once from
``key=value,key=value`` (``job.values.parse_key_values``) into a checked :class:`Variant`. Standard library and
``job.values`` only, like the rest of ``job.config`` (the CDK app imports it)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import UsageError
from ..values import check_choice, parse_int, parse_key_values
from ._keep import keep as _keep
from .model import DEFAULT_MODEL, DEFAULT_PRETRAINED, DEFAULT_RESIZE_MODE, POOLS, RESIZE_MODES

# ``job compare --variant``: one embedding setup per variant, written key=value,key=value (job.values.parse_key_values)
VARIANT_KEYS: tuple[str, ...] = ("model", "pretrained", "pool", "resize", "size", "name")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


@dataclass(frozen=True)
class Variant:
    """One setup ``job compare`` embeds and scores: model and checkpoint, ``--pool``, ``--resize-mode``, image size
    (None: the model's own), and the name of its run folder (made from the rest when not given)."""

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    pool: str = "mean"
    resize: str = DEFAULT_RESIZE_MODE
    size: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        check_choice("pool", self.pool, POOLS)
        check_choice("resize mode", self.resize, RESIZE_MODES)
        if self.size is not None:
            _keep(self, size=parse_int(str(self.size), "size", 16, 4096))
        if self.name is not None and not _NAME_RE.match(self.name):
            raise UsageError(f"variant name {self.name!r}: letters, digits, '.', '_' and '-' only (a folder name, "
                             "at most 80 characters)")

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``model=ViT-L-14,pretrained=datacomp_xl_s13b_b90k,pool=mean,resize=pad,size=224`` (every key optional)."""
        values = parse_key_values(text, VARIANT_KEYS, "--variant")
        try:
            return cls(**values)  # type: ignore[arg-type]
        except UsageError as exc:
            raise UsageError(f"--variant {text!r}: {exc}") from None

    @property
    def label(self) -> str:
        """The run folder's name under ``job compare --out``: ``name``, else model, weights, pool, resize and size."""
        if self.name:
            return self.name
        text = "_".join([self.model, self.pretrained, self.pool, self.resize, str(self.size or "native")])
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
        return slug if len(slug) <= 80 else f"{slug[:71]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"

    def spec(self) -> str:
        """The variant written back in ``--variant`` form (every key; no size: the model's own)."""
        return ",".join(f"{k}={v}" for k, v in (("model", self.model), ("pretrained", self.pretrained),
                                                 ("pool", self.pool), ("resize", self.resize), ("size", self.size))
                        if v is not None)


@dataclass(frozen=True)
class CompareConfig:
    """``job compare``: the variants, parsed once (``--variant SPEC`` strings become :class:`Variant` here)."""

    variants: tuple[Variant, ...] = ()

    def __post_init__(self) -> None:
        variants = tuple(v if isinstance(v, Variant) else Variant.parse(v) for v in self.variants)
        labels = [v.label for v in variants]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise UsageError(f"--variant: two variants would share the run folder {twice[0]!r}; give one of them "
                             "name=… or make them differ")
        _keep(self, variants=variants)
