# SPDX-License-Identifier: LGPL-2.1-or-later
"""Logging: the journal under systemd, with the device fields; readable stderr elsewhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mdevd import logs
from tests.support.daemon import name_has_owner
from tests.support.paths import REPO
from tests.support.sim import RunningSim
from tests.support.waiting import wait_until
from tests.systemd.helpers import DEVICE_A, define
from tests.systemd.journal import entries, journal_stream, running_journald, wait_for_entries


@contextmanager
def daemon_logging_to_the_journal(
    bus: str,
    sim: RunningSim,
    devices_dir: Path,
    tmp_path: Path,
    *,
    systemd_python: bool = True,
    log_level: str = "info",
) -> Iterator[subprocess.Popen[bytes]]:
    """mdevd with stdout and stderr connected to journald, as systemd starts it."""
    config = tmp_path / "mdevd.toml"
    config.write_text(f"[daemon]\nlog_level = '{log_level}'\n")
    python_path = [str(REPO)]
    if not systemd_python:
        # A `systemd` package that cannot be imported, ahead of the real one.
        shadow = tmp_path / "no-systemd-python"
        (shadow / "systemd").mkdir(parents=True)
        (shadow / "systemd" / "__init__.py").write_text("raise ImportError('hidden by test')\n")
        python_path.insert(0, str(shadow))
    with journal_stream() as (stream, journal_stream_id):
        env = dict(os.environ)
        env.update(
            DBUS_SYSTEM_BUS_ADDRESS=bus,
            JOURNAL_STREAM=journal_stream_id,
            PYTHONPATH=os.pathsep.join(python_path),
        )
        env.pop("NOTIFY_SOCKET", None)
        argv = [sys.executable, "-m", "mdevd", "--config", str(config)]
        argv += ["--sysfs-root", str(sim.root), "--dev-root", str(sim.root / ".sim" / "dev")]
        argv += ["--devices-dir", str(devices_dir)]
        # Not the host's /etc/mdevctl.d (where the mdevctl package made one, compatibility
        # mode would mirror the test's definitions into it).
        argv += ["--mdevctl-dir", str(tmp_path / "mdevctl.d")]
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stream, stderr=stream, env=env
        )
    try:
        wait_until(
            lambda: name_has_owner(bus) or process.poll() is not None,
            timeout=20,
            what="mdevd ready",
        )
        assert process.poll() is None, f"mdevd exited with {process.returncode}"
        yield process
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def journald() -> Iterator[None]:
    with running_journald():
        yield


@pytest.mark.usefixtures("journald")
def test_device_events_reach_the_journal_with_their_fields(
    bus: str, sim: RunningSim, devices_dir: Path, tmp_path: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    with daemon_logging_to_the_journal(bus, sim, devices_dir, tmp_path):
        # What an admin types to see one device's history.
        found = wait_for_entries(f"MDEV_UUID={DEVICE_A}", "MDEVD_EVENT=started")
    started = found[0]
    assert started["MESSAGE"] == f"device {DEVICE_A}: started (autostart)"
    assert (started["MDEV_PARENT"], started["MDEV_TYPE"]) == ("mtty", "mtty-1")
    assert (started["SYSLOG_IDENTIFIER"], started["PRIORITY"]) == ("mdevd", "6")
    assert started["_TRANSPORT"] == "journal"  # sent natively, not a line on stderr
    # Records without device fields are there too.
    assert any(
        "ready on org.mdevd.Mdevd1" in e["MESSAGE"] for e in entries("SYSLOG_IDENTIFIER=mdevd")
    )


@pytest.mark.usefixtures("journald")
def test_the_config_file_sets_the_level(
    bus: str, sim: RunningSim, devices_dir: Path, tmp_path: Path
) -> None:
    with daemon_logging_to_the_journal(bus, sim, devices_dir, tmp_path, log_level="debug"):
        debug = wait_for_entries("SYSLOG_IDENTIFIER=mdevd", "PRIORITY=7")
    assert debug


@pytest.mark.usefixtures("journald")
def test_without_systemd_python_the_lines_still_carry_their_priority(
    bus: str, sim: RunningSim, devices_dir: Path, tmp_path: Path
) -> None:
    define(devices_dir, DEVICE_A, autostart=True)
    sim.control.fault_create("mtty", "mtty-1", "EIO")
    with daemon_logging_to_the_journal(bus, sim, devices_dir, tmp_path, systemd_python=False):
        found = wait_for_entries("SYSLOG_IDENTIFIER=mdevd", "PRIORITY=4")
    warning = found[0]
    assert warning["_TRANSPORT"] == "stdout"
    assert warning["MESSAGE"].startswith(f"device {DEVICE_A}: autostart failed")


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with pytest's own handlers and level put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("root_logger")
def test_stderr_elsewhere_is_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("warning", journal=False)
    logging.getLogger("mdevd").warning("device %s: autostart failed", DEVICE_A)
    logging.getLogger("mdevd").info("not shown at level warning")
    assert capsys.readouterr().err == f"mdevd: WARNING: device {DEVICE_A}: autostart failed\n"


def test_an_inherited_journal_stream_variable_is_not_the_journal(tmp_path: Path) -> None:
    """A process started from a service's shell inherits JOURNAL_STREAM, not the stream."""
    with (tmp_path / "err").open("w") as stream:
        info = os.fstat(stream.fileno())
        assert logs.stderr_is_journal({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}, stream)
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": f"{info.st_dev}:1"}, stream)
        assert not logs.stderr_is_journal({}, stream)


@pytest.mark.usefixtures("root_logger")
def test_stderr_to_the_journal_marks_every_line_with_its_priority(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "journal_handler", lambda: None)  # no systemd-python
    logs.setup_logging("info", journal=True)
    logging.getLogger("mdevd").error("first line\nsecond line")
    assert capsys.readouterr().err == "<3>first line\n<3>second line\n"


def test_unknown_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        logs.set_level("verbose")
