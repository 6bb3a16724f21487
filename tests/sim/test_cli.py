# SPDX-License-Identifier: LGPL-2.1-or-later
"""The `mdevd-sim` command: mounting, clean unmounts on signals, `ctl`, and option checks."""

from __future__ import annotations

import errno
import importlib.metadata
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import pyudev

from mdevd.sim import uevent
from tests.sim.conftest import SimFactory
from tests.sim.helpers import UUID_A, create, receive, write_errno
from tests.support.sim import RunningSim, running_sim, scenario_path

pytestmark = pytest.mark.timeout(60, method="thread")


def _sim_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mdevd.sim", *args], capture_output=True, text=True, timeout=30
    )


def test_console_entry_point_is_declared() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert scripts["mdevd-sim"].value == "mdevd.sim.cli:main"


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(stop_signal: int) -> None:
    # running_sim sends the signal on exit and fails unless the status is 0 and nothing
    # is left mounted.
    with running_sim("mtty", stop_signal=stop_signal) as mounted:
        root = mounted.root
        create(root, "mtty", "mtty-1", UUID_A)
        assert os.path.ismount(root)
    assert not os.path.ismount(root)
    assert mounted.process.returncode == 0


def test_a_blocked_removal_does_not_prevent_unmounting() -> None:
    results: list[int | None] = []
    with running_sim("mtty") as mounted:
        create(mounted.root, "mtty", "mtty-1", UUID_A)
        mounted.control.hold(UUID_A)
        remove_file = mounted.root / "bus/mdev/devices" / UUID_A / "remove"
        remover = threading.Thread(
            target=lambda: results.append(write_errno(remove_file, "1")), daemon=True
        )
        remover.start()
        remover.join(0.3)
    remover.join(10)
    assert not remover.is_alive()
    assert not os.path.ismount(mounted.root)


def test_ctl_runs_commands(sim: RunningSim) -> None:
    result = _sim_command("ctl", str(sim.root), "unregister", "mtty")
    assert result.returncode == 0, result.stderr
    assert not (sim.root / "class/mdev_bus/mtty").exists()


def test_ctl_reports_the_kernels_refusal(sim: RunningSim) -> None:
    result = _sim_command("ctl", str(sim.root), "register", "nope")
    assert result.returncode == 1
    assert os.strerror(errno.ENOENT) in result.stderr
    assert "nope" in result.stderr
    busy = _sim_command("ctl", str(sim.root), "register", "mtty")
    assert busy.returncode == 1
    assert os.strerror(errno.EALREADY) in busy.stderr


def test_ctl_reports_usage_errors(sim: RunningSim) -> None:
    result = _sim_command("ctl", str(sim.root), "fault", "create", "mtty")
    assert result.returncode == 2
    assert "usage: fault create PARENT TYPE ERRNO [COUNT]" in result.stderr


def test_ctl_on_something_not_mounted(tmp_path: Path) -> None:
    result = _sim_command("ctl", str(tmp_path), "clear")
    assert result.returncode == 1
    assert os.strerror(errno.ENOENT) in result.stderr


def test_mount_refuses_a_bad_scenario(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text('[[parent]]\nname = "mtty"\n')
    result = _sim_command("mount", str(tmp_path), "--scenario", str(scenario))
    assert result.returncode == 2
    assert "devpath" in result.stderr and "required" in result.stderr
    assert not os.path.ismount(tmp_path)


def test_mount_refuses_a_missing_mountpoint(tmp_path: Path) -> None:
    mtty = str(scenario_path("mtty"))
    result = _sim_command("mount", str(tmp_path / "nope"), "--scenario", mtty)
    assert result.returncode == 2
    assert "not a directory" in result.stderr


def test_uevents_none_sends_nothing_but_logs(start_sim: SimFactory) -> None:
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    monitor.start()
    quiet = start_sim("mtty", uevents="none")
    create(quiet.root, "mtty", "mtty-1", UUID_A)
    assert receive(monitor, 1, timeout=0.3) == []
    assert [e.action for e in quiet.control.uevents()] == ["add", "add", "add", "bind"]


def test_uevent_mode_choice() -> None:
    assert uevent.choose_mode("auto", private=True) == ("netlink", None)
    mode, warning = uevent.choose_mode("auto", private=False)
    assert mode == "none" and warning
    assert uevent.choose_mode("none", private=True) == ("none", None)
    assert uevent.choose_mode("netlink", private=True) == ("netlink", None)
    with pytest.raises(ValueError, match="host's network namespace"):
        uevent.choose_mode("netlink", private=False)


def test_this_test_run_is_in_a_private_network_namespace() -> None:
    # conftest unshared the network namespace; the check must see that even where PID 1's
    # namespace link cannot be read.
    assert uevent.in_private_netns()
