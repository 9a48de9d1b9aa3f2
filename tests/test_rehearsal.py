"""A rehearsal of the cloud run: the real cdk/scripts/user_data.sh, end to end, on this machine (tests/rehearsal/).

Only hardware is stood in for: nvidia-smi, the docker engine (its `run` executes the image's real entrypoint, python -m
job, in the venv on the CPU with the same arguments, environment and mounts), apt and dpkg (this machine's s3fs is
the one "installed"), and the instance metadata service. S3, CloudWatch Logs and the Auto Scaling group are a moto
server reached by the real clients: the aws CLI in the script, the real s3fs (FUSE) that mounts a public stand-in of
the nuScenes bucket with the script's own options (the endpoint aside), from which the job reads the archive, s3fs
(the Python one) in the job for its outputs, boto3 for the log driver and the checks.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SLOW_MODEL
from nuscenes_fixture import make_nuscenes_fixture, pack_mini_archive
from rehearsal.checks import (  # noqa: F401 (account_fixture, no_instance_outlives_its_test: the module's fixtures)
    account_fixture,
    assert_ended,
    assert_read_through_s3fs,
    no_instance_outlives_its_test,
    stack_args,
)
from rehearsal.harness import Account, Instance

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = [pytest.mark.slow, pytest.mark.s3]

PHASES = ["check-gpu", "scratch", "mount", "image", "weights", "embed", "index", "project", "publish"]
IMAGES = 18  # keyframes of one camera in the test archive (tests/nuscenes_fixture.py)
SMALL = ["--batch-size", "4", "--shard-size", "8", "--n-epochs", "20"]  # a few shards, a quick UMAP
EARLY_SHARDS = ["--batch-size", "2", "--shard-size", "2"]  # the first shard lands within a second of embedding
ALL_CAMERAS = "CAM_FRONT,CAM_FRONT_LEFT,CAM_FRONT_RIGHT,CAM_BACK,CAM_BACK_LEFT,CAM_BACK_RIGHT"  # with sweeps: 216 images


def container_command(instance: Instance) -> list[str]:
    """What the job container ran: the arguments after the image in the `docker run --name vit-embed` call."""
    (line,) = [c for c in instance.docker_runs() if " --name vit-embed " in c]
    argv = shlex.split(line)
    return argv[argv.index(f"vit-embed:{instance.run_id}") + 1:]


@pytest.fixture(scope="module")
def reference(account: Account, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """An uninterrupted local run of the command the success case's container runs (same options, CPU)."""
    from job.cli import main

    out = tmp_path_factory.mktemp("reference") / "run"
    command = ["run", *stack_args(account, root=account.local, device="cpu"), *SMALL, "--out", str(out),
               "--weights-cache", f"s3://{account.bucket}/cache/weights", "--no-progress"]
    assert main(command) == 0
    return command, out


def _table(run_uri_or_dir: str, name: str):
    import s3fs

    if run_uri_or_dir.startswith("s3://"):
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)  # S3 changed since the last look
        return pq.read_table(f"{run_uri_or_dir.removeprefix('s3://')}{name}", filesystem=fs)
    return pq.read_table(Path(run_uri_or_dir) / name)


def assert_same_vectors(run_uri: str, local: Path) -> None:
    """Every image once, none missing, and the same vectors and metadata as the uninterrupted local run."""
    got = _table(run_uri, "embeddings.parquet").sort_by("id")
    want = _table(str(local), "embeddings.parquet").sort_by("id")
    ids = got.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an image was embedded twice"
    assert ids == want.column("id").to_pylist(), "images missing or extra"
    assert got.column_names == want.column_names
    for name in got.column_names:
        if name.startswith("embedding"):
            np.testing.assert_allclose(np.stack(got.column(name).to_numpy(zero_copy_only=False)),
                                       np.stack(want.column(name).to_numpy(zero_copy_only=False)), atol=1e-5)
        else:
            assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


# --- success ---------------------------------------------------------------------------------------------------------


