"""One parser per value: sizes, channels, ``I/N`` shard specs, search parameters, lists, numbers, choices.

Each function takes the raw value (a CLI string, or an already-typed value from Python), returns it parsed, and
raises a one-line :class:`~job.errors.UsageError` naming the option, the bad value and what is valid. The CLI's
argument types (``job.cli.options``), the config sections' own checks (``job.config``) and every other reader of the
same value (the search page's query string, the index planner) call these, so one value has one grammar.
"""
from __future__ import annotations

import math
import os
import re
from typing import Iterable, Sequence

from .errors import UsageError

CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
SEARCH_PARAM_NAMES: tuple[str, ...] = ("nprobe", "efSearch", "k_factor")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kKmMgGtT])(i?[bB])?|[bB])?\s*$")
_SIZE_FORMS = "a byte count or a number with K, M, G or T (optionally followed by B or iB; powers of 1024), e.g. 512M, 4G, 1.5GiB"


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a one-line UsageError listing them."""
    choices = list(choices)
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    return value


def at_least(option: str, value: float | None, minimum: float) -> None:
    """UsageError unless ``value`` is None or ``>= minimum``."""
    if value is not None and (not math.isfinite(value) or value < minimum):
        raise UsageError(f"{option} {value!r} must be {minimum!r} or more")


def in_range(option: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """UsageError unless ``low <= value <= high`` (``low < value`` with ``low_open``)."""
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        raise UsageError(f"{option} {value!r} must be in ({low:g}, {high:g}]" if low_open else
                         f"{option} {value!r} must be in {low:g}..{high:g}")


def parse_size(value: str | int | None, option: str = "--max-memory") -> int | None:
    """``4G``, ``512M``, ``1.5GiB``, ``2000000000`` → bytes (powers of 1024); None stays None; must be > 0."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise UsageError(f"{option} {value!r} is not a size; valid: {_SIZE_FORMS}")
        scale = 1024 ** "bkmgt".index((m.group(2) or "b").lower())
        n = int(float(m.group(1)) * scale)
    if n <= 0:
        raise UsageError(f"{option} {value!r} must be more than 0 bytes; valid: {_SIZE_FORMS}")
    return n


def split_list(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """Flatten repeated and comma-separated values: ``["a,b", "c"] -> ("a", "b", "c")``."""
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values or ():
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return tuple(out)


def parse_channels(values: Sequence[str] | str | None, option: str = "--channels") -> tuple[str, ...]:
    """Camera channels from repeated / comma-separated values, case-insensitive; () when none is given."""
    out = tuple(c.upper() for c in split_list(values))
    for c in out:
        if c not in CAMERA_CHANNELS:
            what = "is not a camera" if c.startswith(("LIDAR", "RADAR")) else "is not a channel"
            raise UsageError(f"{option} {c!r} {what}; valid choices: {', '.join(CAMERA_CHANNELS)}")
    return out


def parse_shard(text: str | Sequence[int]) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N) with 0 <= I < N; a one-line UsageError otherwise.

    I may name an environment variable, ``$AWS_BATCH_JOB_ARRAY_INDEX/N``: read here, because AWS Batch (like
    Slurm's ``$SLURM_ARRAY_TASK_ID`` or a Kubernetes indexed job's ``$JOB_COMPLETION_INDEX``) hands each child of an
    array its index in the environment and runs the command without a shell to expand it.
    """
    if not isinstance(text, str):
        text = "/".join(str(v) for v in text)
    i, sep, n = text.strip().partition("/")
    if i.startswith("$"):
        var = i[1:].strip("{}")
        if not var or os.environ.get(var) is None:
            raise UsageError(f"--shard {text!r}: the environment variable {var or '?'} is not set; valid: I/N, or $VAR/N "
                             "where VAR holds I (AWS Batch sets AWS_BATCH_JOB_ARRAY_INDEX in each array child)")
        i = os.environ[var]
    if not sep or not i.strip().isdigit() or not n.strip().isdigit():
        raise UsageError(f"--shard {text!r} is not I/N; valid: two integers with 0 <= I < N, e.g. 0/4")
    index, count = int(i), int(n)
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text!r} is out of range; valid: 0 <= I < N and N >= 1, e.g. 0/{max(count, 1)}")
    return index, count


def parse_search_params(text: str | None, option: str = "--search-params") -> dict[str, int]:
    """``"nprobe=16,efSearch=64"`` → ``{"nprobe": 16, "efSearch": 64}``; {} for None or empty."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, sep, v = (x.strip() for x in part.partition("="))
        if not sep or k not in SEARCH_PARAM_NAMES or not v.isdigit() or int(v) <= 0:
            raise UsageError(f"{option} {text!r} is not NAME=INT[,NAME=INT…] with NAME one of "
                             f"{', '.join(SEARCH_PARAM_NAMES)} and INT > 0, e.g. efSearch=128 or nprobe=32,k_factor=8")
        out[k] = int(v)
    return out


