"""The real s3fs in the rehearsal: whether it can mount here, what is mounted, which s3fs serves it, unmounting."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def s3fs_unavailable() -> str | None:
    """Why the real s3fs cannot mount here (the reason to skip), or None."""
    if not shutil.which("s3fs"):
        return "s3fs is not installed (apt-get install s3fs; .ci/run installs it)"
    if not os.path.exists("/dev/fuse") or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "no usable /dev/fuse: FUSE is not available on this machine"
    conf = Path("/etc/fuse.conf")
    if os.geteuid() != 0 and not (conf.exists() and "\nuser_allow_other" in "\n" + conf.read_text(errors="replace")):
        return "s3fs -o allow_other (user_data.sh's option) needs root or user_allow_other in /etc/fuse.conf"
    return None


def mounted(path: Path) -> str | None:
    """The filesystem type mounted at ``path`` (e.g. ``fuse.s3fs``), or None."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == str(path):
            return fields[2]
    return None


def s3fs_command(mount: Path) -> list[str]:
    """The command line of the s3fs process serving ``mount`` (empty if none)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == "s3fs" and str(mount) in argv:
            return [a for a in argv if a]
    return []


def unmount(path: Path) -> None:
    """Take an s3fs mount down (lazily if something still holds it); s3fs exits with it."""
    if mounted(path):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def probe(bucket: str, endpoint: str, mountpoint: Path) -> str | None:
    """Mount ``bucket`` once with s3fs as the script will (anonymous, read-only): why it cannot, or None.

    /dev/fuse can exist where mounting is still not allowed (a container without CAP_SYS_ADMIN, say): that is a
    machine without FUSE for this purpose, not a failure of the script."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["s3fs", bucket, str(mountpoint), "-o", "ro", "-o", "public_bucket=1", "-o", f"url={endpoint}",
                           "-o", "endpoint=us-east-1", "-o", "use_path_request_style"],
                          capture_output=True, text=True, timeout=60)
    try:
        if proc.returncode != 0 or mounted(mountpoint) != "fuse.s3fs":
            return f"s3fs could not mount here (exit {proc.returncode}): {' '.join(proc.stderr.split())[:300]}"
        return None
    finally:
        unmount(mountpoint)
