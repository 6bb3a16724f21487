# SPDX-License-Identifier: LGPL-2.1-or-later
"""A real systemd as PID 1, in private PID and mount namespaces, running the installed mdevd.

    with installed_tree() as root, running_sim("mtty") as sim:
        with systemd_container(root, sim.root) as container:
            container.run("systemctl", "start", "mdevd")

What is real: systemd 252 as the service manager (readiness, status, reload, watchdog,
restart, the unit's whole sandbox), systemd-journald, dbus-daemon with Debian's system.conf and
the installed policy and activation files (so bus activation goes through systemd), and
`make install`'s tree on top of the host's `/usr` and `/etc` (read-only and copy-on-write
overlays: nothing is written to the host). The one stand-in is the kernel: the emulated one is
mounted at `/sys/kernel/debug` (an empty directory of the real `/sys`, so the unit's sandbox
treats it exactly as sysfs), and the installed configuration points `sysfs_root` there.

systemd sees only the units in its own directory (`SYSTEMD_UNIT_PATH`): minimal targets and
links to the host's journald and D-Bus units and to the installed `mdevd.service`, so nothing
else of the host starts. Its `/run`, `/tmp`, `/var/tmp` and journal are tmpfs. The test's
network namespace is shared, so the emulated kernel's uevents reach udev monitors inside.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import REPO

SYSTEMD = Path("/lib/systemd/systemd")
#: The host's cgroup v2 hierarchy (unified or hybrid layout); the container gets a cgroup of
#: its own in it, and sees only that.
CGROUP2 = next(
    (
        p
        for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
        if (p / "cgroup.procs").exists()
    ),
    Path("/sys/fs/cgroup/unified"),
)
#: Where the container sees the emulated kernel (and the daemon's configuration says so).
SYSFS = "/sys/kernel/debug"
#: systemd's only unit directory inside (SYSTEMD_UNIT_PATH): drop-ins go here too.
UNIT_DIR = "/run/mdevd-test/units"
#: The system interpreter: the unit's ProtectHome= hides a Python under /root.
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
DEPENDENCIES = ("dbus_fast", "pyudev", "tomli_w", "tomlkit", "systemd")
HOST_UNITS = (
    "dbus.service",
    "dbus.socket",
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
    "systemd-journald-audit.socket",
    # Bus-activated only if mdevd asks polkit; with the installed actions, root is authorized.
    "polkit.service",
)
TARGETS = (
    "sysinit.target",
    "basic.target",
    "sockets.target",
    "shutdown.target",
    "multi-user.target",
    "default.target",
)


def available() -> str | None:
    """Why this harness cannot run here, or None."""
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed"
    if not (CGROUP2 / "cgroup.procs").exists():
        return "no cgroup v2 hierarchy to hold the container"
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release < (5, 14):
        return f"Linux {os.uname().release} has no cgroup.kill (5.14) to end the container"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} (the system's Python of this version) is not installed"
    return None


def copy_dependencies(root: Path = Path("/"), *, bytecode: bool = False) -> None:
    """mdevd's dependencies, from this interpreter's (the venv's) packages, where the system
    Python finds them under `root` (/usr/local/lib/python3.X/dist-packages); with `bytecode`,
    their compiled files too (valid for the system Python of the same minor version)."""
    site = root / f"usr/local/lib/python3.{sys.version_info.minor}/dist-packages"
    ignore = None if bytecode else shutil.ignore_patterns("__pycache__")
    for package in DEPENDENCIES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        source = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(source, site / package, ignore=ignore)


@contextlib.contextmanager
def installed_tree() -> Iterator[Path]:
    """`make install DESTDIR=...` for the system Python, plus its dependencies from this venv."""
    root = Path(tempfile.mkdtemp(prefix="mdevd-root-", dir="/tmp"))
    try:
        root.chmod(0o755)
        subprocess.run(
            [
                "make",
                "-s",
                "-C",
                str(REPO),
                "install",
                f"DESTDIR={root}",
                "PREFIX=/usr",
                f"PYTHON={SYSTEM_PYTHON}",
                "UNITDIR=/usr/lib/systemd/system",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        copy_dependencies(root)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def configure(root: Path) -> None:
    """The admin's configuration for this machine: sysfs is where the emulated kernel is."""
    config = root / "etc/mdevd/mdevd.toml"
    text = config.read_text()
    text = text.replace('sysfs_root = "/sys"', f'sysfs_root = "{SYSFS}"')
    text = text.replace('dev_root = "/dev"', f'dev_root = "{SYSFS}/.sim/dev"')
    assert SYSFS in text
    config.write_text(text)


#: Run on the host side: a cgroup of its own, then the namespaces.
_ENTER = """\
set -e
mkdir "$CGROUP"
echo $$ > "$CGROUP/cgroup.procs"
exec unshare --pid --fork --mount --cgroup --propagation private bash "$STAGE/init.sh"
"""

#: PID 1 of the container until it execs systemd.
_INIT = """\
set -e
mount -t proc proc /proc
# Pure cgroup v2, rooted at the container's own cgroup (the namespace's root).
umount -R /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock /run/systemd/system /run/mdevd-test /run/overlay/etc /run/overlay/work
mount --bind "$STAGE" /run/mdevd-test
mount --bind "$SIM" {sysfs}
mount -t overlay overlay -o ro,lowerdir=/run/mdevd-test/root/usr:/usr /usr
cp -a /run/mdevd-test/root/etc/. /run/mdevd-test/etc/. /run/overlay/etc/
mount -t overlay overlay \\
    -o lowerdir=/etc,upperdir=/run/overlay/etc,workdir=/run/overlay/work /etc
for dir in /tmp /var/tmp /var/log/journal /var/lib/systemd; do
    mkdir -p "$dir"; mount -t tmpfs -o mode=1777 tmpfs "$dir"
done
exec env -i container=mdevd-test SYSTEMD_UNIT_PATH={unit_dir} \\
    PATH=/usr/sbin:/usr/bin:/sbin:/bin \\
    {systemd} --system --unit=multi-user.target --log-target=journal --log-level=info
"""


@dataclass
class Container:
    process: subprocess.Popen[bytes]
    pid1: int

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside, as a process of the container's PID and mount namespaces."""
        result = subprocess.run(
            ["nsenter", f"--target={self.pid1}", "--mount", "--pid", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
                f"\n--- journal ---\n{self.journal()}"
            )
        return result

    def drop_in(self, unit: str, name: str, text: str) -> None:
        """Add a drop-in for `unit`, as an admin would, and reload systemd."""
        directory = f"{UNIT_DIR}/{unit}.d"
        self.run("mkdir", "-p", directory)
        self.run("sh", "-c", f"cat > {directory}/{name}.conf", input=text)
        self.run("systemctl", "daemon-reload")

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        output = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in output.stdout.splitlines() if "=" in line)

    def journal(self, *matches: str) -> str:
        return self.run("journalctl", "--no-pager", "-b", *matches, check=False).stdout

    def wait(self, condition: str, probe: Sequence[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self.run(*probe, check=False)
            if condition in result.stdout:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{' '.join(probe)} never said {condition!r}: {result.stdout}{result.stderr}"
                    f"\n--- journal ---\n{self.journal()}"
                )
            time.sleep(0.1)


def _units(directory: Path) -> None:
    directory.mkdir()
    for target in TARGETS:
        (directory / target).write_text(
            f"[Unit]\nDescription={target} (mdevd's test container)\n"
            + ("AllowIsolate=yes\n" if target == "multi-user.target" else "")
        )
    # Started at boot: the bus (socket-activated) and the journal.
    (directory / "multi-user.target").write_text(
        "[Unit]\nDescription=mdevd's test container\n"
        "Wants=dbus.socket systemd-journald.socket systemd-journald.service\n"
    )
    for unit in HOST_UNITS:
        (directory / unit).symlink_to(Path("/usr/lib/systemd/system") / unit)
    (directory / "mdevd.service").symlink_to("/usr/lib/systemd/system/mdevd.service")


def _pid1(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The host PID of the container's PID 1: the child of `unshare --fork` that runs systemd."""
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the container exited with {process.returncode}")
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):  # a child that is already gone
                if Path(f"/proc/{pid}/exe").resolve() == SYSTEMD.resolve():
                    return int(pid)
        time.sleep(0.02)
    raise AssertionError("systemd did not start in the container")


@contextlib.contextmanager
def systemd_container(
    root: Path, sim_root: Path, etc_files: Mapping[str, str] | None = None, timeout: float = 60
) -> Iterator[Container]:
    """Boot the container on the installed `root`, with `etc_files` (path under /etc -> text)
    added to its /etc, and the emulated kernel at `sim_root` as its sysfs."""
    stage = Path(tempfile.mkdtemp(prefix="mdevd-container-", dir="/tmp"))
    cgroup = CGROUP2 / stage.name
    process: subprocess.Popen[bytes] | None = None
    try:
        stage.chmod(0o755)
        (stage / "root").symlink_to(root)
        for relative, text in (etc_files or {}).items():
            path = stage / "etc" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (stage / "etc").mkdir(exist_ok=True)
        _units(stage / "units")
        (stage / "init.sh").write_text(
            _INIT.format(sysfs=SYSFS, systemd=SYSTEMD, unit_dir=UNIT_DIR)
        )
        log = (stage / "init.log").open("wb")
        process = subprocess.Popen(
            ["bash", "-c", _ENTER],
            env={
                "STAGE": str(stage),
                "SIM": str(sim_root),
                "CGROUP": str(cgroup),
                "PATH": "/usr/bin:/bin",
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        container = Container(process, _pid1(process, timeout))
        container.wait("running", ["systemctl", "is-system-running"], timeout)
        yield container
    finally:
        if process is not None:
            # Every process of the container is in its cgroup: kill them all at once.
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.kill").write_text("1")
            process.wait(timeout=30)
        _remove_cgroup(cgroup)
        shutil.rmtree(stage, ignore_errors=True)


def _remove_cgroup(cgroup: Path, timeout: float = 10) -> None:
    """rmdir the container's cgroup tree, innermost first, once its processes are gone."""
    deadline = time.monotonic() + timeout
    while cgroup.exists():
        for directory in sorted(cgroup.rglob("*/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            cgroup.rmdir()
        if time.monotonic() > deadline:
            raise AssertionError(f"could not remove {cgroup}")
        time.sleep(0.05)