def parse_int(value: str, option: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer within [minimum, maximum] from text (a query-string value: messages read ``name=value``)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option}={value!r} is not an integer") from None
    if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
        lo = "" if minimum is None else str(minimum)
        hi = "" if maximum is None else str(maximum)
        raise UsageError(f"{option}={n} must be in {lo}..{hi}")
    return n


def parse_number(value: str, option: str) -> float:
    """A finite float from text."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise UsageError(f"{option} {value!r} is not a finite number")
    return x


def _cosine(value: str | float, option: str, use: str) -> float:
    """A cosine in (0, 1]; ``use`` says what to give instead, for the message."""
    try:
        cos = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {value!r} is not understood; use {use}") from None
    if not (0.0 < cos <= 1.0):
        raise UsageError(f"{option} {value!r} is outside (0, 1]; use {use}")
    return cos


def parse_near_threshold(value: str | float, option: str = "near threshold") -> str | float:
    """``auto`` or a cosine in (0, 1] (the near-duplicate threshold of ``job curate``)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return _cosine(value, option, "auto or a cosine in (0, 1]")


def parse_cosine(value: str | float, option: str) -> float:
    """A cosine in (0, 1]."""
    return _cosine(value, option, "a cosine in (0, 1]")


def parse_weights(value: str | Sequence[str | float], option: str) -> tuple[float, ...]:
    """Positive weights, comma-separated or a sequence (``0.6,0.3,0.1``), at least one."""
    items: list[str | float] = list(split_list(value)) if isinstance(value, str) else \
        [v for v in value if not isinstance(v, str)] + list(split_list([v for v in value if isinstance(v, str)]))
    out = [parse_positive(v, option, "weight") for v in items]
    if not out:
        raise UsageError(f"{option} is empty; give at least one weight, e.g. 0.6,0.3,0.1")
    return tuple(out)


def parse_positive(value: str | float, option: str, unit: str = "") -> float:
    """A finite number > 0 (``unit`` names what it measures, for the message)."""
    what = f"a {unit} > 0" if unit else "a number > 0"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {value!r} is not a number; use {what}") from None
    if not (v > 0 and math.isfinite(v)):
        raise UsageError(f"{option} {value!r} is out of range; use {what}")
    return v


SHARE_MODES: tuple[str, ...] = ("proportional", "equal")
Shares = str | tuple[tuple[str, str, float], ...]


def parse_shares(value: str | Sequence[Sequence[object]] | None, option: str = "--shares") -> Shares:
    """``--shares``: ``proportional``, ``equal``, or ``COLUMN=VALUE:SHARE,…`` (shares in [0, 1] summing to at most 1
    per column) → the mode, or ``((column, value, share), …)``. Python callers may pass the tuples themselves."""
    if value is None:
        return "proportional"
    items: list[tuple[str, str, object]] = []
    if not isinstance(value, str):
        items = [(str(c), str(v), s) for c, v, s in value]
    else:
        text = value.strip()
        if text.lower() in SHARE_MODES:
            return text.lower()
        for part in (p.strip() for p in text.split(",")):
            column, eq, rest = part.partition("=")
            val, colon, share = rest.rpartition(":")
            if not part or not eq or not colon or not column.strip() or not val.strip():
                raise UsageError(f"{option} {value!r} is not understood; use proportional, equal, or "
                                 "COLUMN=VALUE:SHARE,… (e.g. location=boston-seaport:0.4,location=singapore-onenorth:0.2)")
            items.append((column.strip(), val.strip(), share.strip()))
    out: list[tuple[str, str, float]] = []
    sums: dict[str, float] = {}
    for column, val, raw in items:
        try:
            f = float(str(raw))  # text from the CLI, a number from Python
        except ValueError:
            raise UsageError(f"{option} {column}={val}:{raw}: the share is not a number; use a share in [0, 1]") from None
        if not (0.0 <= f <= 1.0):
            raise UsageError(f"{option} {column}={val}:{raw}: the share is outside [0, 1]")
        if any(c == column and v == val for c, v, _ in out):
            raise UsageError(f"{option} names {column}={val} twice")
        sums[column] = sums.get(column, 0.0) + f
        out.append((column, val, f))
    for column, total in sums.items():
        if total > 1.0 + 1e-9:
            raise UsageError(f"{option}: the shares of {column} sum to {total:g}, more than 1")
    return tuple(out)


