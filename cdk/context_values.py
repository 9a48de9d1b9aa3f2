"""Context value parsers: each checks one ``-c key=value`` and raises a one-line ConfigError naming the valid values.

Split from ``config.py``, which composes them into the typed RunConfig and checks the keys that depend on each other.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any, Callable, Iterable

from . import constants as C


class ConfigError(ValueError):
    """Bad context value: ``app.py`` prints the one-line message and exits non-zero."""



_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9._:/@+=-]+$")
_SOURCE = re.compile(r"^[A-Za-z0-9._:/@+=*?\[\]-]+$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
_AZ = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8}([0-9a-f]{9})?$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$")
_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
_SSM_PARAM = re.compile(r"^/aws/service/[A-Za-z0-9._/-]+$")
_ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([a-z0-9._/-]+)")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    v = str(value).strip()
    if v not in choices:
        raise ConfigError(f"context {key}={value!r} is not valid; valid values: {', '.join(choices)}")
    return v


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"context {key}={value!r} is not a boolean; valid values: true, false")


def _number(key: str, value: Any, cast: Callable[[Any], float], lo: float, hi: float) -> Any:
    try:
        n = cast(value)
    except (TypeError, ValueError):
        raise ConfigError(f"context {key}={value!r} is not a number; valid values: {lo:g} to {hi:g}") from None
    if isinstance(n, float) and not math.isfinite(n) or not lo <= n <= hi:
        raise ConfigError(f"context {key}={value!r} is out of range; valid values: {lo:g} to {hi:g}")
    return n


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _pattern(key: str, value: Any, pattern: re.Pattern[str], example: str) -> str:
    v = str(value).strip()
    if not pattern.match(v):
        raise ConfigError(f"context {key}={value!r} is not valid; expected something like {example}")
    return v


def _list(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(s.strip() for s in items if str(s).strip())


def _source(key: str, uri: str) -> str:
    if not _SOURCE.match(uri):
        raise ConfigError(f"context {key}: {uri!r} has characters other than letters, digits and ._:/@+=-*?[]")
    if uri.startswith(("s3://", "https://", "http://")) or uri == C.NUSCENES_MOUNT or uri.startswith(C.NUSCENES_MOUNT + "/"):
        return uri
    raise ConfigError(
        f"context {key}: {uri!r} is not reachable from the instance; valid values: s3://bucket/key, https://..., "
        f"or a path under {C.NUSCENES_MOUNT} (the read-only mount of s3://{C.NUSCENES_BUCKET})"
    )


def default_run_id(dataset: str, now: Any = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{dataset}-{now:%Y%m%d-%H%M%S}"


def _instance_types(raw: dict[str, Any]) -> tuple[str, ...]:
    key = "instance_types"
    types = tuple(_choice(key, t, C.VALID_INSTANCE_TYPES) for t in _list(raw[key]))
    if not types:
        raise ConfigError(f"context {key} is empty; valid values: {', '.join(C.VALID_INSTANCE_TYPES[:4])}, ...")
    if len(types) > C.MAX_INSTANCE_TYPES:
        raise ConfigError(f"context {key} lists {len(types)} types; valid values: 1 to {C.MAX_INSTANCE_TYPES} types")
    return tuple(dict.fromkeys(types))


def _image(key: str, value: Any) -> str:
    image = str(value).strip()
    if image in (C.IMAGE_BUILD, C.IMAGE_ASSET):
        return image
    return _pattern(key, image, _IMAGE, f"{C.IMAGE_BUILD}, {C.IMAGE_ASSET} or 123456789012.dkr.ecr.ap-northeast-1.amazonaws.com/vit-embed:1.0")


def _channels(key: str, value: Any) -> tuple[str, ...]:
    chans = tuple(_choice(key, c, C.CAMERA_CHANNELS) for c in _list(value))
    if not chans:
        raise ConfigError(f"context {key} is empty; valid values: {', '.join(C.CAMERA_CHANNELS)}")
    return tuple(dict.fromkeys(chans))


def _log_retention(key: str, value: Any) -> int:
    days = _number(key, value, _int, 1, 3653)
    return int(_choice(key, str(days), map(str, C.LOG_RETENTION_DAYS)))
