"""The rehearsal's pieces: the account (moto: the artifacts bucket, a public stand-in of the nuScenes bucket, the log
group, the run's Auto Scaling group), the fake instance metadata service, and an "instance" that runs the real
user_data.sh in a sandbox folder; the script mounts the stand-in bucket with the real s3fs (FUSE), as on AWS.

An instance is a process group: ``kill()`` SIGKILLs all of it (the script, the docker shim, the job) as a lost
instance would; a new :class:`Instance` for the same run id is the group's replacement and resumes from S3. s3fs
daemonizes out of the group: ``cleanup()`` unmounts it (the real instance would power off).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, ClassVar

from .fuse import mounted, s3fs_command, unmount

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cdk" / "scripts" / "user_data.sh"
STUBS = Path(__file__).resolve().parent / "bin"
VENV_BIN = Path(sys.executable).parent  # the venv running the tests: its aws CLI and python stand in for the AMI's
REGION = "us-east-1"  # the moto server's; the script passes --region to every aws call
# What user_data.sh's s3fs needs besides its own options to reach the moto server (an IP endpoint: path-style).
S3FS_LOCAL_OPTIONS = "use_path_request_style"


class FakeImds:
    """IMDSv2 as the script uses it: a token (PUT /latest/api/token, required for every GET), instance-id,
    instance-type, and spot/instance-action (404 until :meth:`spot_notice`)."""

    def __init__(self, instance_id: str, instance_type: str = "g6e.xlarge") -> None:
        self.instance_id, self.instance_type = instance_id, instance_type
        self.action: dict[str, str] | None = None
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:  # noqa: N802
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._send(200, "rehearsal-token")
                else:
                    self._send(400)

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") != "rehearsal-token":
                    return self._send(401)
                answers = {"instance-id": imds.instance_id, "instance-type": imds.instance_type,
                           "spot/instance-action": json.dumps(imds.action) if imds.action else None}
                answer = answers.get(self.path.removeprefix("/latest/meta-data/"))
                self._send(200, answer) if answer is not None else self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spot_notice(self) -> None:
        """AWS decided to reclaim this spot instance in two minutes."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
        self.action = {"action": "terminate", "time": when}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Account:
    """What outlives an instance: the moto server's buckets, log group and Auto Scaling groups.

    ``nuscenes_bucket`` stands in for s3://motional-nuscenes: public-read objects under ``public/v1.0/``, which the
    script mounts read-only with s3fs at ``mount`` (its NUSCENES_MOUNT); ``local`` holds the same archives for runs
    made outside the instance.
    """

    endpoint: str
    bucket: str
    nuscenes_bucket: str
    log_group: str
    mount: Path  # the script's NUSCENES_MOUNT: empty until an instance mounts the stand-in bucket there
    local: Path  # the same archives as plain files
    source_zip: Path  # the job source asset the instance builds its image from
    launch_config: str = "rehearsal-lc"

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)

    @classmethod
    def create(cls, endpoint: str, root: Path) -> Account:
        import uuid

        suffix = uuid.uuid4().hex[:10]
        acct = cls(endpoint=endpoint, bucket=f"rehearsal-{suffix}", nuscenes_bucket=f"nuscenes-{suffix}",
                   log_group="/vit-embed/Rehearsal", mount=root / "mnt" / "nuscenes", local=root / "nuscenes",
                   source_zip=root / "src.zip")
        for bucket in (acct.bucket, acct.nuscenes_bucket):
            acct.client("s3").create_bucket(Bucket=bucket)
        logs = acct.client("logs")
        if not logs.describe_log_groups(logGroupNamePrefix=acct.log_group)["logGroups"]:
            logs.create_log_group(logGroupName=acct.log_group)
        asg = acct.client("autoscaling")
        if not asg.describe_launch_configurations(LaunchConfigurationNames=[acct.launch_config])["LaunchConfigurations"]:
            image = acct.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
            asg.create_launch_configuration(LaunchConfigurationName=acct.launch_config, ImageId=image,
                                            InstanceType="t3.micro")
        acct.mount.mkdir(parents=True)
        (acct.local / "public" / "v1.0").mkdir(parents=True)
        pack_source(acct.source_zip)
        return acct

    def archive(self, name: str) -> Path:
        """Where to write an archive ``public/v1.0/<name>`` before :meth:`publish` puts it in the stand-in bucket."""
        return self.local / "public" / "v1.0" / name

    def publish(self, name: str) -> None:
        """Put ``public/v1.0/<name>`` in the stand-in bucket, readable anonymously like the real one."""
        self.client("s3").upload_file(str(self.archive(name)), self.nuscenes_bucket, f"public/v1.0/{name}",
                                      ExtraArgs={"ACL": "public-read"})

    def group(self, name: str, *, start: bool = True) -> str:
        """A fresh group of at most one as the stack makes it (cdk/compute.py): created empty, then raised to one
        instance by the custom resource's call (``start=False``: not yet)."""
        from cdk.compute import start_call

        asg = self.client("autoscaling")
        asg.create_auto_scaling_group(AutoScalingGroupName=name, LaunchConfigurationName=self.launch_config, MinSize=0,
                                      MaxSize=1, DesiredCapacity=0, AvailabilityZones=[f"{REGION}a"])
        if start:
            asg.set_desired_capacity(**start_call(name))
        return name

    def capacity(self, name: str) -> tuple[int, int, int]:
        g = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
        return g["MinSize"], g["MaxSize"], g["DesiredCapacity"]

    def keys(self, prefix: str) -> list[str]:
        pages = self.client("s3").get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def text(self, key: str) -> str:
        return self.client("s3").get_object(Bucket=self.bucket, Key=key)["Body"].read().decode()

    def log_stream(self, name: str) -> list[str]:
        events = self.client("logs").get_log_events(logGroupName=self.log_group, logStreamName=name,
                                                    startFromHead=True)["events"]
        return [e["message"] for e in events]