def parse_subset(select: int | None, balance: Sequence[str] | str | None, shares: object, labelled: str | None,
                 min_gap_s: float | str | None, export: str | None) -> tuple[tuple[str, ...], Shares, float | None]:
    """The options that shape ``job curate --select N`` (``job.config.CurateConfig``) → (the balance columns, with
    those a given share names added; the shares; the gap), each checked, and none without ``--select``."""
    parsed = parse_shares(shares)  # type: ignore[arg-type]
    columns = split_list(balance)
    if not isinstance(parsed, str):  # the columns a share names are balanced too
        columns += tuple(dict.fromkeys(c for c, _, _ in parsed if c not in columns))
    gap = None if min_gap_s is None else parse_positive(min_gap_s, "--min-gap-s", "time in s")
    shaping = [o for o, v in (("--balance", columns), ("--shares", parsed != "proportional"), ("--labelled", labelled),
                              ("--min-gap-s", gap), ("--export", export)) if v]
    if shaping and select is None:
        raise UsageError(f"{' and '.join(shaping)} {'shape' if len(shaping) > 1 else 'shapes'} the subset: give "
                         "--select N too")
    if parsed == "equal" and not columns:
        raise UsageError("--shares equal needs --balance COLUMNS (the values that share the subset equally)")
    return columns, parsed, gap


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_flag(value: str | None, option: str) -> bool | None:
    """A yes/no value from text (``1/true/yes/on``, ``0/false/no/off``); None for empty."""
    if value is None or not value.strip():
        return None
    v = value.strip().lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise UsageError(f"{option}={value!r} is not a yes/no value; valid: {', '.join(_TRUE + _FALSE)} or empty")


def where_statement(where: str) -> str:
    """The statement a ``--where`` condition runs in (``job.search.filters`` executes it over the metadata)."""
    return f"SELECT id FROM meta WHERE ({where})"


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (DuckDB's errors run to several), at most 200 characters."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_where(where: str) -> str:
    """A ``--where``: one SQL condition, checked by DuckDB's parser (the columns are checked against the run later);
    an empty or multi-statement one is refused. Returns it stripped."""
    import duckdb

    if not where.strip():
        raise UsageError("--where is empty; give an SQL condition, e.g. \"channel = 'CAM_FRONT' AND NOT night\"")
    try:
        statements = duckdb.extract_statements(where_statement(where))
    except duckdb.Error as exc:
        raise UsageError(f"filter {where!r} is not a valid SQL condition: {first_line(exc)}") from None
    if len(statements) != 1:
        raise UsageError(f"filter {where!r} must be one SQL condition (no ';' or extra statements)")
    return where.strip()


def parse_key_values(text: str, keys: Sequence[str], option: str) -> dict[str, str]:
    """``key=value,key=value`` (e.g. a ``job compare --variant``) → {key: value}: keys among ``keys``, each at most
    once, values non-empty (a value may hold ``=`` and ``:``, not ``,``); one-line UsageError naming what is wrong."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in str(text).split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key not in keys:
            raise UsageError(f"{option} {text!r}: unknown key {key!r}; valid keys: {', '.join(keys)}")
        if not sep or not value:
            raise UsageError(f"{option} {text!r}: {key} needs a value ({key}=…)")
        if key in out:
            raise UsageError(f"{option} {text!r}: {key} given twice")
        out[key] = value
    if not out:
        raise UsageError(f"{option} {text!r}: empty; write key=value pairs separated by commas, keys: {', '.join(keys)}")
    return out
