"""The deploy side's own lock (requirements-deploy.lock, `make deploy-setup`): deploying needs the CDK, cdk-nag and
boto3, never the job's stack (torch, its CUDA wheels, triton: Linux x86_64 only), so it installs on macOS (arm64 and
x86_64), Linux, WSL and Windows. Here: the lock is hash-pinned at the full lock's versions; it resolves for each of
those platforms (uv's resolution and pip's install, both for the target platform); a venv built from it alone by the
Makefile synthesizes the stack through the pinned CDK CLI and runs the preflight and the teardown against moto; and
nothing on that path imports a module outside the lock, torch least of all."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from test_lock import parse_lock

REPO = Path(__file__).resolve().parent.parent
DEPLOY_LOCK = REPO / "requirements-deploy.lock"
LOCK = REPO / "requirements.lock"
CDK_CLI = REPO / "node_modules" / ".bin" / "cdk"
PIP_CACHE = REPO / ".cache" / "pip"  # the Makefile's DEPLOY_PIP_CACHE: git-ignored, shared with `make deploy-setup`
# uv's target platforms and pip's wheel tags for them: macOS arm64 and x86_64, Windows, Linux (WSL is Linux).
PLATFORMS = {
    "aarch64-apple-darwin": "macosx_11_0_arm64",
    "x86_64-apple-darwin": "macosx_10_15_x86_64",
    "x86_64-pc-windows-msvc": "win_amd64",
    "x86_64-unknown-linux-gnu": "manylinux_2_28_x86_64",
}
MARKERS = {"aarch64-apple-darwin": ("darwin", "arm64"), "x86_64-apple-darwin": ("darwin", "x86_64"),
           "x86_64-pc-windows-msvc": ("win32", "AMD64"), "x86_64-unknown-linux-gnu": ("linux", "x86_64")}
# What the job needs and the deploy must not: any of these in the deploy lock is the job's stack leaking in.
JOB_STACK = ("torch", "torchvision", "triton", "open-clip-torch", "numpy", "faiss-cpu", "faiss-gpu", "pyarrow",
             "nvidia-cublas-cu12", "nvidia-cublas", "umap-learn", "s3fs")
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def deploy_group() -> list[Requirement]:
    return [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["dependency-groups"]["deploy"]]


def lock_markers() -> dict[str, str]:
    """``{name: marker}`` of the deploy lock's entries that carry one (universal resolution: ``; python_version…``)."""
    text = DEPLOY_LOCK.read_text().replace("\\\n", " ")
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+\s*;\s*([^\\#\n]+?)\s*(?:--hash|$)", text, re.M)
    return {canonicalize_name(name): marker.strip() for name, marker in found}


# --- the lock itself (no network) -----------------------------------------------------------------------------------


def test_deploy_lock_is_hash_pinned_at_the_full_locks_versions():
    deploy, full = parse_lock(DEPLOY_LOCK), parse_lock(LOCK)
    assert deploy and all(hashes for _, hashes in deploy.values())
    for name, (version, _) in deploy.items():
        if name in full:  # the tests ran with these versions: the user deploys with the same ones
            assert full[name][0] == version, f"{name}: deploy lock {version}, requirements.lock {full[name][0]}: make lock"
    assert {"aws-cdk-lib", "constructs", "cdk-nag", "boto3", "jsii"} <= set(deploy)
    assert not set(JOB_STACK) & set(deploy)


def test_deploy_lock_satisfies_the_deploy_group_and_the_group_keeps_the_cdk_extras_pins():
    deploy = parse_lock(DEPLOY_LOCK)
    for req in deploy_group():
        name = canonicalize_name(req.name)
        assert name in deploy and req.specifier.contains(Version(deploy[name][0])), f"{req}: make lock"
    # One set of CDK pins: the `cdk` extra (the test venv) says nothing the deploy group does not.
    cdk_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cdk"]
    assert {str(Requirement(r)) for r in cdk_extra} <= {str(r) for r in deploy_group()}


def test_make_targets_install_exactly_the_deploy_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "-m pip install --quiet --require-hashes --no-deps -r $(DEPLOY_LOCK)" in makefile
    assert "--group deploy --universal --generate-hashes" in makefile  # make lock resolves it for every platform
    for target in ("preflight: $(DEPLOY_STAMP)", "deploy: deploy-setup", "destroy: deploy-setup"):
        assert target in makefile, target
    assert "$(DEPLOY_PY) -m cdk.preflight" in makefile and "$(DEPLOY_PY) -m cdk.teardown" in makefile
    # make deploy hands cdk deploy what the preflight derived from the account (-c max_vcpus=N)
    assert "$(DEPLOY_PY) -m cdk.preflight --context-out $(PREFLIGHT_CONTEXT) $(ARGS)" in makefile
    assert "npx cdk deploy $(ARGS) $$(cat $(PREFLIGHT_CONTEXT))" in makefile
    assert json.loads((REPO / "cdk.json").read_text())["app"] == ".venv-deploy/bin/python app.py"
    assert re.search(r"^DEPLOY_VENV\s*\?=\s*\.venv-deploy$", makefile, re.M)


# --- nothing on the deploy path imports a module outside the lock (no network) --------------------------------------

DEPLOY_PATH = textwrap.dedent(
    """
    import importlib.metadata as md, json, re, sys, tempfile
    started = set(sys.modules)  # the interpreter's own start (site hooks such as setuptools' _distutils_hack)
    allowed = set(json.loads(sys.argv[1]))
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
    blocked = {m for m, dists in md.packages_distributions().items() if not any(norm(d) in allowed for d in dists)}
    blocked -= set(sys.stdlib_module_names) | {"job", "cdk", "app"}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"{name} is not in requirements-deploy.lock", name=name)

    sys.meta_path.insert(0, Block())
    import app  # noqa: F401  (cdk.json's app)
    from cdk.factory import cdk_json_context, create_app
    from cdk import preflight, teardown  # noqa: F401
    from cdk.config import from_context
    from cdk.preflight import Preflight
    for extra in ({"run_id": "instance"}, {"run_id": "batch", "engine": "batch", "shards": "2"}):
        app, _ = create_app({**cdk_json_context(), **extra}, outdir=tempfile.mkdtemp())
        app.synth()
    def no_credentials(service):
        raise RuntimeError("no credentials here")
    print(Preflight(from_context({"run_id": "x"}.get), no_credentials).run()[0].line())
    heavy = sorted(m for m in set(sys.modules) - started if m.split(".")[0] in blocked)
    print(json.dumps({"torch": "torch" in sys.modules, "heavy": heavy}))
    """
)


@pytest.mark.cdk
def test_the_deploy_path_imports_nothing_outside_the_deploy_lock():
    """In the full test venv (torch installed), with every module of a distribution outside the deploy lock blocked:
    the CDK app synthesizes both engines' stacks and the preflight runs. A torch import anywhere on that path (a cdk
    module importing a job module that imports torch, say) fails here, not on a user's Mac."""
    env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARS}
    env.update(AWS_REGION="ap-northeast-1", AWS_DEFAULT_REGION="ap-northeast-1", AWS_EC2_METADATA_DISABLED="true",
               JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", DEPLOY_PATH, json.dumps(sorted(parse_lock(DEPLOY_LOCK)))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, last = proc.stdout.strip().splitlines()[-2:]
    assert first.startswith("FAIL") and "no credentials here" in first
    assert json.loads(last) == {"torch": False, "heavy": []}


# --- the lock resolves for every platform the deploy runs on (PyPI) ------------------------------------------------


def _run_all(commands: dict, timeout: float = 600) -> dict:
    """Run the commands at once (each mostly waits on the package index) and collect their results."""
    env = {**os.environ, "PIP_CACHE_DIR": str(PIP_CACHE)}
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for k, c in commands.items()}
    done = {}
    for k, p in procs.items():
        out, err = p.communicate(timeout=timeout)
        done[k] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def _applies(marker: str | None, platform: str, python: str) -> bool:
    if not marker:
        return True
    from packaging.markers import Marker

    sys_platform, machine = MARKERS[platform]
    env = {**default_environment(), "sys_platform": sys_platform, "platform_machine": machine,
           "python_version": python, "python_full_version": f"{python}.0",
           "platform_system": {"darwin": "Darwin", "win32": "Windows", "linux": "Linux"}[sys_platform],
           "os_name": "nt" if sys_platform == "win32" else "posix"}
    return Marker(marker).evaluate(env)


@pytest.mark.slow
def test_uv_resolves_the_deploy_lock_for_every_platform():
    """uv resolves the locked pins for each target platform, on the oldest Python the deploy takes and a newer one:
    the same versions come back and nothing is missing (a dependency only some platform needs, e.g. one behind a
    sys_platform marker, would appear here)."""
    deploy, markers = parse_lock(DEPLOY_LOCK), lock_markers()
    targets = [(p, python) for p in PLATFORMS for python in ("3.10", "3.12")]
    results = _run_all({t: [sys.executable, "-m", "uv", "pip", "compile", str(DEPLOY_LOCK), "--python-platform", t[0],
                            "--python-version", t[1], "--no-header", "--no-annotate", "--quiet"] for t in targets})
    for (platform, python), proc in results.items():
        assert proc.returncode == 0, f"{platform} {python}: {proc.stderr[-2000:]}"
        got = dict(line.split("==", 1) for line in proc.stdout.split() if "==" in line)
        got = {canonicalize_name(n): v for n, v in got.items()}
        want = {n: v for n, (v, _) in deploy.items() if _applies(markers.get(n), platform, python)}
        assert got == want, (platform, python)


@pytest.mark.slow
def test_pip_installs_the_deploy_lock_on_macos_and_windows():
    """pip's own install (a dry run for the target platform, hash-checked, binary only): a locked file exists for each
    entry on macOS arm64 and x86_64 and on Windows (Python 3.12), the file pip picks is one the lock names."""
    deploy = parse_lock(DEPLOY_LOCK)
    commands = {}
    for platform, tag in PLATFORMS.items():
        if platform.endswith("linux-gnu"):
            continue  # Linux: the venv below is built for real
        commands[platform] = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                              "--target", str(REPO / ".cache" / "pip-dry-run"), "--platform", tag, "--python-version",
                              "3.12", "--only-binary=:all:", "--require-hashes", "--no-deps", "-r", str(DEPLOY_LOCK),
                              "--report", "-"]
    for platform, proc in _run_all(commands).items():
        assert proc.returncode == 0, f"{platform}: {proc.stderr[-2000:]}"
        installs = json.loads(proc.stdout[proc.stdout.index("{"):])["install"]
        got = {canonicalize_name(i["metadata"]["name"]): i for i in installs}
        assert set(got) == {n for n in deploy if _applies(lock_markers().get(n), platform, "3.12")}, platform
        for name, i in got.items():
            sha = i["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
            assert i["metadata"]["version"] == deploy[name][0] and sha in deploy[name][1], (platform, name)


# --- a venv from the deploy lock alone: synth, preflight, teardown (PyPI for the build, moto for AWS) --------------


@pytest.fixture(scope="module")
def deploy_venv(tmp_path_factory) -> Path:
    """`make deploy-setup` into a fresh folder: the Makefile's own recipe (Python version check, venv, hash-checked
    install of the lock alone, pip check), pip's downloads cached under .cache/pip (git-ignored)."""
    venv = tmp_path_factory.mktemp("deploy") / "venv"
    started = time.monotonic()
    proc = subprocess.run(["make", f"{venv}/.installed", f"DEPLOY_VENV={venv}", f"PYTHON={sys.executable}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"deploy venv built from {DEPLOY_LOCK.name} in {time.monotonic() - started:.0f} s")
    return venv


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARS and k != "PYTHONPATH"}
    env.update(AWS_EC2_METADATA_DISABLED="true", CDK_DISABLE_CLI_TELEMETRY="true",
               JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION="1", **extra)
    return env


@pytest.mark.slow
@pytest.mark.cdk
def test_a_venv_from_the_deploy_lock_alone_synthesizes_the_stack(deploy_venv: Path, tmp_path: Path):
    python = deploy_venv / "bin" / "python"
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    installed = {canonicalize_name(d["name"]) for d in json.loads(listed.stdout)} - {"pip", "setuptools"}
    assert installed == set(parse_lock(DEPLOY_LOCK)) - {n for n, m in lock_markers().items() if not _applies(
        m, "x86_64-unknown-linux-gnu", f"{sys.version_info[0]}.{sys.version_info[1]}")}
    assert CDK_CLI.exists(), "node_modules/.bin/cdk missing: run `npm ci` (make setup does)"
    app = json.loads((REPO / "cdk.json").read_text())["app"].replace(".venv-deploy", str(deploy_venv))
    for name, extra in (("instance", []), ("batch", ["-c", "engine=batch", "-c", "shards=3", "-c", "image=asset"])):
        out = tmp_path / name
        proc = subprocess.run([str(CDK_CLI), "synth", "--quiet", "--no-notices", "--app", app, "--output", str(out),
                               "-c", f"run_id=deploy-venv-{name}", *extra], cwd=REPO, capture_output=True, text=True,
                              timeout=600, env=_env(AWS_REGION="ap-northeast-1", AWS_DEFAULT_REGION="ap-northeast-1"))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        template = json.loads((out / "EmbeddingRun.template.json").read_text())
        types = {r["Type"] for r in template["Resources"].values()}
        assert ("AWS::AutoScaling::AutoScalingGroup" if name == "instance" else "AWS::Batch::JobQueue") in types
        report = json.loads((out / "validation-report.json").read_text())
        assert all(r["conclusion"] == "success" for r in report["pluginReports"])  # cdk-nag ran in that venv


@pytest.mark.slow
@pytest.mark.s3
def test_a_venv_from_the_deploy_lock_alone_runs_the_preflight_and_teardown_against_moto(deploy_venv: Path,
                                                                                      s3_server: str):
    import boto3

    from cdk import constants as C

    boto3.client("ssm", region_name="ap-northeast-1").put_parameter(
        Name=C.BOOTSTRAP_VERSION_PARAMETER, Value="28", Type="String", Overwrite=True)
    env = _env(AWS_ENDPOINT_URL=s3_server, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="ap-northeast-1")
    python = str(deploy_venv / "bin" / "python")
    proc = subprocess.run([python, "-m", "cdk.preflight", "-c", "run_id=pf"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    checks = [line for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in ("OK", "WARN", "FAIL")]
    assert len(checks) == 7, proc.stdout + proc.stderr
    by_name = {c[6:22].strip(): c for c in checks}
    assert by_name["credentials"].startswith("OK") and "account 123456789012" in by_name["credentials"]
    assert by_name["bootstrap"].startswith("OK") and "version 28" in by_name["bootstrap"]
    assert by_name["running run"].startswith("OK") and "this deploy creates it" in by_name["running run"]
    # moto serves no Service Quotas and no public DLAMI parameter: those two fail, each with its reason.
    assert by_name["GPU quota"].startswith("FAIL") and "could not read the G and VT vCPU quota" in by_name["GPU quota"]
    assert by_name["AMI"].startswith("FAIL") and "ParameterNotFound" in by_name["AMI"]
    assert proc.returncode == 1 and proc.stdout.splitlines()[-1] == "2 failed, " + proc.stdout.splitlines()[-1].split(", ")[1]
    proc = subprocess.run([python, "-m", "cdk.teardown"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "does not exist" in proc.stdout, proc.stdout + proc.stderr
