"""What every rehearsal case checks the same way: the job options the stack fixes, the real s3fs mount, the ending."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TEST_MODEL

from .fuse import probe, s3fs_unavailable
from .harness import VENV_BIN, Account, Instance


@pytest.fixture(autouse=True)
def no_instance_outlives_its_test():
    """A rehearsal test module's guard (import it there): nothing of an instance outlives its test."""
    yield
    Instance.cleanup_all()


@pytest.fixture(scope="module", name="account")
def account_fixture(s3_server: str, tmp_path_factory: pytest.TempPathFactory, nuscenes_dataroot) -> Account:
    """A rehearsal test module's account (import it there), its stand-in bucket holding the mini archive."""
    return make_account(s3_server, tmp_path_factory.mktemp("account"), nuscenes_dataroot)


def make_account(endpoint: str, root: Path, nuscenes_dataroot) -> Account:
    """The rehearsal's account with the mini archive in its stand-in nuScenes bucket; skips where it cannot run."""
    from nuscenes_fixture import pack_mini_archive

    if not (VENV_BIN / "aws").exists():
        pytest.skip("the aws CLI is not installed in the venv (pip install -e '.[dev]')")
    why = s3fs_unavailable()
    if why:
        pytest.skip(f"the rehearsal mounts the data with the real s3fs: {why}")
    acct = Account.create(endpoint, root)
    pack_mini_archive(nuscenes_dataroot, acct.archive("v1.0-mini.tgz"))
    acct.publish("v1.0-mini.tgz")
    why = probe(acct.nuscenes_bucket, endpoint, root / "probe")
    if why:
        pytest.skip(f"the rehearsal mounts the data with the real s3fs: {why}")
    return acct


def stack_args(account: Account, root: Path | None = None, **context: str) -> list[str]:
    """The job options the stack fixes (cdk.config.RunConfig.job_args) for the rehearsal's model and data: the mini
    archive on the s3fs mount (or under ``root``), the small test model with random weights, one camera unless ``channels`` says
    otherwise."""
    from cdk import constants as C
    from cdk.config import from_context

    ctx = {"run_id": "rehearsal", "dataset": "mini", "model": TEST_MODEL[1], "pretrained": TEST_MODEL[3],
           "channels": "CAM_FRONT", **context}
    args = from_context(ctx.get).job_args()
    base = str(root or account.mount)
    return [base + a[len(C.NUSCENES_MOUNT):] if a.startswith(C.NUSCENES_MOUNT + "/") else a for a in args]


def assert_read_through_s3fs(instance: Instance) -> None:
    """The script mounted the bucket with the real s3fs (a FUSE mount), read-only, anonymous, staging on scratch."""
    assert instance.mount_type == "fuse.s3fs", instance.mount_type
    argv = instance.s3fs
    assert argv[1:3] == [instance.account.nuscenes_bucket, str(instance.account.mount)], argv
    options = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-o"}
    scratch = instance.root / "scratch"  # the script's SCRATCH_FALLBACK: no instance store in the rehearsal
    for option in ("ro", "public_bucket=1", "allow_other", "umask=0022", f"tmpdir={scratch}/s3fs",
                   f"url={instance.account.endpoint}", "endpoint=us-east-1"):
        assert option in options, (option, argv)
    assert any(o.startswith("ensure_diskfree=") for o in options), argv


def assert_ended(instance: Instance, *, released: bool, apt: bool = False) -> None:
    """The run ends the same way whatever happened: logs in S3, the group released or not, then power-off."""
    calls = instance.calls()
    assert any(c.startswith("shutdown -h now") for c in calls), calls
    group = instance.account.capacity(instance.group)
    assert group == ((0, 0, 0) if released else (0, 1, 1)), group
    keys = instance.account.keys(f"{instance.run_prefix}_logs/")
    assert any(k.endswith(f"-{instance.instance_id}/bootstrap.log") for k in keys), keys
    assert instance.run_prefix + "_bootstrap.log" in instance.account.keys(instance.run_prefix + "_bootstrap")
    if not apt:
        assert not [c for c in calls if c.startswith("apt-get")]  # nothing installed from the network