def test_success_equals_a_local_run_and_walks_every_phase(account: Account, request, tmp_path: Path) -> None:
    inst = Instance(account, tmp_path / "i1", "ok", stack_args(account) + SMALL, account.group("g-ok")).start()
    command, local = request.getfixturevalue("reference")  # the local run, while the instance boots
    assert inst.wait() == 0, inst.console_text()

    # _STATUS went through every phase, in order, each with its time; progress reached the total.
    doc = inst.status()
    assert (doc["status"], doc["reason"]) == ("succeeded", ""), doc
    assert [p["phase"] for p in doc["phases"]] == PHASES
    times = [p["at"] for p in doc["phases"]]
    assert times == sorted(times) and doc["started_at"] <= times[0]
    assert doc["progress"]["done"] == IMAGES and doc["progress"]["failed"] == 0
    assert (doc["run_id"], doc["instance_id"], doc["instance_type"]) == ("ok", inst.instance_id, "g6e.xlarge")
    assert doc["data_source"] == f"s3fs mount of s3://{account.nuscenes_bucket} at {account.mount}"  # the first choice

    # The container: an init, a grace period, the GPU, the log driver; the run folder of record is S3.
    (run_line,) = [c for c in inst.docker_runs() if " --name vit-embed " in c]
    for flag in ("--init", "--stop-timeout 35", "--gpus all", "--log-driver=awslogs", f"awslogs-group={account.log_group}",
                 f"awslogs-stream=ok/{inst.instance_id}/job"):
        assert flag in run_line, flag
    ran = container_command(inst)
    assert ran[ran.index("--out") + 1] == inst.run_uri and "--publish" not in ran
    assert ran[ran.index("--weights-cache") + 1] == f"s3://{account.bucket}/cache/weights"
    # ... and it is the command of the local reference run, but for where it reads and writes and the GPU stand-in:
    # the stack's --device cuda (the job's own args; the script adds no --device) runs on the CPU here.
    assert ran[ran.index("--device") + 1] == "cuda" and ran.count("--device") == 1
    swap = {inst.run_uri: "OUT", str(command[command.index("--out") + 1]): "OUT", "cuda": "cpu"}
    same = [swap.get(a, a).replace(str(account.mount), "DATA").replace(str(account.local), "DATA") for a in ran]
    assert same == [swap.get(a, a).replace(str(account.local), "DATA") for a in command]

    # The archive came through the real s3fs mount of the stand-in bucket, with the script's options.
    assert_read_through_s3fs(inst)

    # The artifacts in S3 equal the local run's.
    keys = account.keys(inst.run_prefix)
    for name in ("manifest.json", "index/index.faiss", "index/index.json", "umap2d.parquet", "_run.json", "_STATUS"):
        assert inst.run_prefix + name in keys, name
    assert_same_vectors(inst.run_uri, local)
    remote_m = json.loads(account.text(inst.run_prefix + "manifest.json"))
    local_m = json.loads((local / "manifest.json").read_text())
    assert remote_m["counts"] == local_m["counts"] and remote_m["model"]["weights_sha256"] == local_m["model"]["weights_sha256"]
    for m in (remote_m, local_m):
        m["config"]["output"].pop("out")
    # The same options; the archive was read on the s3fs mount there, from a plain folder here.
    assert json.dumps(remote_m["config"]).replace(str(account.mount), "DATA") == \
        json.dumps(local_m["config"]).replace(str(account.local), "DATA")
    got_map = _table(inst.run_uri, "umap2d.parquet").sort_by("id")
    want_map = _table(str(local), "umap2d.parquet").sort_by("id")
    assert got_map.column("id").to_pylist() == want_map.column("id").to_pylist()
    got_index = json.loads(account.text(inst.run_prefix + "index/index.json"))
    want_index = json.loads((local / "index" / "index.json").read_text())
    assert [got_index[k] for k in ("n", "ids_sha256", "factory")] == [want_index[k] for k in ("n", "ids_sha256", "factory")]
    assert got_index["n"] == IMAGES

    # Logs: the bootstrap log and the job's, live in CloudWatch and copied next to the run; the group is released.
    bootstrap = account.log_stream(f"ok/{inst.instance_id}/bootstrap")
    assert any("phase mount" in line for line in bootstrap), bootstrap[-5:]
    assert any(f"embedded {IMAGES} images" in line for line in account.log_stream(f"ok/{inst.instance_id}/job"))
    (job_log,) = [k for k in account.keys(inst.run_prefix + "_logs/") if k.endswith("/job.log")]
    assert f"embedded {IMAGES} images" in account.text(job_log)
    assert_ended(inst, released=True)

    # A replacement for a finished run (the release did not happen, say) finds the manifest and does nothing.
    again = Instance(account, tmp_path / "i2", "ok", stack_args(account) + SMALL, account.group("g-ok-again"),
                     instance_id="i-0rehearsal00000002").start()
    assert again.wait() == 0, again.console_text()
    assert not again.docker_runs() and again.status()["status"] == "succeeded"
    assert again.status()["previous"]["status"] == "succeeded"
    assert_ended(again, released=True)


