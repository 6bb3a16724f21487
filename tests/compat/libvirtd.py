# SPDX-License-Identifier: LGPL-2.1-or-later
"""Debian's unmodified libvirtd (node-device driver only) beside mdevd, on the emulated kernel.

libvirtd runs in a mount namespace of its own (`unshare --mount --propagation private`)
where the emulation is bound over /sys, the daemon's mdevctl directory over /etc/mdevctl.d
(libvirt watches it), and the test's private bus socket over /run/dbus/system_bus_socket
(libvirt runs `mdevctl` with a cleaned environment, so the front end finds the bus where the
system bus is). `mdevctl` first in its PATH is the front end. tmpfs covers libvirt's own
/run, /var/lib, /var/cache and /var/log directories; its socket is in a test directory, so
`virsh` runs from the test process. Recipe: shared/notes/libvirt-and-s390.md.

`SYSTEMD_DEVICE_VERIFY_SYSFS=0` lets libudev accept a /sys that is not sysfs (a FUSE mount).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LIBVIRTD = shutil.which("libvirtd", path="/usr/sbin:/usr/bin")
VIRSH = shutil.which("virsh", path="/usr/bin:/usr/sbin")
NODEDEV_DRIVER = Path(
    "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_nodedev.so"
)

_SESSION = r"""
import os, subprocess, sys
sysfs, mdevctl_dir, bus_socket, bindir, work = sys.argv[1:6]
if os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino:
    sys.exit("not in a mount namespace of its own: refusing to mount over /sys")
def mount(*args):
    subprocess.run(["mount", *args], check=True)
mount("--bind", sysfs, "/sys")
mount("--bind", mdevctl_dir, "/etc/mdevctl.d")
for directory in ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt",
                  "/run/dbus"):
    os.makedirs(directory, exist_ok=True)
    mount("-t", "tmpfs", "tmpfs", directory)
open("/run/dbus/system_bus_socket", "w").close()
mount("--bind", bus_socket, "/run/dbus/system_bus_socket")
env = {
    "PATH": bindir + ":/usr/sbin:/usr/bin:/sbin:/bin",
    "LIBVIRT_DRIVER_DIR": os.path.join(work, "drivers"),
    "SYSTEMD_DEVICE_VERIFY_SYSFS": "0",
    "HOME": work,
}
os.execve("/usr/sbin/libvirtd", ["libvirtd", "-f", os.path.join(work, "libvirtd.conf")], env)
"""


@dataclass
class Libvirtd:
    process: subprocess.Popen[bytes]
    work: Path

    @property
    def uri(self) -> str:
        return f"nodedev:///system?socket={self.work}/libvirt-sock"

    def virsh(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [VIRSH or "virsh", "-c", self.uri, *args],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def log(self) -> str:
        path = self.work / "libvirtd.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def running_libvirtd(sysfs: Path, mdevctl_dir: Path, bus_address: str, bindir: Path
                     ) -> Iterator[Libvirtd]:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="libvirtd-", dir="/tmp"))
    (work / "drivers").mkdir()
    (work / "drivers" / NODEDEV_DRIVER.name).symlink_to(NODEDEV_DRIVER)
    (work / "libvirtd.conf").write_text(
        'auth_unix_ro = "none"\nauth_unix_rw = "none"\n'
        f'unix_sock_dir = "{work}"\n'
        'log_filters = "1:node_device 1:util.command"\n'
        f'log_outputs = "1:file:{work}/libvirtd.log"\n'
    )
    socket = bus_address.split("path=", 1)[1].split(",", 1)[0]
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _SESSION,
         str(sysfs), str(mdevctl_dir), socket, str(bindir), str(work)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(work / "stderr", "wb"),  # noqa: SIM115 (the process owns it)
    )  # fmt: skip
    libvirtd = Libvirtd(process, work)
    try:
        deadline = time.monotonic() + 60
        while not (work / "libvirt-sock").exists() or libvirtd.virsh("nodedev-list").returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = (work / "stderr").read_text(errors="replace")
                raise AssertionError(f"libvirtd did not start:\n{stderr}\n{libvirtd.log()}")
            time.sleep(0.1)
        yield libvirtd
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(work, ignore_errors=True)


def available() -> bool:
    return bool(LIBVIRTD and VIRSH and NODEDEV_DRIVER.exists() and os.geteuid() == 0)
