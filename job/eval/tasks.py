"""The tasks of one evaluation, from the labels: what is relevant to each query group (:class:`Truth`), the text
queries (categories, scene words, ego motion) and the image queries (sampled images per category, other scenes
relevant, their own scene left out of the ranking).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .queries import PromptTable, sample_query_rows
from .rank import Queries, unit

TEXT_TASKS = ("text", "scene", "ego")  # text queries: categories, scene words, ego motion
IMAGE_TASK = "image"


@dataclass
class Truth:
    """Relevance over the scored images (rows of the labels table): one boolean row per group."""

    groups: list[tuple[str, str]]  # (task, name) of each row of ``relevance``
    relevance: np.ndarray  # (groups, n) bool
    scenes: np.ndarray  # (n,) scene code of each image
    positives: dict[str, int]  # images per category (all categories, for the record)

    @property
    def n(self) -> int:
        return self.relevance.shape[1]

    def index(self, task: str, name: str) -> int:
        return self.groups.index((task, name))

    def names(self, task: str) -> list[str]:
        return [n for t, n in self.groups if t == task]


def _list_mask(column: pa.ChunkedArray | pa.Array, n: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """For a list<string> column: value -> boolean mask over the rows, and value -> count."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = col.flatten()
    owners = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    masks: dict[str, np.ndarray] = {}
    if len(flat):
        enc = pc.dictionary_encode(flat)
        codes = enc.indices.to_numpy(zero_copy_only=False)
        for code, name in enumerate(enc.dictionary.to_pylist()):
            m = np.zeros(n, bool)
            m[owners[codes == code]] = True
            masks[str(name)] = m
    return masks, {k: int(v.sum()) for k, v in masks.items()}


def build_truth(labels: pa.Table, prompts: PromptTable, min_positives: int) -> Truth:
    """Relevance of every query group asked: categories and scene entries with at least ``min_positives`` images,
    ego states likewise; the image task's groups are the categories (other scenes' images relevant)."""
    n = labels.num_rows
    cats, counts = _list_mask(labels.column("categories"), n)
    words, _ = _list_mask(labels.column("scene_words"), n)
    groups: list[tuple[str, str]] = []
    rows: list[np.ndarray] = []
    for name in sorted(cats):
        if counts[name] >= min_positives:
            groups.append(("category", name))
            rows.append(cats[name])
    for key in prompts.scene:
        mask = np.ones(n, bool)
        for w in key.lower().split():
            mask &= words.get(w, np.zeros(n, bool))
        if mask.sum() >= min_positives:
            groups.append(("scene", key))
            rows.append(mask)
    stopped = labels.column("stopped")
    for state in prompts.ego:  # unknown speed (a scene's first frame): neither stopped nor moving
        flag = stopped if state == "stopped" else pc.invert(stopped)
        mask = pc.fill_null(flag, False).to_numpy(zero_copy_only=False).astype(bool)
        if mask.sum() >= min_positives:
            groups.append(("ego", state))
            rows.append(mask)
    scene_col = pc.dictionary_encode(pc.fill_null(labels.column("scene_token"), "")).combine_chunks()
    scenes = scene_col.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    relevance = np.stack(rows) if rows else np.zeros((0, n), bool)
    return Truth(groups=groups, relevance=relevance, scenes=scenes, positives=dict(sorted(counts.items())))


def text_queries(truth: Truth, prompts: PromptTable,
                 encode: Callable[[Sequence[str]], np.ndarray]) -> dict[str, Queries]:
    """The text queries of each text task; every prompt of a query embedded, averaged and normalised."""
    plans: dict[str, list[tuple[str, tuple[str, ...]]]] = {"text": [], "scene": [], "ego": []}
    for kind, name in truth.groups:
        if kind == "category":
            plans["text"].append((name, prompts.for_category(name)))
        elif kind == "scene":
            plans["scene"].append((name, prompts.scene[name]))
        elif kind == "ego":
            plans["ego"].append((name, prompts.ego[name]))
    texts = sorted({p for plan in plans.values() for _, ps in plan for p in ps})
    if not texts:
        return {}
    vecs = dict(zip(texts, np.asarray(encode(texts), np.float32)))
    out = {}
    for task, plan in plans.items():
        if not plan:
            continue
        group_of = {"text": "category", "scene": "scene", "ego": "ego"}[task]
        qv = unit(np.stack([np.mean([vecs[p] for p in ps], axis=0) for _, ps in plan]).astype(np.float32))
        out[task] = Queries(task=task, names=[name for name, _ in plan], vectors=qv,
                            groups=np.array([truth.index(group_of, name) for name, _ in plan], np.int64),
                            prompts=[" | ".join(ps) for _, ps in plan])
    return out


def image_query_plan(truth: Truth, per_category: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(category of each query, its image's row, its group) for image→image: sampled per category."""
    names: list[str] = []
    qrows: list[np.ndarray] = []
    groups: list[int] = []
    for g, (kind, name) in enumerate(truth.groups):
        if kind != "category":
            continue
        picked = sample_query_rows(np.flatnonzero(truth.relevance[g]), truth.scenes, per_category, seed, name)
        names += [name] * len(picked)
        qrows.append(picked)
        groups += [g] * len(picked)
    rows = np.concatenate(qrows) if qrows else np.zeros(0, np.int64)
    return names, rows, np.array(groups, np.int64)


def image_queries(x: np.ndarray, truth: Truth, plan: tuple[list[str], np.ndarray, np.ndarray]) -> Queries:
    """The image queries of one vector column: each query image's own vector, its scene left out."""
    names, rows, groups = plan
    return Queries(task=IMAGE_TASK, names=names, vectors=x[rows] if len(rows) else np.zeros((0, x.shape[1]), np.float32),
                   groups=groups, exclude_scene=truth.scenes[rows], query_rows=rows)
