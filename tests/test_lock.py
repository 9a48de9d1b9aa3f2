"""One locked environment: requirements.lock pins every dependency, the test venv is exactly it, and the job image
installs exactly its runtime part (docker/requirements.txt: same versions, same hashes), nothing else."""
from __future__ import annotations

import importlib.metadata as md
import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
IMAGE_LOCK = REPO / "docker" / "requirements.txt"
DOCKERFILE = REPO / "docker" / "Dockerfile"
PROJECT = "vit-embedding-drivedata"
LOCK_PYTHON = (3, 11)  # the Makefile's LOCK_PYTHON; the Dockerfile's base must match


def parse_lock(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """``{name: (version, hashes)}`` of a hash-pinned requirements file (uv / pip-compile format)."""
    text = path.read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        assert m, f"{path.name}: not an exact pin: {line[:80]}"
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        pins[canonicalize_name(m.group(1))] = (m.group(3), hashes)
    return pins


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, frozenset[str]]]:
    return parse_lock(LOCK)


@pytest.fixture(scope="module")
def image_lock() -> dict[str, tuple[str, frozenset[str]]]:
    return parse_lock(IMAGE_LOCK)


# --- the lock itself ----------------------------------------------------------------------------------------------


def test_every_entry_is_pinned_with_hashes(lock, image_lock):
    for name, (version, hashes) in {**lock, **image_lock}.items():
        assert hashes, f"{name}=={version} has no hash"
    assert lock["torch"][0] == "2.14.1" and lock["torchvision"][0] == "0.29.1"


def test_lock_satisfies_every_pyproject_requirement(lock):
    """Edit a dependency list without `make lock` and this fails: the lock is the single source of versions."""
    env = {"python_version": f"{LOCK_PYTHON[0]}.{LOCK_PYTHON[1]}", "sys_platform": "linux", "platform_machine": "x86_64"}
    project = pyproject()
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    for extra, reqs in groups.items():
        for spec in reqs:
            req = Requirement(spec)
            if req.marker and not req.marker.evaluate({**env, "extra": extra}):
                continue
            name = canonicalize_name(req.name)
            assert name in lock, f"{spec} ({extra or 'dependencies'}) is not in requirements.lock: run make lock"
            assert req.specifier.contains(Version(lock[name][0]), prereleases=True), (
                f"requirements.lock has {name}=={lock[name][0]}, pyproject.toml wants {spec}: run make lock"
            )


def test_image_lock_is_the_runtime_part_of_the_lock(lock, image_lock):
    for name, pin in image_lock.items():
        assert lock.get(name) == pin, f"docker/requirements.txt {name} differs from requirements.lock: run make lock"
    runtime = {canonicalize_name(Requirement(r).name) for r in pyproject()["dependencies"]}
    assert runtime <= set(image_lock), runtime - set(image_lock)
    # Test and notebook tools stay out of the image.
    for dev_only in ("pytest", "moto", "aws-cdk-lib", "cfn-lint", "jupyterlab", "uv"):
        assert dev_only in lock and dev_only not in image_lock, dev_only


def test_lock_is_for_the_image_python():
    base = next(line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("FROM "))
    assert f":{LOCK_PYTHON[0]}.{LOCK_PYTHON[1]}-" in base
    makefile = (REPO / "Makefile").read_text()
    assert re.search(rf"^LOCK_PYTHON\s*:=\s*{LOCK_PYTHON[0]}\.{LOCK_PYTHON[1]}$", makefile, re.M)
    assert "--require-hashes --no-deps -r $(LOCK)" in makefile  # make setup installs the lock, nothing else


# --- the test environment is the lock -----------------------------------------------------------------------------


def test_this_venv_is_exactly_the_lock(lock):
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("not running in the project's .venv (make test)")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions()}
    installed.pop(canonicalize_name(PROJECT), None)  # the project itself, editable
    installed.pop("pip", None)  # the installer is the venv's own
    want = {name: version for name, (version, _) in lock.items()}
    extra = sorted(set(installed) - set(want))
    missing = sorted(set(want) - set(installed))
    wrong = sorted(f"{n} {installed[n]} != {want[n]}" for n in set(want) & set(installed) if installed[n] != want[n])
    assert not (extra or missing or wrong), f"run make setup: extra {extra}, missing {missing}, other versions {wrong}"


