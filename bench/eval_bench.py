"""Evaluation benchmark: ground truth from trainval-sized annotation tables, and scoring 204,894 vectors.

    python bench/eval_bench.py --part labels     # generate trainval-sized tables (~3 GB of JSON), derive the labels
    python bench/eval_bench.py --part score      # a 204,894-row run of two 768-d vector columns, job eval's scoring
    python bench/eval_bench.py --part text       # the ViT-L-14 text tower on the shipped prompt table (random weights)

Tables (``--part labels``): trainval's sizes and schema: 850 scenes of 40 samples (34,000 samples), 12 sensors each
(204,000 camera keyframes), sweeps up to 2.6M sample_data rows and as many ego poses, 1.2M sample_annotation rows
(35 boxes per sample within 60 m of the car, visibility 1-4, 0-2 attributes), 64k instances, 10,200 calibrated
sensors. Each measured step runs in a child process that reports its own time and peak RSS (``ru_maxrss``) above
its baseline after imports. Results are merged into ``--json`` (default bench/results/eval_bench.json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results" / "eval_bench.json"
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
YAW = (0.0, -0.96, -1.92, math.pi, 1.92, 0.96)
SENSORS = (*CAMERAS, "LIDAR_TOP", "RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT",
           "RADAR_BACK_RIGHT")
CATEGORY_SHARE = {  # share of boxes (roughly nuScenes')
    "vehicle.car": 0.42, "human.pedestrian.adult": 0.18, "movable_object.barrier": 0.12,
    "movable_object.trafficcone": 0.08, "vehicle.truck": 0.06, "vehicle.bus.rigid": 0.012, "vehicle.trailer": 0.02,
    "vehicle.construction": 0.012, "vehicle.motorcycle": 0.01, "vehicle.bicycle": 0.01, "static_object.bicycle_rack":
    0.02, "human.pedestrian.child": 0.002, "human.pedestrian.construction_worker": 0.008, "movable_object.debris":
    0.003, "movable_object.pushable_pullable": 0.006, "human.pedestrian.personal_mobility": 0.001,
    "human.pedestrian.police_officer": 0.0006, "human.pedestrian.stroller": 0.0007, "human.pedestrian.wheelchair":
    0.0005, "vehicle.bus.bendy": 0.001, "vehicle.emergency.ambulance": 0.0002, "vehicle.emergency.police": 0.0005,
    "animal": 0.0005}
ATTRIBUTES = ("cycle.with_rider", "cycle.without_rider", "pedestrian.moving", "pedestrian.sitting_lying_down",
              "pedestrian.standing", "vehicle.moving", "vehicle.parked", "vehicle.stopped")


def tok(kind: int, i: int) -> str:
    """A 32-hex token, unique per (kind, i), cheap to make."""
    return f"{kind:04x}{i:028x}"


def _q(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _mul(a: list[float], b: list[float]) -> list[float]:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return [aw * bw - ax * bx - ay * by - az * bz, ax * bw + aw * bx - az * by + ay * bz,
            ay * bw + az * bx + aw * by - ax * bz, az * bw - ay * bx + ax * by + aw * bz]


def _dump(path: Path, rows: Any) -> None:
    """Rows written like the official tables (indent 0: one field per line), streamed."""
    with open(path, "w") as f:
        f.write("[\n")
        first = True
        for r in rows:
            f.write(("" if first else ",\n") + json.dumps(r, indent=0))
            first = False
        f.write("\n]")


def write_tables(d: Path, scenes: int = 850, samples_per_scene: int = 40, sd_rows: int = 2_600_000,
                 boxes: int = 1_200_000, seed: int = 0) -> dict[str, Any]:
    """Trainval-sized annotation tables in ``d``; returns counts and the keyframe camera tokens' metadata."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    n_samples = scenes * samples_per_scene
    cats = list(CATEGORY_SHARE)
    p = np.array(list(CATEGORY_SHARE.values()))
    _dump(d / "category.json", [{"token": tok(1, i), "name": c, "description": c, "index": i} for i, c in enumerate(cats)])
    _dump(d / "attribute.json", [{"token": tok(2, i), "name": a, "description": a} for i, a in enumerate(ATTRIBUTES)])
    _dump(d / "visibility.json", [{"token": str(i + 1), "level": lv, "description": lv}
                                  for i, lv in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))])
    _dump(d / "sensor.json", [{"token": tok(3, i), "channel": s, "modality": "camera" if s.startswith("CAM") else
                               s.split("_")[0].lower()} for i, s in enumerate(SENSORS)])
    cs = []
    for sc in range(scenes):
        for i, s in enumerate(SENSORS):
            cam = s.startswith("CAM")
            cs.append({"token": tok(4, sc * 12 + i), "sensor_token": tok(3, i),
                       "translation": [1.7 * math.cos(YAW[i]) if cam else 0.9, math.sin(YAW[i]) if cam else 0.0, 1.5],
                       "rotation": _mul(_q(YAW[i]), [0.5, -0.5, 0.5, -0.5]) if cam else [1.0, 0, 0, 0],
                       "camera_intrinsic": [[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]] if cam else []})
    _dump(d / "calibrated_sensor.json", cs)
    # ego poses: one per sample_data row; the car drives 8 m/s along its heading in each scene
    heading = rng.uniform(-math.pi, math.pi, scenes)
    keyframes = n_samples * len(SENSORS)
    sweeps = max(0, sd_rows - keyframes)
    sweep_sample = np.sort(rng.integers(0, n_samples, sweeps))
    sweep_sensor = rng.integers(0, len(SENSORS), sweeps)

    def pose_of(sample: int, dt: float) -> tuple[list[float], list[float]]:
        sc = sample // samples_per_scene
        s = (sample % samples_per_scene) * 4.0 + 8.0 * dt
        return ([1000.0 * (sc % 30) + s * math.cos(heading[sc]), 1000.0 * (sc // 30) + s * math.sin(heading[sc]), 0.0],
                _q(float(heading[sc])))

    def sd_rows_iter(poses: bool) -> Any:
        j = 0
        for smp in range(n_samples):
            for i, s in enumerate(SENSORS):
                k = smp * 12 + i
                t, q = pose_of(smp, 0.0)
                if poses:
                    yield {"token": tok(5, k), "timestamp": 1531883530000000 + smp * 500000, "rotation": q,
                           "translation": t}
                else:
                    yield {"token": tok(6, k), "sample_token": tok(7, smp), "ego_pose_token": tok(5, k),
                           "calibrated_sensor_token": tok(4, (smp // samples_per_scene) * 12 + i),
                           "timestamp": 1531883530000000 + smp * 500000, "fileformat": "jpg", "is_key_frame": True,
                           "height": 900, "width": 1600, "filename": f"samples/{s}/x__{s}__{k}.jpg", "prev": "",
                           "next": ""}
            while j < sweeps and sweep_sample[j] == smp:
                k = keyframes + j
                t, q = pose_of(smp, 0.08 * (1 + j % 5))
                i = int(sweep_sensor[j])
                if poses:
                    yield {"token": tok(5, k), "timestamp": 1531883530000000 + smp * 500000 + 1, "rotation": q,
                           "translation": t}
                else:
                    yield {"token": tok(6, k), "sample_token": tok(7, smp), "ego_pose_token": tok(5, k),
                           "calibrated_sensor_token": tok(4, (smp // samples_per_scene) * 12 + i),
                           "timestamp": 1531883530000000 + smp * 500000 + 1, "fileformat": "jpg",
                           "is_key_frame": False, "height": 900, "width": 1600,
                           "filename": f"sweeps/{SENSORS[i]}/x__{SENSORS[i]}__{k}.jpg", "prev": "", "next": ""}
                j += 1

    _dump(d / "ego_pose.json", sd_rows_iter(True))
    _dump(d / "sample_data.json", sd_rows_iter(False))
    n_inst = boxes // 19
    inst_cat = rng.choice(len(cats), n_inst, p=p / p.sum())
    _dump(d / "instance.json", ({"token": tok(8, i), "category_token": tok(1, int(inst_cat[i])), "nbr_annotations": 19,
                                 "first_annotation_token": "", "last_annotation_token": ""} for i in range(n_inst)))
    box_sample = np.sort(rng.integers(0, n_samples, boxes))
    box_inst = rng.integers(0, n_inst, boxes)
    ang, dist = rng.uniform(-math.pi, math.pi, boxes), 60 * np.sqrt(rng.uniform(0.004, 1, boxes))
    vis = rng.integers(1, 5, boxes)
    yaw = rng.uniform(-math.pi, math.pi, boxes)
    n_attr = rng.integers(0, 3, boxes)

    def boxes_iter() -> Any:
        for b in range(boxes):
            t, _ = pose_of(int(box_sample[b]), 0.0)
            yield {"token": tok(9, b), "sample_token": tok(7, int(box_sample[b])), "instance_token":
                   tok(8, int(box_inst[b])), "visibility_token": str(int(vis[b])),
                   "attribute_tokens": [tok(2, (b + k) % 8) for k in range(int(n_attr[b]))],
                   "translation": [t[0] + float(dist[b] * math.cos(ang[b])), t[1] + float(dist[b] * math.sin(ang[b])),
                                   0.9], "size": [1.9, 4.6, 1.7], "rotation": _q(float(yaw[b])), "prev": "", "next": "",
                   "num_lidar_pts": 10, "num_radar_pts": 1}

    _dump(d / "sample_annotation.json", boxes_iter())
    return {"scenes": scenes, "samples": n_samples, "camera_keyframes": n_samples * len(CAMERAS),
            "sample_data_rows": keyframes + sweeps, "ego_pose_rows": keyframes + sweeps, "sample_annotation_rows": boxes,
            "instances": n_inst, "calibrated_sensor_rows": len(cs),
            "bytes": {f.name: f.stat().st_size for f in sorted(d.glob("*.json"))}}


_LABELS_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import fsspec, numpy as np, pyarrow as pa
from job.eval import derive_labels
from job.nuscenes import AnnotationBuilder, fill_from_dir
n_samples, per = int(sys.argv[3]), 40
cams = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
idx = np.array([s * 12 + i for s in range(n_samples) for i in range(6)])
tokens = [f"{6:04x}{int(k):028x}" for k in idx]
rows = pa.table({"id": pa.array(np.arange(len(idx)), pa.int64()), "sample_data_token": tokens,
                 "scene_token": [f"scene-{int(k) // 12 // per}" for k in idx],
                 "scene_description": ["Night, rain, parked cars" if (k // 12 // per) % 5 == 0 else "Intersection, peds"
                                       for k in idx],
                 "channel": [cams[int(k) % 12] for k in idx], "ego_speed": pa.array(np.full(len(idx), 8.0)),
                 "is_key_frame": pa.array(np.ones(len(idx), bool))})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
ann = fill_from_dir(fsspec.filesystem("file"), sys.argv[1], AnnotationBuilder("v1.0-trainval", tokens)).build()
t1 = time.perf_counter()
labels = derive_labels(ann, rows, 2)
t2 = time.perf_counter()
boxes = labels.column("boxes").to_numpy()
print(json.dumps({"images": labels.num_rows, "boxes_in_tables": ann.n_boxes, "image_box_pairs_tested":
                  int(sum(e - s for s, e in zip(*ann.box_ranges()))), "boxes_counted": int(boxes.sum()),
                  "images_with_a_box": int((boxes > 0).sum()), "read_tables_s": round(t1 - t0, 2),
                  "derive_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "rss_above_baseline_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
                  "annotation_arrays_mib": round(ann.nbytes() / 2**20, 1)}))
"""


def run_labels(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="eval-bench-", dir=args.tmp) as tmp:
        d = Path(args.tables) if args.tables else Path(tmp) / "v1.0-trainval"
        counts_file = d / "counts.json"
        if counts_file.exists():  # --tables: generated by an earlier run (they take minutes to write)
            counts = json.loads(counts_file.read_text())
        else:
            t0 = time.perf_counter()
            counts = write_tables(d, scenes=args.scenes, sd_rows=args.sd_rows, boxes=args.boxes)
            counts["written_s"] = round(time.perf_counter() - t0, 1)
            counts_file.write_text(json.dumps(counts))
        print(json.dumps(counts), flush=True)
        out = subprocess.run([sys.executable, "-c", _LABELS_CHILD, str(d), str(ROOT), str(counts["samples"])],
                             check=True, capture_output=True, text=True).stdout
        print(out, flush=True)
        return {"tables": counts, **json.loads(out.strip().splitlines()[-1])}


_SCORE_CHILD = r"""
import json, logging, resource, sys, time, zlib
sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[2] + "/bench")
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from job.config import EvalConfig, JobConfig
from job.eval import evaluate_run
from job.runfolder import RunLayout
logging.basicConfig(level=logging.WARNING)
labels = pq.read_table(sys.argv[1] + "/labels_in.parquet")
def encode(texts):  # a stand-in text tower (the real one: --part text)
    out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(768) for t in texts])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
res = evaluate_run(RunLayout(sys.argv[1]), JobConfig(), labels=labels, encode_text=encode)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # evaluate_run's peak, before the baseline reads vectors
# the straightforward baseline on a few image queries: full scores, the query's scene masked, a full argsort, the
# devkit's metrics on the sorted relevance (what job eval computes without partial sorts)
from job.eval.metrics import ap_at_k
from job.runfolder import read_vectors
x, vid = read_vectors(sys.argv[1] + "/embeddings.parquet")
pos = np.argsort(vid)[np.searchsorted(np.sort(vid), labels["id"].to_numpy())]
x = x[pos]
scene = np.asarray(labels["scene_token"].to_pylist())
car = np.array(["vehicle.car" in c for c in labels["categories"].to_pylist()])
qs = np.flatnonzero(car)[:40]
t1 = time.perf_counter()
for qi in qs:
    s = x @ x[qi]
    keep = scene != scene[qi]
    s = np.where(keep, s, -np.inf)
    rel = (car & keep)[np.argsort(-s, kind="stable")]
    r = int(rel.sum())
    ap_at_k(rel[None, :100], np.array([r])), rel[:r].sum() / r, rel[:5].mean()
naive = (time.perf_counter() - t1) / len(qs)
ours = res.timings["score_s"] / sum(s.queries for s in res.scores)
print(json.dumps({"seconds": round(dt, 2), "timings": res.timings, "per_query_ms": round(1e3 * ours, 2),
                  "baseline_per_query_ms": round(1e3 * naive, 2), "speedup": round(naive / ours, 2), "queries": {f"{s.task}/{s.column}": s.queries
                  for s in res.scores}, "peak_rss_mib": round(peak / 1024, 1),
                  "rss_above_baseline_mib": round((peak - base) / 1024, 1)}))
"""


def make_run(root: Path, n: int) -> dict[str, Any]:
    """A run folder of ``n`` rows: two 768-d CLIP-like vector columns, nuScenes-like metadata, labels beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from index_bench import clustered

    rng = np.random.default_rng(1)
    x = clustered(n, 768, seed=0)
    y = clustered(n, 768, seed=1)
    ids = np.arange(n, dtype=np.int64) * 7919 + 12345
    scene = np.arange(n) // 240  # 850 scenes of 240 keyframe images
    (root / "embeddings.parquet").mkdir(parents=True)
    part = 50_000
    for k, s in enumerate(range(0, n, part)):
        e = min(n, s + part)
        pq.write_table(pa.table({
            "id": ids[s:e], "path": [f"samples/CAM_FRONT/x__{i}.jpg" for i in range(s, e)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[s:e].ravel()), 768),
            "embedding_trained": pa.FixedSizeListArray.from_arrays(pa.array(y[s:e].ravel()), 768),
            "sample_data_token": [f"{i:032x}" for i in range(s, e)]}), root / "embeddings.parquet" /
            f"part-{k:05d}.parquet")
    cats = list(CATEGORY_SHARE)
    image_share = {c: min(0.75, 25 * v) for c, v in CATEGORY_SHARE.items()}  # share of images showing it
    present = {c: rng.random(n) < sh for c, sh in image_share.items()}
    categories = [[c for c in cats if present[c][i]] for i in range(n)]
    words = [["night", "rain"] if sc % 7 == 0 else ["intersection"] if sc % 3 == 0 else ["parking", "lot"]
             for sc in scene]
    speed = rng.choice([0.0, 8.0], n, p=[0.2, 0.8])
    labels = pa.table({"id": ids, "sample_data_token": [f"{i:032x}" for i in range(n)],
                       "scene_token": [f"scene-{s}" for s in scene], "channel": ["CAM_FRONT"] * n,
                       "categories": categories, "attributes": [[] for _ in range(n)],
                       "boxes": pa.array([len(c) for c in categories], pa.int32()), "scene_words": words,
                       "ego_speed": speed, "stopped": speed < 0.5})
    pq.write_table(labels, root / "labels_in.parquet")
    return {"rows": n, "categories": {c: int(v.sum()) for c, v in present.items()}}


def run_score(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="eval-bench-", dir=args.tmp) as tmp:
        info = make_run(Path(tmp), args.rows)
        out = subprocess.run([sys.executable, "-c", _SCORE_CHILD, tmp, str(ROOT)], check=True, capture_output=True,
                             text=True).stdout
        return {"run": {"rows": info["rows"]}, **json.loads(out.strip().splitlines()[-1])}


def run_text(args: argparse.Namespace) -> dict[str, Any]:
    from job.config import ModelConfig
    from job.eval import load_prompts
    from job.model.load import encode_text, load_model

    table = load_prompts()
    texts = sorted({p for sec in (table.category, table.scene, table.ego) for ps in sec.values() for p in ps})
    lm = load_model(ModelConfig(model="ViT-L-14", pretrained="none", device="cpu"))
    t0 = time.perf_counter()
    encode_text(lm, texts)
    return {"model": "ViT-L-14 (random weights: same compute)", "prompts": len(texts),
            "seconds": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("labels", "score", "text"), required=True)
    ap.add_argument("--scenes", type=int, default=850)
    ap.add_argument("--sd-rows", type=int, default=2_600_000)
    ap.add_argument("--boxes", type=int, default=1_200_000)
    ap.add_argument("--rows", type=int, default=204_894)
    ap.add_argument("--tmp", default=None, help="where the generated data goes (default: $TMPDIR)")
    ap.add_argument("--tables", default=None, help="--part labels: generate the tables here once, reuse them after")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    from index_bench import machine  # the CPU, cores, memory, faiss (a faiss mid-reinstall reads as "?")

    start = os.getloadavg()
    result = {"labels": run_labels, "score": run_score, "text": run_text}[args.part](args)
    result["machine"] = {**machine(), "load_average_at_start": start, "load_average_at_end": os.getloadavg()}
    print(json.dumps(result, indent=2))
    old = json.loads(args.json.read_text()) if args.json.exists() else {}
    old[args.part] = result
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(old, indent=2) + "\n")


if __name__ == "__main__":
    main()
