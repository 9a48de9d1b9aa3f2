"""``job eval --searchad DIR``: SearchAD's benchmark (CVPR 2026; devkit ``iis-esslingen/searchad_devkit``, MIT) on its
nuScenes part, scored with its own protocol, from the user's copy of its annotations (gated: never shipped here).

Read from ``DIR`` (the devkit's SearchAD folder): ``searchad_annotations_{val,train}.json`` (``{image path: [{"label",
"bbox": [x1, y1, x2, y2]}, …]}``), and, when present, ``default_queries/<label>.json`` (its ``supportsets.vision``:
the support images of the image→image task). Only paths of the ``nuscenes/`` sub-dataset are kept; they are mapped to
the run's rows by their dataroot-relative path (``nuscenes/samples/CAM_FRONT/x.jpg`` → ``samples/CAM_FRONT/x.jpg``).

The protocol, as the devkit at commit 512fcf323621e5e57aef13add07981fa1216c4e7 runs it
(``prepare_image_level_annotations.py``, ``evaluate.py``; checked in ``tests/test_eval_searchad.py``):

* an image is relevant to a label when it holds a box of that label of area ≥ ``MIN_BOX_AREA`` (50 px²); an image
  whose boxes of that label are all smaller is *ignored* for the label (left out of its ranking);
* per label, every image of the split (here: its nuScenes images the run holds) is ranked; MAP is the AP over that
  whole list (``mean_average_precision(targets, len(targets))``), with R-Precision, P@5, P@25 and P@100;
* the overall score is the mean over labels, and a mean per category (the label's first word: Animal, Human, …).

Labels without a relevant nuScenes image in the run are not scored (the devkit would count them as 0: its label set
spans 11 datasets). Text queries are the run's text tower on a prompt made from the label ("Object-Traffic-Cone" →
"a photo of a traffic cone."), or the prompt table's ``[searchad]`` entry; image queries are the mean vector of the
label's support images that the run holds (those images are left out of the ranking).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .. import fsutil
from ..errors import DataError, UsageError
from ..nuscenes import dataroot_relative
from .metrics import average_precision
from .rank import unit

log = logging.getLogger(__name__)

MIN_BOX_AREA = 50  # searchad/config/config.py
SPLITS = ("val", "train")
SUBDATASET = "nuscenes/"
P_KS = (5, 25, 100)
ANNOTATIONS = "searchad_annotations_{split}.json"
QUERIES_DIR = "default_queries"


@dataclass
class SearchAD:
    """The nuScenes part of SearchAD's annotations: per label, relevant and ignored dataroot-relative paths; the
    support images of each label; which splits were read."""

    root: str
    splits: list[str]
    images: set[str]
    relevant: dict[str, set[str]]
    ignored: dict[str, set[str]]
    support: dict[str, list[str]]


def check_dir(root: str) -> list[str]:
    """The splits whose annotation file ``root`` holds; UsageError (exit 2, before anything is written) when it holds
    none: not a SearchAD folder."""
    if not fsutil.exists(root):
        raise UsageError(f"--searchad {root!r} does not exist; valid: the SearchAD folder of its devkit (holding "
                         "searchad_annotations_val.json / searchad_annotations_train.json)")
    found = [s for s in SPLITS if fsutil.exists(fsutil.join(root, ANNOTATIONS.format(split=s)))]
    if not found:
        raise UsageError(f"--searchad {root!r} is not a SearchAD folder: it holds no "
                         f"{' or '.join(ANNOTATIONS.format(split=s) for s in SPLITS)}")
    return found


def _read_json(url: str) -> Any:
    try:
        return fsutil.read_json(url)
    except json.JSONDecodeError as exc:
        raise DataError(f"{url} is not valid JSON ({exc})") from None


def image_level(annotations: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(relevant, ignored) paths per label, as the devkit's ``load_annotations_and_filter_size``: a box counts when
    its area is at least ``MIN_BOX_AREA``; an image with boxes of a label but none that counts is ignored for it."""
    relevant: dict[str, set[str]] = {}
    ignored: dict[str, set[str]] = {}
    for path, boxes in annotations.items():
        valid: dict[str, int] = {}
        for box in boxes:
            label = box["label"]
            x1, y1, x2, y2 = box["bbox"][:4]
            valid[label] = valid.get(label, 0) + int((x2 - x1) * (y2 - y1) >= MIN_BOX_AREA)
        for label, count in valid.items():
            (relevant if count else ignored).setdefault(label, set()).add(path)
    return relevant, ignored