# --- failures --------------------------------------------------------------------------------------------------------


def test_job_failure_keeps_the_jobs_reason_and_releases_the_group(account: Account, tmp_path: Path) -> None:
    info = make_nuscenes_fixture(tmp_path / "broken", n_logs=1, scenes_per_log=1, samples_per_scene=2)
    for rel in info.keyframes + info.sweeps:
        (info.root / rel).write_bytes(b"not a jpeg")  # every image unreadable: the job fails with a DataError
    pack_mini_archive(info, account.archive("broken.tgz"))
    account.publish("broken.tgz")
    args = stack_args(account, sources="/mnt/nuscenes/public/v1.0/broken.tgz") + SMALL
    inst = Instance(account, tmp_path / "i1", "broken", args, account.group("g-broken")).start()
    assert inst.wait() == 1, inst.console_text()
    doc = inst.status()
    assert doc["status"] == "failed" and doc["reason"].startswith("DataError: no image could be embedded"), doc
    assert doc["phase"] == "embed" and "the job exited with code 1" in inst.console_text()
    assert_ended(inst, released=True)


def test_no_gpu_fails_before_the_job_and_keep_instance_skips_the_power_off(account: Account, tmp_path: Path) -> None:
    inst = Instance(account, tmp_path / "i1", "nogpu", stack_args(account), account.group("g-nogpu"),
                    env={"REHEARSAL_NO_GPU": "1"}, settings={"KEEP_INSTANCE": "true"}).start()
    assert inst.wait() == 1, inst.console_text()
    doc = inst.status()
    assert doc["status"] == "failed" and doc["reason"].startswith("nvidia-smi failed"), doc
    assert [p["phase"] for p in doc["phases"]] == ["check-gpu"]
    assert [c for c in inst.docker_runs() if "--name vit-embed " in c] == []
    # KEEP_INSTANCE (debugging): neither the group nor the power-off; the logs are copied all the same.
    assert account.capacity(inst.group) == (0, 1, 1) and not any(c.startswith("shutdown") for c in inst.calls())
    assert account.keys(inst.run_prefix + "_logs/")


def test_a_gpu_torch_cannot_use_fails_the_job_at_once_with_the_reason(account: Account, tmp_path: Path) -> None:
    """nvidia-smi sees the GPU, torch does not (here: this machine's torch, no CUDA device, exactly as on an instance
    whose driver is too old for the wheel's CUDA): the job, run with the stack's --device cuda, fails before it reads
    a source or loads a model, and _STATUS says why; the group is released, nothing retries for hours on the CPU."""
    inst = Instance(account, tmp_path / "i1", "nocuda", stack_args(account), account.group("g-nocuda"),
                    env={"REHEARSAL_TORCH_NO_GPU": "1"}).start()
    assert inst.wait() == 1, inst.console_text()
    doc = inst.status()
    assert doc["status"] == "failed" and doc["phase"] == "weights", doc
    assert doc["reason"].startswith("--device cuda: torch ") and "sees no CUDA device" in doc["reason"], doc["reason"]
    assert "valid choices here: auto, cpu" in doc["reason"]
    assert inst.logged_at("the job exited with code") - inst.logged_at("phase weights") <= 60  # seconds, not hours
    assert "--device cuda" in container_command_text(inst) and not _parts(account, inst)
    assert_ended(inst, released=True)