# --- the image installs exactly the image lock --------------------------------------------------------------------


def _dockerfile_pip_installs() -> list[list[str]]:
    """Every `pip install` command of the Dockerfile's RUN instructions, as argument lists."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for part in re.split(r"&&|;|\|\|", line[4:]):
            words = shlex.split(part)
            if "pip" in words and "install" in words:
                commands.append(words[words.index("install") + 1 :])
    return commands


def test_dockerfile_installs_only_the_image_lock():
    (args,) = _dockerfile_pip_installs()  # one install, and it is this one
    assert "--require-hashes" in args and "--no-deps" in args
    assert args[args.index("-r") + 1] == "requirements.txt"
    assert [a for a in args if not a.startswith("-") and a != "requirements.txt"] == []  # no loose package names
    assert "COPY docker/requirements.txt requirements.txt" in DOCKERFILE.read_text()
    assert "!docker/requirements.txt" in (REPO / ".dockerignore").read_text().splitlines()


@pytest.mark.slow
def test_dockerfile_install_step_resolves_to_exactly_the_image_lock(tmp_path, image_lock):
    """Run the Dockerfile's pip install into a fresh venv (dry run: nothing downloaded but metadata) and compare.

    Without ``--no-deps`` here, so pip also proves the set is closed: in hash-checking mode any dependency missing
    from the file is an error. The report's hashes are the files pip would install; each must be a locked hash.
    """
    (args,) = _dockerfile_pip_installs()
    args = [a for a in args if a != "--no-deps"]
    args[args.index("-r") + 1] = str(IMAGE_LOCK)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report), *args],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    got = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    assert got == {name: version for name, (version, _) in image_lock.items()}
    for i in installs:
        name = canonicalize_name(i["metadata"]["name"])
        sha = i["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        assert sha in image_lock[name][1], f"{name}: {i['download_info']['url']} is not a locked file"


# Job packages that run on your machine with an extra, never in the image: the notebook helpers (notebook extra)
# and the local search page (serve extra).
NOT_IN_IMAGE = ("viz", "serve")


def test_job_needs_nothing_outside_the_image_lock(image_lock):
    """Every job module the image runs imports with only the image's packages visible."""
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "job").rglob("*.py")
        if p.name != "__main__.py" and not set(NOT_IN_IMAGE) & set(p.relative_to(REPO / "job").parts)
    )
    script = textwrap.dedent(
        """
        import importlib, importlib.metadata as md, json, re, runpy, sys
        allowed = set(json.loads(sys.argv[1]))
        norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
        blocked = {m for m, dists in md.packages_distributions().items() if not any(norm(d) in allowed for d in dists)}
        blocked -= set(sys.stdlib_module_names) | {"job"}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ModuleNotFoundError(f"{name} is not in docker/requirements.txt", name=name)

        sys.meta_path.insert(0, Block())
        for module in json.loads(sys.argv[2]):
            importlib.import_module(module)
        sys.argv = ["job", "--help"]
        runpy.run_module("job", run_name="__main__")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(sorted(image_lock)), json.dumps(modules)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout


def test_setup_removes_what_the_lock_dropped_before_installing() -> None:
    """A package replaced by another that owns the same files (faiss-cpu → faiss-gpu: both install ``faiss/``) is
    uninstalled first; uninstalled after, it took the new one's files with it (``import faiss`` then lacked
    ``get_num_gpus``: seen here on the switch to faiss-gpu)."""
    recipe = Path(REPO / "Makefile").read_text().split("$(STAMP): $(LOCK) pyproject.toml", 1)[1].split("\n\n", 1)[0]
    uninstall = recipe.index("pip uninstall")
    install = recipe.index("pip install --quiet --require-hashes --no-deps -r $(LOCK)")
    assert uninstall < install