def load_searchad(root: str) -> SearchAD:
    """The nuScenes part of the SearchAD folder ``root`` (``check_dir`` first)."""
    splits = check_dir(root)
    images: set[str] = set()
    relevant: dict[str, set[str]] = {}
    ignored: dict[str, set[str]] = {}
    for split in splits:
        url = fsutil.join(root, ANNOTATIONS.format(split=split))
        data = _read_json(url)
        if not isinstance(data, dict):
            raise DataError(f"{url} is not a SearchAD annotation file (expected {{image path: [boxes]}})")
        ns = {dataroot_relative(p[len(SUBDATASET):]): v for p, v in data.items() if p.startswith(SUBDATASET)}
        images.update(ns)
        rel, ign = image_level(ns)
        for label, paths in rel.items():
            relevant.setdefault(label, set()).update(paths)
        for label, paths in ign.items():
            ignored.setdefault(label, set()).update(paths)
    support: dict[str, list[str]] = {}
    qdir = fsutil.join(root, QUERIES_DIR)
    if fsutil.exists(qdir):
        fs, path = fsutil.url_to_fs(qdir)
        for f in sorted(fs.ls(path, detail=False)):
            if not f.endswith(".json"):
                continue
            label = f.rsplit("/", 1)[-1][: -len(".json")]
            vision = ((_read_json(fsutil.join(qdir, label + ".json")) or {}).get("supportsets") or {}).get("vision")
            found = [dataroot_relative(p[len(SUBDATASET):]) for p in (vision or {}) if p.startswith(SUBDATASET)]
            if found:
                support[label] = found
    log.info("SearchAD %s (%s): %d nuScenes images, %d labels with a relevant one, %d with support images", root,
             ", ".join(splits), len(images), len(relevant), len(support))
    return SearchAD(root=root, splits=splits, images=images, relevant=relevant, ignored=ignored, support=support)


def label_prompt(label: str) -> str:
    """A text query from a SearchAD label: its words after the category, lower case."""
    words = label.split("-")[1:] or [label]
    return f"a photo of a {' '.join(w.lower() for w in words)}."


def score_label(scores: np.ndarray, paths: Sequence[str], relevant: set[str], ignored: set[str],
                leave_out: set[str] = frozenset()) -> dict[str, float]:  # type: ignore[assignment]
    """One label by the devkit's ``_evaluate_labels``: ignored images (and ``leave_out``) dropped, the rest ranked by
    score, MAP over the whole list, R-Precision, P@5/25/100."""
    keep = np.array([p not in ignored and p not in leave_out for p in paths], bool)
    order = np.argsort(-scores[keep], kind="stable")
    kept = np.asarray(paths, dtype=object)[keep][order]
    rel = np.array([p in relevant for p in kept], bool)
    n, r = len(rel), int(rel.sum())
    out = {"n": float(n), "relevant": float(r), "MAP": average_precision(rel),
           "R-Precision": float(rel[:r].sum() / r) if r else 0.0}
    for k in P_KS:
        out[f"P@{k}"] = float(rel[:k].sum() / min(k, n)) if n else float("nan")
    return out


