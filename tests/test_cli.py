"""The CLI layer: every option of every subcommand is checked before anything is read or written; exit codes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import TEST_MODEL
from job.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--fit-sample", "0"], "--fit-sample 0 must be 2 or more"),
        (["run", "--n-neighbors", "1"], "--n-neighbors 1 must be 2 or more"),
        (["run", "--min-dist", "-0.5"], "--min-dist -0.5 must be 0.0 or more"),
        (["run", "--n-epochs", "0"], "--n-epochs 0 must be 1 or more"),
        (["run", "--target-recall", "1.5"], "--target-recall 1.5 must be in (0, 1]"),
        (["run", "--shard-seconds", "0"], "--shard-seconds 0.0 must be more than 0"),
        (["run", "--max-memory", "lots"], "--max-memory 'lots' is not a size"),
        (["run", "--backend", "tsne"], "unknown UMAP backend 'tsne'"),
        (["embed", "--batch-size", "0"], "must be a positive integer"),
        (["embed", "--workers", "-1"], "must be 0 or more"),
        (["embed", "--limit", "0"], "must be a positive integer"),
        (["embed", "--shard-size", "0"], "must be a positive integer"),
        (["index", "--nlist", "0"], "must be a positive integer"),
        (["index", "--queries", "0"], "must be a positive integer"),
        (["index", "--search-params", "nprobe=lots"], "--search-params 'nprobe=lots' is not NAME=INT"),
        (["index", "--refine", "PQ4"], "unknown --refine 'PQ4'"),
        (["index", "--target-recall", "0"], "--target-recall 0.0 must be in (0, 1]"),
        (["project", "--fit-sample", "1"], "--fit-sample 1 must be 2 or more"),
        (["project", "--n-epochs", "0"], "--n-epochs 0 must be 1 or more"),
        (["search", "-k", "0"], "must be a positive integer"),
        (["search", "--search-params", "efSearch"], "--search-params 'efSearch' is not NAME=INT"),
    ],
)
def test_bad_numbers_exit_2_at_once_and_write_nothing(image_dir: Path, tmp_path: Path, capsys, argv, message) -> None:
    out = tmp_path / "out"
    command, *rest = argv
    where = {
        "run": ["--source", str(image_dir), *TEST_MODEL, "--out", str(out)],
        "embed": ["--source", str(image_dir), *TEST_MODEL, "--out", str(out)],
        "index": ["--run", str(out)],
        "project": ["--run", str(out)],
        "search": ["--run", str(out), "--text", "x"],
    }[command]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([command, *where, *rest, "--no-progress"]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_data_fault_exits_1_with_its_reason(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rc = main(["embed", *TEST_MODEL, "--image-dir", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no image could be embedded" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_imports_point_one_way() -> None:
    """No stage imports the CLI; cdk/ imports only job.config (and other non-CLI modules) from the job."""
    offenders = []
    for path in sorted((REPO / "job").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("job/cli/") or rel == "job/__main__.py":
            continue
        if any(n == "job.cli" or n.startswith("job.cli.") for n in _imports(path)):
            offenders.append(rel)
    for path in sorted((REPO / "cdk").rglob("*.py")):
        if any(n == "job.cli" or n.startswith("job.cli.") for n in _imports(path)):
            offenders.append(path.relative_to(REPO).as_posix())
    assert offenders == []


def test_no_module_of_the_job_is_long() -> None:
    long = {p.relative_to(REPO).as_posix(): n for p in (REPO / "job").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert long == {}