def container_command_text(instance: Instance) -> str:
    return " ".join(container_command(instance))


def test_missing_source_fails_before_the_build(account: Account, tmp_path: Path) -> None:
    args = stack_args(account, sources="/mnt/nuscenes/public/v1.0/v1.0-nothing.tgz")
    inst = Instance(account, tmp_path / "i1", "nosrc", args, account.group("g-nosrc")).start()
    assert inst.wait() == 1
    doc = inst.status()
    assert doc["status"] == "failed" and "not found on the s3fs mount" in doc["reason"] and doc["phase"] == "mount"
    assert not [c for c in inst.calls() if c.startswith("docker build")]
    assert_ended(inst, released=True)


def test_no_time_left_fails_before_the_job_starts(account: Account, tmp_path: Path) -> None:
    inst = Instance(account, tmp_path / "i1", "late", stack_args(account), account.group("g-late"), deadline_s=200).start()
    assert inst.wait() == 1
    doc = inst.status()
    assert doc["status"] == "failed" and doc["reason"].startswith("max_run_hours") and doc["phase"] == "weights"
    assert not [c for c in inst.docker_runs() if "--name vit-embed " in c]
    assert_ended(inst, released=True)


# --- interruptions ---------------------------------------------------------------------------------------------------


def _parts(account: Account, instance: Instance) -> list[str]:
    return [k for k in account.keys(instance.run_prefix + "embeddings.parquet/") if k.endswith(".parquet")]


def test_sigkill_of_the_instance_then_a_replacement_resumes_from_s3(account: Account, reference, tmp_path: Path) -> None:
    _, local = reference
    # the killed job leaves its lease behind: the replacement waits until it is stale (--lease-timeout, 10 min by
    # default; 4 s here)
    args = stack_args(account) + EARLY_SHARDS + ["--no-project", "--lease-timeout", "4"]
    first = Instance(account, tmp_path / "i1", "killed", args, account.group("g-killed")).start()
    first.wait_for(lambda: _parts(account, first), timeout=180, every=0.05)
    first.kill()  # the whole instance, at once: no trap runs, nothing is flushed
    assert first.status()["status"] == "running"  # nobody could say otherwise
    assert account.keys(first.run_prefix + "manifest.json") == []
    committed = _table(first.run_uri, "embeddings.parquet").num_rows
    assert 2 <= committed < IMAGES

    second = Instance(account, tmp_path / "i2", "killed", args, "g-killed", instance_id="i-0rehearsal00000002",
                      settings={"LEASE_TIMEOUT_S": "4"}).start()
    assert second.wait() == 0, second.console_text()
    if "another writer holds" in second.console_text():  # it booted within the 4 s the killed job's lease stays fresh
        assert "the other writer is done" in second.console_text()
    # (on a busy machine the boot takes longer and the lease is stale by then: the waiting itself is
    # test_a_second_instance_waits_while_the_first_still_writes)
    doc = second.status()
    assert doc["status"] == "succeeded" and doc["previous"]["status"] == "running" and doc["previous"]["phase"] == "embed"
    manifest = json.loads(account.text(second.run_prefix + "manifest.json"))
    counts = manifest["counts"]
    assert (counts["resumed_from_earlier_attempts"], counts["embedded_this_attempt"], counts["embedded"]) == (
        committed, IMAGES - committed, IMAGES)
    assert_same_vectors(second.run_uri, local)
    assert_ended(second, released=True)