def scored_labels(sa: SearchAD, paths: Sequence[str]) -> tuple[list[int], list[str]]:
    """(rows of the run that SearchAD holds, the labels with a relevant image among them)."""
    at = [i for i, p in enumerate(paths) if p in sa.images]
    present = {paths[i] for i in at}
    return at, sorted(lb for lb, ps in sa.relevant.items() if ps & present)


def text_vectors(labels: Sequence[str], encode: Callable[[Sequence[str]], np.ndarray],
                 prompts: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """One text query per label: its prompts (the table's ``[searchad]`` entry, else ``label_prompt``) embedded,
    averaged, normalised."""
    texts = {lb: prompts.get(lb) or (label_prompt(lb),) for lb in labels}
    flat = sorted({t for ts in texts.values() for t in ts})
    if not flat:
        return {}
    enc = dict(zip(flat, np.asarray(encode(flat), np.float32)))
    out = {}
    for lb, ts in texts.items():
        out[lb] = unit(np.mean([enc[t] for t in ts], axis=0))
    return out


def evaluate_column(sa: SearchAD, ranked: Sequence[str], x: np.ndarray, column: str, labels: Sequence[str],
                    text: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per label: the text task (when ``text`` has its query) and the image task (when the run holds some of its
    support images) over the images ``ranked`` (paths) with vectors ``x`` (unit length, same order)."""
    row_of = {p: j for j, p in enumerate(ranked)}
    per = []
    for lb in labels:
        tasks: list[tuple[str, np.ndarray, set[str]]] = []
        if lb in text:
            tasks.append(("searchad-text", text[lb], set()))
        sup = [p for p in sa.support.get(lb, []) if p in row_of]
        if sup:
            q = x[[row_of[p] for p in sup]].mean(axis=0)
            tasks.append(("searchad-image", unit(q), set(sup)))
        for task, q, leave_out in tasks:
            res = score_label(x @ q, ranked, sa.relevant[lb], sa.ignored.get(lb, set()), leave_out)
            per.append({"task": task, "column": column, "label": lb, **res})
    return per


def record(sa: SearchAD, matched: int, labels: list[str], per: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``searchad`` entry of ``eval.json``: per task and column, the means over labels and per category."""
    scores = []
    for task in ("searchad-text", "searchad-image"):
        for column in dict.fromkeys(r["column"] for r in per):
            rs = [r for r in per if r["task"] == task and r["column"] == column]
            if not rs:
                continue
            mean = {m: round(float(np.nanmean([r[m] for r in rs])), 5)
                    for m in ("MAP", "R-Precision", *(f"P@{k}" for k in P_KS))}
            cats: dict[str, list[float]] = {}
            for r in rs:
                cats.setdefault(r["label"].split("-")[0], []).append(r["MAP"])
            scores.append({"task": task, "column": column, "labels": len(rs), **mean,
                           "MAP_by_category": {c: round(float(np.mean(v)), 5) for c, v in sorted(cats.items())}})
    return {"dir": sa.root, "splits": sa.splits, "nuscenes_images": len(sa.images), "images_in_run": matched,
            "labels_scored": len(labels), "labels_without_relevant_images_in_run": sorted(set(sa.relevant) - set(labels)),
            "min_box_area": MIN_BOX_AREA, "scores": scores}


def searchad_lines(rec: dict[str, Any]) -> list[str]:
    """The lines ``job eval --searchad`` adds to its table."""
    lines = [f"SearchAD ({', '.join(rec['splits'])}): {rec['images_in_run']} of its {rec['nuscenes_images']} nuScenes "
             f"images in the run, {rec['labels_scored']} labels scored",
             f"{'task':<15} {'column':<18} {'labels':>6}  {'MAP':>6} {'R-Prec':>7} {'P@5':>6}"]
    for s in rec["scores"]:
        lines.append(f"{s['task']:<15} {s['column']:<18} {s['labels']:>6}  {s['MAP']:>6.3f} {s['R-Precision']:>7.3f} "
                     f"{s['P@5']:>6.3f}")
    return lines
