"""Reading a run's vectors into one matrix: peak memory and time of ``tables.read_vectors`` (streamed into a
preallocated matrix, what the index and UMAP steps and ``--npy`` use) vs ``embedding_matrix(read_table(…))`` (the
table, then a contiguous copy of its vector column: what the UMAP step and ``--npy`` used before).

    python bench/read_vectors_bench.py                   # 200k x 768 in 20 parts (~600 MB of vectors)
    python bench/read_vectors_bench.py --n 1400000 --parts 140

Each method runs 3 times, each in a fresh process (peak RSS is per process), interleaved; the growth of the
process's peak RSS over its size before reading is reported, with the matrix size and the ratio to the baseline.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
log = logging.getLogger("bench")

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from job.runfolder.tables import embedding_matrix, read_table, read_vectors
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if {method!r} == "read_table":
    t = read_table({url!r}, columns=["id", "embedding"]); ids = t.column("id").to_numpy(); x = embedding_matrix(t); del t
else:
    x, ids = read_vectors({url!r})
s = time.perf_counter() - t0
grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({{"seconds": s, "peak_growth_mib": grow, "matrix_mib": x.nbytes / 2**20}}))
"""


def write_dataset(folder: Path, n: int, d: int, parts: int) -> None:
    import pyarrow as pa

    from job.runfolder import write_table

    rng = np.random.default_rng(0)
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for p, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        x = rng.standard_normal((e - s, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        write_table(str(folder / f"part-{p:05d}.parquet"), pa.table({
            "id": pa.array(np.arange(s, e), pa.int64()),
            "path": pa.array([f"samples/CAM_FRONT/{i}.jpg" for i in range(s, e)]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d)}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--parts", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    results: dict[str, list[dict]] = {"read_table": [], "read_vectors": []}
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "embeddings.parquet"
        write_dataset(folder, args.n, args.dim, args.parts)
        for _ in range(3):
            for method in results:
                out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), method=method,
                                                                         url=str(folder))],
                                     check=True, capture_output=True, text=True).stdout
                results[method].append(json.loads(out.strip().splitlines()[-1]))
                log.info("%s: %s", method, results[method][-1])
    base = min(r["peak_growth_mib"] for r in results["read_table"])
    print(f"{args.n:,} x {args.dim} in {args.parts} parts; matrix {results['read_vectors'][0]['matrix_mib']:.0f} MiB")
    print("| method | peak RSS growth (best of 3) | x baseline | seconds (best of 3) |")
    print("|---|---:|---:|---:|")
    for method, rows in results.items():
        peak = min(r["peak_growth_mib"] for r in rows)
        print(f"| {method} | {peak:,.0f} MiB | {peak / base:.2f}x | {min(r['seconds'] for r in rows):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "dim": args.dim, "parts": args.parts, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
