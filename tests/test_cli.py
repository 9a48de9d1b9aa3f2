"""The CLI layer: every option of every subcommand is checked before anything is read or written; exit codes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import TEST_MODEL
from job.cli import main

REPO = Path(__file__).resolve().parents[1]


_WHERE = {  # each subcommand's required options, pointing at an output that must stay unwritten
    "run": lambda src, out: ["--source", src, *TEST_MODEL, "--out", out],
    "embed": lambda src, out: ["--source", src, *TEST_MODEL, "--out", out],
    "index": lambda src, out: ["--run", out],
    "merge": lambda src, out: ["--run", out],
    "project": lambda src, out: ["--run", out],
    "search": lambda src, out: ["--run", out, "--text", "x"],
    "serve": lambda src, out: ["--run", out],
    "status": lambda src, out: [out],
    "publish": lambda src, out: ["--run", out, "--to", out + "-copy"],
    "models": lambda src, out: [],
    "curate": lambda src, out: ["--run", out],
    "eval": lambda src, out: ["--run", out],
    "compare": lambda src, out: ["--source", src, "--out", out, "--variant", "model=ViT-S-32,pretrained=none"],
    "import": lambda src, out: ["--from", src, "--out", out],
}


def _refused(argv: list[str], image_dir: Path, out: Path, capsys) -> str:
    """Run the command; it must exit 2 with one line on stderr and leave ``out`` unwritten. Returns that line."""
    command, *rest = argv
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([command, *_WHERE[command](str(image_dir), str(out)), *rest]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert not out.exists() and not Path(str(out) + "-copy").exists()
    return err[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--fit-sample", "0"], "--fit-sample 0 must be 2 or more"),
        (["run", "--n-neighbors", "1"], "--n-neighbors 1 must be 2 or more"),
        (["run", "--min-dist", "-0.5"], "--min-dist -0.5 must be 0.0 or more"),
        (["run", "--n-epochs", "0"], "--n-epochs 0 must be 1 or more"),
        (["run", "--target-recall", "1.5"], "--target-recall 1.5 must be in (0, 1]"),
        (["run", "--shard-seconds", "0"], "--shard-seconds 0.0 must be in (0, 604800]"),
        (["run", "--max-memory", "lots"], "'lots' is not a size"),
        # the bug: both passed the config's grammar, the whole run was embedded, then the index step refused them
        (["run", "--max-memory", "4Gi"], "'4Gi' is not a size"),
        (["run", "--max-memory", "0"], "'0' must be more than 0 bytes"),
        (["merge", "--max-memory", "4Gi"], "'4Gi' is not a size"),
        (["index", "--max-memory", "0"], "'0' must be more than 0 bytes"),
        (["run", "--backend", "tsne"], "unknown UMAP backend 'tsne'"),
        (["run", "--channels", "LIDAR_TOP"], "--channels 'LIDAR_TOP' is not a camera"),
        (["run", "--channels", "cam_front,CAM_SIDE"], "--channels 'CAM_SIDE' is not a channel"),
        (["run", "--image-size", "0"], "must be a positive integer"),
        (["embed", "--batch-size", "0"], "must be a positive integer"),
        (["embed", "--workers", "-1"], "must be 0 or more"),
        (["embed", "--limit", "0"], "must be a positive integer"),
        (["embed", "--shard-size", "0"], "must be a positive integer"),
        (["index", "--nlist", "0"], "must be a positive integer"),
        (["index", "--queries", "0"], "must be a positive integer"),
        (["index", "--pq-bits", "17"], "--pq-bits 17 must be in 1..16"),
        (["index", "--search-params", "nprobe=lots"], "--search-params 'nprobe=lots' is not NAME=INT"),
        (["index", "--refine", "PQ4"], "unknown --refine 'PQ4'"),
        (["index", "--target-recall", "0"], "--target-recall 0.0 must be in (0, 1]"),
        (["merge", "--target-recall", "2"], "--target-recall 2.0 must be in (0, 1]"),
        (["merge", "--fit-sample", "1"], "--fit-sample 1 must be 2 or more"),
        (["project", "--fit-sample", "1"], "--fit-sample 1 must be 2 or more"),
        (["project", "--n-epochs", "0"], "--n-epochs 0 must be 1 or more"),
        (["search", "-k", "0"], "must be a positive integer"),
        (["search", "--search-params", "efSearch"], "--search-params 'efSearch' is not NAME=INT"),
        (["search", "--channel", "CAM_TOP"], "--channel 'CAM_TOP' is not a channel"),
        (["serve", "--port", "70000"], "--port 70000 must be in 1..65535"),
        (["status", "--lines", "0"], "must be a positive integer"),
        (["status", "--watch", "0"], "--watch 0.0 must be in (0, 86400]"),
    ],
)
def test_bad_numbers_exit_2_at_once_and_write_nothing(image_dir: Path, tmp_path: Path, capsys, argv, message) -> None:
    line = _refused([*argv, "--no-progress"], image_dir, tmp_path / "out", capsys)
    assert message in line, line


def _numeric_options() -> list[tuple[str, str]]:
    """(subcommand, option) for every option of every subcommand that takes a number or a size."""
    from job.cli import build_parser
    from job.cli.options import number, size

    numeric = {int, float, number, size}
    found = []
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():  # type: ignore[union-attr]
        for action in parser._actions:
            kind = action.type
            if action.option_strings and (kind in numeric or getattr(kind, "__name__", "") == "integer"):
                found.append((name, max(action.option_strings, key=len)))
    return found


NUMERIC_OPTIONS = _numeric_options()


def test_every_numeric_option_is_covered() -> None:
    assert len(NUMERIC_OPTIONS) >= 30 and ("run", "--max-memory") in NUMERIC_OPTIONS, NUMERIC_OPTIONS


@pytest.mark.parametrize(("command", "option"), NUMERIC_OPTIONS)
def test_every_numeric_option_refuses_a_non_number(image_dir: Path, tmp_path: Path, capsys, command: str,
                                                   option: str) -> None:
    line = _refused([command, option, "lots"], image_dir, tmp_path / "out", capsys)
    assert option in line and "lots" in line, line


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
