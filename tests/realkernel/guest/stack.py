# SPDX-License-Identifier: LGPL-2.1-or-later
"""The system services of a real-kernel guest, started the way a distribution would start them.

Runs inside the guest (as root, with the checkout's `.venv` Python): systemd-udevd (so the
daemon's production `udev` uevent source carries events), the system bus (Debian's own
`dbus-daemon --system` configuration, with the project's bus policy installed where a package
installs it), polkitd (with the project's polkit actions, if the checkout has them), and mdevd
from the checkout with its default configuration (`/sys`, `/dev`, `/etc/mdevd/devices.d`, the
`udev` source). Nothing here exists on the host: the guest's / is an overlay.

    stack = GuestStack()
    stack.start_system()            # udevd, dbus-daemon, polkitd
    stack.mdevd.start()             # waits until it owns org.mdevd.Mdevd1
    stack.mdevdctl("list", "--json")

Each service's output goes to `<shared>/logs/<service>.log`, which the host can read after the
run. Other guest tests (libvirt's, for one) reuse this module.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.paths import REPO
from tests.support.waiting import wait_until

SHARED = Path(os.environ.get("REALKERNEL_SHARED", "/run/realkernel"))
LOGS = SHARED / "logs"
BUS_NAME = "org.mdevd.Mdevd1"
POLKIT_NAME = "org.freedesktop.PolicyKit1"
DEVICES_DIR = Path("/etc/mdevd/devices.d")
UDEVD = Path("/lib/systemd/systemd-udevd")
POLKITD = Path("/usr/lib/polkit-1/polkitd")


class StackError(RuntimeError):
    """A service did not start; the message carries its log."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` with captured text output, as root or as `user` (setpriv, no supplementary
    groups); StackError with the output when `check` and it fails."""
    if user is not None:
        argv = [*as_user(user), *argv]
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env
    )
    if check and result.returncode != 0:
        raise StackError(
            f"`{' '.join(argv)}` exited with {result.returncode}: {result.stdout}{result.stderr}"
        )
    return result


def as_user(user: str) -> list[str]:
    """The argv prefix that runs a program as `user` with its primary group and no others."""
    entry = pwd.getpwnam(user)
    # The checkout's interpreter is pyenv's, under /root, which is 0700 as on the host: opened
    # up here, in the guest's overlay only, so other users can run the checkout's programs.
    Path("/root").chmod(0o755)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


def _log_file(name: str) -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    return LOGS / f"{name}.log"


def name_has_owner(name: str) -> bool:
    result = run(
        [
            "busctl",
            "--system",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            name,
        ],
        check=False,
        timeout=10,
    )
    return result.stdout.strip() == "b true"


def _project_files(pattern: str) -> list[Path]:
    """The checkout's files matching `pattern` (dbus/, polkit/, data/...; not tests or venvs)."""
    found: list[Path] = []
    for top in REPO.iterdir():
        if top.is_dir() and not top.name.startswith(".") and top.name not in ("tests", "build"):
            found += top.rglob(pattern)
    return sorted(found)


def install_bus_policy() -> None:
    """The project's bus policy where a package puts it (the bus reads it at start or reload)."""
    policy_dir = Path("/etc/dbus-1/system.d")
    policy_dir.mkdir(parents=True, exist_ok=True)
    for policy in _project_files("org.mdevd.*.conf"):
        shutil.copy(policy, policy_dir / policy.name)


def install_polkit_files() -> None:
    """The project's polkit actions and rules, if it has any, where polkitd reads them."""
    for action in _project_files("*.policy"):
        shutil.copy(action, Path("/usr/share/polkit-1/actions") / action.name)
    for rule in _project_files("*.rules"):
        if "polkit" in rule.parent.as_posix():  # not udev's rules
            shutil.copy(rule, Path("/usr/share/polkit-1/rules.d") / rule.name)


class Mdevd:
    """The daemon from the checkout, as root, with its production defaults."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = _log_file("mdevd")
        self.starts = 0

    def start(self, timeout: float = 60) -> None:
        argv = [sys.executable, "-m", "mdevd", "--log-level", "debug", *self.extra_args]
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== start {self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise StackError(f"mdevd exited with {process.returncode}:\n{self.log()}")
            return name_has_owner(BUS_NAME)

        wait_until(ready, timeout, "mdevd to own org.mdevd.Mdevd1")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise StackError(f"mdevd did not stop within {timeout:g} s") from None
        return self.process.returncode

    def restart(self) -> None:
        self.stop()
        wait_until(lambda: not name_has_owner(BUS_NAME), 10, "org.mdevd.Mdevd1 to be released")
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class GuestStack:
    def __init__(self) -> None:
        self.mdevd = Mdevd()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        with _log_file(name).open("ab") as log:
            process = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes[name] = process
        return process

    def start_udevd(self, coldplug: bool = False) -> None:
        """systemd-udevd; with `coldplug`, also replay every device's add event and wait, as
        systemd-udev-trigger.service does at boot (many seconds under emulation: the mdev
        scenarios load their drivers after udevd runs, so they need none)."""
        self._spawn("udevd", [str(UDEVD)])
        wait_until(lambda: Path("/run/udev/control").exists(), 30, "udevd's control socket")
        if coldplug:
            run(["udevadm", "trigger", "--type=subsystems", "--action=add"])
            run(["udevadm", "trigger", "--type=devices", "--action=add"])
            run(["udevadm", "settle", "--timeout=60"], timeout=90)

    def start_system_bus(self) -> None:
        """Debian's system bus, with the project's policy installed like a package does."""
        install_bus_policy()
        Path("/run/dbus").mkdir(parents=True, exist_ok=True)
        self._spawn("dbus-daemon", ["dbus-daemon", "--system", "--nofork", "--nopidfile"])
        wait_until(
            lambda: Path("/run/dbus/system_bus_socket").exists(), 30, "the system bus socket"
        )

    def start_polkitd(self) -> None:
        """polkitd, with the project's polkit actions (and rules) installed if it has any."""
        install_polkit_files()
        self._spawn("polkitd", [str(POLKITD), "--no-debug"])
        wait_until(lambda: name_has_owner(POLKIT_NAME), 30, "polkitd")

    def start_system(self) -> None:
        self.start_udevd()
        self.start_system_bus()
        self.start_polkitd()

    def mdevdctl(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """`mdevdctl ARGS` from the checkout, as root or as `user`."""
        return run(
            [sys.executable, "-m", "mdevd.cli.mdevdctl", *args],
            check=False,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            user=user,
        )

    def stop_all(self) -> None:
        self.mdevd.stop()
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