def pack_source(path: Path) -> Path:
    """The job source asset (cdk/image.py ships the repository minus C.SOURCE_ASSET_EXCLUDES): what the image build
    needs, job/ docker/ pyproject.toml .dockerignore."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in ("pyproject.toml", ".dockerignore", "docker/Dockerfile", "docker/requirements.txt"):
            z.write(REPO / rel, rel)
        for p in sorted((REPO / "job").rglob("*.py")):
            z.write(p, p.relative_to(REPO).as_posix())
    return path


@dataclass
class Instance:
    """One instance of the run: a sandbox folder, its run.env and job.args, its IMDS, and the script's process."""

    account: Account
    root: Path
    run_id: str
    job_args: list[str]
    group: str
    instance_id: str = "i-0rehearsal00000001"
    market: str = "on-demand"
    deadline_s: float = 3600.0  # DEADLINE_EPOCH = start + this (the user-data's boot time + max_run_hours)
    settings: dict[str, str] = field(default_factory=dict)  # more run.env lines (overrides)
    env: dict[str, str] = field(default_factory=dict)  # more environment for the script (e.g. REHEARSAL_NO_GPU)
    proc: subprocess.Popen | None = None
    s3fs: list[str] = field(default_factory=list)  # the command line of the s3fs serving the mount, at cleanup
    mount_type: str | None = None  # what was mounted at the account's mount at cleanup (fuse.s3fs)
    live: ClassVar[list[Instance]] = []  # started and not yet cleaned up

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.imds = FakeImds(self.instance_id)

    @classmethod
    def cleanup_all(cls) -> None:
        """End every instance a test left running (it failed before waiting for it)."""
        for instance in list(cls.live):
            instance.cleanup()

    @property
    def run_prefix(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def run_uri(self) -> str:
        return f"s3://{self.account.bucket}/{self.run_prefix}"

    @property
    def docker_dir(self) -> Path:
        return self.root / "docker"

    def _run_env(self) -> str:
        a, r = self.account, self.root
        settings = {
            # what the stack writes (cdk/stack.py run_env + the group name)
            "REGION": REGION, "ARTIFACTS_BUCKET": a.bucket, "RUN_ID": self.run_id, "RUN_PREFIX": self.run_prefix,
            "LOG_GROUP": a.log_group, "MAX_RUN_MINUTES": str(max(1, round(self.deadline_s / 60))),
            "MARKET": self.market, "INSTANCE_TYPE": "g6e.xlarge,g6e.2xlarge", "IMAGE": "", "ECR_REGISTRY": "",
            "ECR_REGION": REGION, "SOURCE_ZIP": str(a.source_zip), "NUSCENES_BUCKET": a.nuscenes_bucket,
            "NUSCENES_REGION": REGION, "NUSCENES_MOUNT": str(a.mount),
            "WEIGHTS_CACHE": f"s3://{a.bucket}/cache/weights", "ASG_NAME": self.group,
            # what the user-data adds at boot
            "DEADLINE_EPOCH": str(int(time.time() + self.deadline_s)),
            # the sandbox: where the instance's files go, the fake IMDS, a quicker spot poll
            "LOG_FILE": str(r / "var" / "log" / "vit-embed.log"), "SYSTEMD_DIR": str(r / "systemd"),
            "WORK_DIR": str(r / "opt"), "SCRATCH_FALLBACK": str(r / "scratch"), "STATE_DIR": str(r / "run"),
            "IMDS_ENDPOINT": self.imds.endpoint, "SPOT_POLL_S": "1",
            # the stand-in nuScenes bucket on the moto server (user_data.sh's s3fs options otherwise), quick apt retries
            "NUSCENES_S3_URL": a.endpoint, "S3FS_EXTRA_OPTIONS": S3FS_LOCAL_OPTIONS, "APT_RETRY_S": "1",
            # the _STATUS rules the user-data downloads beside the script (cdk/compute.py): the repository's file
            "STATUS_RULES": str(REPO / "job" / "status" / "rules.py"), "LEASE_POLL_S": "1",
        }
        settings.update(self.settings)
        return "".join(f"{k}={v}\n" for k, v in settings.items())

    def start(self) -> Instance:
        for d in ("systemd", "docker"):
            (self.root / d).mkdir(exist_ok=True)
        env_file, args_file = self.root / "run.env", self.root / "job.args"
        env_file.write_text(self._run_env())
        args_file.write_text("".join(f"{a}\n" for a in self.job_args))
        env = {**os.environ, "PATH": f"{STUBS}:{VENV_BIN}:{os.environ['PATH']}", "REHEARSAL_REPO": str(REPO),
               "REHEARSAL_DOCKER_DIR": str(self.docker_dir), "AWS_MAX_ATTEMPTS": "2", **self.env}
        env.pop("AWS_DEFAULT_REGION", None)  # the script names its region
        self.console = open(self.root / "console.log", "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(["bash", str(SCRIPT), str(env_file), str(args_file)], env=env, cwd=self.root,
                                     stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started = time.monotonic()
        Instance.live.append(self)
        return self

    def wait(self, timeout: float = 300) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.cleanup()

    def wait_for(self, what: Callable[[], Any], timeout: float = 120, every: float = 0.1) -> Any:
        """Poll until ``what()`` is truthy while the script runs; fail with the console if it ends first."""
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = what()
            if got:
                return got
            if self.proc.poll() is not None:
                raise AssertionError(f"the script ended (exit {self.proc.returncode}) first:\n{self.console_text()}")
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout}s:\n{self.console_text()}")

    def kill(self) -> None:
        """The instance is gone at once (hardware failure, kernel hang, a hard reclaim): SIGKILL to all of it."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.cleanup()

    def cleanup(self) -> None:
        """Nothing of this instance may outlive it (watchers, the log forwarder): end its process group."""
        if self not in Instance.live:
            return
        Instance.live.remove(self)
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.mount_type, self.s3fs = mounted(self.account.mount), s3fs_command(self.account.mount)
        unmount(self.account.mount)
        self.console.close()
        self.imds.close()

    def console_text(self) -> str:
        return (self.root / "console.log").read_text(errors="replace")[-6000:]

    def logged_at(self, needle: str) -> float:
        """When the script logged its first line holding ``needle`` (epoch seconds, from the line's timestamp)."""
        import datetime as dt

        for line in (self.root / "console.log").read_text(errors="replace").splitlines():
            if needle in line and " vit-embed[" in line:
                stamp = dt.datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%SZ")
                return stamp.replace(tzinfo=dt.timezone.utc).timestamp()
        raise AssertionError(f"{needle!r} not in the script's log:\n{self.console_text()}")

    def calls(self) -> list[str]:
        path = self.docker_dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def docker_runs(self) -> list[str]:
        return [c for c in self.calls() if c.startswith("docker run ")]

    def status(self) -> dict:
        from job.status import read_status

        return read_status(self.run_uri).to_dict()

    def job_log(self) -> str:
        path = self.root / "opt" / "job.log"
        return path.read_text() if path.exists() else ""