def test_spot_notice_commits_records_interrupted_spot_and_keeps_the_group(account: Account, tmp_path: Path) -> None:
    args = stack_args(account, include_sweeps="true", channels=ALL_CAMERAS, model=SLOW_MODEL[1]) + EARLY_SHARDS  # the notice lands mid-embedding
    inst = Instance(account, tmp_path / "i1", "spot", args, account.group("g-spot"), market="spot").start()
    inst.wait_for(lambda: _parts(account, inst), timeout=180, every=0.05)
    inst.imds.spot_notice()
    assert inst.wait() == 75, inst.console_text()
    # The job stopped within 30 s of the signal (sent right after the reason was written down).
    assert inst.logged_at("the job exited with code 75") - inst.logged_at("stopping (spot)") <= 30
    doc = inst.status()
    assert doc["status"] == "interrupted" and doc["reason"].startswith("spot interruption: "), doc
    assert '"action": "terminate"' in doc["reason"]
    assert "the job exited with code 75" in inst.console_text()
    assert account.keys(inst.run_prefix + "manifest.json") == []
    assert _parts(account, inst), "what was embedded before the notice is committed"
    assert_ended(inst, released=False)  # the group replaces the instance; the new one resumes


def test_max_run_hours_stops_the_job_commits_and_releases_the_group(account: Account, tmp_path: Path) -> None:
    # 216 images at 448 px: minutes of work on a CPU however fast (the 36 of one camera were done in 26 s on CI),
    # so the stop at 25 s always lands while the job is still embedding.
    args = stack_args(account, include_sweeps="true", channels=ALL_CAMERAS, model=SLOW_MODEL[1]) + EARLY_SHARDS + ["--image-size", "448"]
    inst = Instance(account, tmp_path / "i1", "deadline", args, account.group("g-deadline"), deadline_s=30,
                    settings={"STOP_MARGIN_S": "0", "MIN_JOB_S": "5"}).start()
    assert inst.wait() == 75, inst.console_text()
    doc = inst.status()
    assert doc["status"] == "interrupted" and doc["reason"].startswith("max_run_hours (1 min) reached"), doc
    assert inst.logged_at("the job exited with code 75") - inst.logged_at("stopping (deadline)") <= 30
    assert account.keys(inst.run_prefix + "manifest.json") == []
    if "embed" in [p["phase"] for p in doc["phases"]]:  # on a busy machine the stop may come while the model loads
        assert _parts(account, inst), "the batch in flight when the stop came is committed"
        assert 0 < _table(inst.run_uri, "embeddings.parquet").num_rows < 6 * 2 * IMAGES
    assert_ended(inst, released=True)  # the run is over: nothing replaces the instance


def test_a_second_instance_waits_while_the_first_still_writes(account: Account, tmp_path: Path) -> None:
    """The group's replacement boots while the instance before it still runs the job (a spot notice not yet acted
    on, a resume started by hand): it touches nothing but a `waiting` note in _STATUS, and goes on once the first
    writer released the run (here: the spot notice stops it, it commits and exits 75)."""
    args = stack_args(account, include_sweeps="true", channels=ALL_CAMERAS, model=SLOW_MODEL[1]) + EARLY_SHARDS + ["--image-size", "448"]
    group = account.group("g-two")
    first = Instance(account, tmp_path / "i1", "two", args, group, market="spot").start()
    first.wait_for(lambda: _parts(account, first), timeout=180, every=0.05)
    second = Instance(account, tmp_path / "i2", "two", args, group, instance_id="i-0rehearsal00000002").start()
    second.wait_for(lambda: "another writer holds" in second.console_text(), timeout=120)
    doc = first.wait_for(lambda: (d := first.status()).get("waiting") and d, timeout=60)
    assert doc["status"] == "running" and doc["instance_id"] == first.instance_id, doc  # the first one's document
    assert doc["waiting"]["host"] == second.instance_id and "held by attempt" in doc["waiting"]["reason"], doc
    assert not second.docker_runs(), "the waiting instance started nothing"
    first.imds.spot_notice()
    assert first.wait() == 75, first.console_text()
    second.wait_for(lambda: "the other writer is done" in second.console_text(), timeout=120)
    second.wait_for(lambda: "phase check-gpu" in second.console_text(), timeout=60)  # now it is its turn
    assert second.console_text().index("another writer holds") < second.console_text().index("phase check-gpu")
