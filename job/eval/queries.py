"""Which queries are asked: the prompt table (``prompts.toml``, editable, ``--prompts FILE``), the text queries it makes
for a run's labels, and the sampled query images of image→image retrieval.

Text: one query per category with at least ``min_positives`` images (prompts from the table's ``[category]``, else
"a photo of a <name>."), per ``[scene]`` entry whose words are in that many images' scene descriptions, per ``[ego]``
state. Image: per category with that many images in at least two scenes, up to ``image_queries`` images drawn at
random (seeded), the same images for every vector column.
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from .. import fsutil
from ..errors import UsageError

try:  # the standard library from Python 3.11; tomli (the same parser) on 3.10
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PROMPTS_FILE = "prompts.toml"
SECTIONS = ("category", "scene", "ego", "searchad")
EGO_STATES = ("stopped", "moving")


@dataclass(frozen=True)
class PromptTable:
    """The prompts of each text query, by section; where the table came from and its sha256."""

    category: dict[str, tuple[str, ...]]
    scene: dict[str, tuple[str, ...]]
    ego: dict[str, tuple[str, ...]]
    searchad: dict[str, tuple[str, ...]]
    source: str
    sha256: str

    def for_category(self, name: str) -> tuple[str, ...]:
        """The prompts of a category; a plain one for a category the table does not list."""
        return self.category.get(name) or (f"a photo of a {name.rsplit('.', 1)[-1].replace('_', ' ')}.",)


def load_prompts(path: str | None = None) -> PromptTable:
    """The prompt table: ``path`` (an edited copy, local or ``s3://``), else the one shipped with the job.
    A file that is missing or not a table of lists of strings is a UsageError naming it."""
    if path is None:
        data = resources.files(__package__).joinpath(PROMPTS_FILE).read_bytes()
        source = f"job/eval/{PROMPTS_FILE}"
    else:
        if not fsutil.exists(path):
            raise UsageError(f"--prompts {path!r} does not exist; start from job/eval/{PROMPTS_FILE}")
        fs, p = fsutil.url_to_fs(path)
        data = fs.cat_file(p)
        source = path
    try:
        raw = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prompts {source}: not a TOML file ({exc})") from None
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise UsageError(f"--prompts {source}: unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for section in SECTIONS:
        table: Any = raw.get(section, {})
        if not isinstance(table, dict):
            raise UsageError(f"--prompts {source}: [{section}] must be a table of name = [prompts]")
        entries = {}
        for name, prompts in table.items():
            if isinstance(prompts, str):
                prompts = [prompts]
            if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) and p.strip() for p in prompts)):
                raise UsageError(f"--prompts {source}: [{section}] {name!r} must be a non-empty list of prompts")
            entries[str(name)] = tuple(prompts)
        out[section] = entries
    bad = sorted(set(out["ego"]) - set(EGO_STATES))
    if bad:
        raise UsageError(f"--prompts {source}: [ego] {', '.join(bad)}: valid: {', '.join(EGO_STATES)}")
    return PromptTable(category=out["category"], scene=out["scene"], ego=out["ego"], searchad=out["searchad"],
                       source=source,
                       sha256=hashlib.sha256(data).hexdigest())


def sample_query_rows(positives: np.ndarray, scenes: np.ndarray, count: int, seed: int, name: str) -> np.ndarray:
    """Up to ``count`` rows of ``positives`` (row numbers) as query images, drawn with a seed of their own per
    ``name`` (adding a category never changes another's queries), only where another scene holds a positive too."""
    if len(positives) == 0 or len(np.unique(scenes[positives])) < 2:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    pick = rng.choice(len(positives), size=min(count, len(positives)), replace=False)
    return np.sort(positives[pick]).astype(np.int64)
