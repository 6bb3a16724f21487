# SPDX-License-Identifier: LGPL-2.1-or-later
"""Running the real daemon as a subprocess on a private bus and an emulated kernel.

    with private_bus() as address, mounted_sim(SCENARIO) as sim:
        with running_daemon(address, sim.root, devices_dir) as daemon:
            ...  # talk to it with mdevd.client, busctl, gdbus, mdevdctl
        print(daemon.log())

The daemon's log is kept in a file; `daemon.log()` reads it. Under pytest, a failing test's
report shows the lines the daemon wrote during that test (tests/support/logs.py,
tests/support/report_logs.py), also when the daemon is shared by a whole module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.logs import watched_log
from tests.support.paths import REPO as REPO  # re-exported for tests/packaging/build.py

#: The daemon's mdevd.toml unless a test gives one: the command line sets the directories.
DEFAULT_CONFIG = "# defaults; the command line sets the directories\n"


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    devices_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    #: Where the daemon keeps its state (`--state-dir`: owners, nvidia-vf placements).
    state_dir: Path | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ctl(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `mdevdctl ARGS` against this daemon."""
        return subprocess.run(
            [sys.executable, "-m", "mdevd.cli.mdevdctl", "--address", self.address, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            env=self.env,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"mdevd did not stop within {timeout} s:\n{self.log()}"
                ) from None
        return self.process.returncode


def name_has_owner(address: str, name: str = "org.mdevd.Mdevd1") -> bool:
    result = subprocess.run(
        [
            "busctl",
            f"--address={address}",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result.stdout.strip() == "b true"


@contextmanager
def running_daemon(
    address: str,
    sysfs_root: Path,
    devices_dirs: Sequence[Path] | None = None,
    *,
    extra_args: Sequence[str] = (),
    start_timeout: float = 30,
    uevent_source: str = "udev",
    print_log: bool = False,
    env: Mapping[str, str] | None = None,
    config_text: str = DEFAULT_CONFIG,
    program: Sequence[str] = ("-m", "mdevd"),
    mdevctl_dir: Path | None = None,
    mdevctl_scripts_dir: Path | None = None,
) -> Iterator[DaemonProcess]:
    """Start `mdevd` and wait until it owns its name (its readiness); stop it on exit.

    `env` adds to (or overrides) the daemon's environment, e.g. a test's `NOTIFY_SOCKET`.
    `devices_dirs=()` passes no `--devices-dir`, so `config_text` (the daemon's mdevd.toml)
    decides where definitions live. `program` replaces `-m mdevd` (a test's own entry point).
    mdevctl's directories default to (absent) ones in the daemon's work directory, so that no
    test reads or writes the host's /etc/mdevctl.d or runs its callout scripts.
    `print_log` prints the whole log when the daemon stops (tests need not: the failing test's
    report has what the daemon wrote during it).
    """
    workdir = Path(tempfile.mkdtemp(prefix="mdevd-daemon-", dir="/tmp"))
    if devices_dirs is None:
        devices_dirs = [workdir / "devices.d"]
        devices_dirs[0].mkdir()
    log_path = workdir / "mdevd.log"
    config = workdir / "mdevd.toml"
    config.write_text(config_text)
    env_overrides = dict(env or {})
    env = dict(os.environ)
    env["DBUS_SYSTEM_BUS_ADDRESS"] = address
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    env.update(env_overrides)
    argv = [
        sys.executable,
        *program,
        "--sysfs-root",
        str(sysfs_root),
        "--dev-root",
        str(sysfs_root / ".sim" / "dev"),
        "--uevent-source",
        uevent_source,
        "--log-level",
        "debug",
        "--config",
        str(config),
        # Never the host's /var/lib/mdevd (a test that restarts a daemon passes its own).
        "--state-dir",
        str(workdir / "state"),
    ]
    for directory in devices_dirs:
        argv += ["--devices-dir", str(directory)]
    argv += ["--mdevctl-dir", str(mdevctl_dir or workdir / "mdevctl.d")]
    argv += ["--mdevctl-scripts-dir", str(mdevctl_scripts_dir or workdir / "mdevctl-scripts.d")]
    argv += list(extra_args)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    devices_dir = Path(devices_dirs[0]) if devices_dirs else workdir
    # The last --state-dir given wins, as with every option (a test's own comes last).
    state_dir = Path([argv[i + 1] for i, word in enumerate(argv) if word == "--state-dir"][-1])
    daemon = DaemonProcess(process, address, log_path, devices_dir, env, state_dir)
    with watched_log("mdevd", log_path):
        try:
            deadline = time.monotonic() + start_timeout
            while not name_has_owner(address):
                if process.poll() is not None:
                    raise AssertionError(f"mdevd exited with {process.returncode}:\n{daemon.log()}")
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"mdevd not ready within {start_timeout} s:\n{daemon.log()}"
                    )
                time.sleep(0.05)
            yield daemon
        finally:
            try:
                daemon.stop()
            finally:
                if print_log:
                    print(f"--- mdevd log ({log_path}) ---\n{daemon.log()}")
