# SPDX-License-Identifier: LGPL-2.1-or-later
"""Errors that need a daemon configured otherwise: ReadOnly, and Timeout.

This module's daemon reads its definition directories from its configuration file (as in
production: /etc, /run and the read-only vendor directory) instead of `--devices-dir`, and
gives a kernel operation one second (`io_timeout`) before answering Timeout.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.conftest import ClientStack, daemon_stack
from tests.daemon.harness import (
    BusClient,
    DaemonError,
    device_path,
    device_uevents,
    in_sysfs,
    new_uuid,
)
from tests.support.sim import RunningSim
from tests.support.waiting import wait_until

IO_TIMEOUT = 1.0
#: The emulated kernel takes this long for an operation: well beyond the daemon's patience.
SLOW = 3 * IO_TIMEOUT

VENDOR_UUID = "5e1d0a7c-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def directories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("definitions")
    dirs = {name: base / name for name in ("etc", "run", "vendor")}
    for directory in dirs.values():
        directory.mkdir()
    (dirs["vendor"] / "vendor.toml").write_text(
        f'[[device]]\nuuid = "{VENDOR_UUID}"\nparent = "mtty"\ntype = "mtty-1"\n'
    )
    return dirs


@pytest.fixture(scope="module")
def stack(directories: dict[str, Path]) -> Iterator[ClientStack]:
    config = (
        "[store]\n"
        f'devices_dir = "{directories["etc"]}"\n'
        f'runtime_devices_dir = "{directories["run"]}"\n'
        f'vendor_devices_dir = "{directories["vendor"]}"\n'
        "[daemon]\n"
        f"io_timeout = {IO_TIMEOUT}\n"
    )
    with daemon_stack(devices_dirs=(), config_text=config) as running:
        yield running


def _error(action: Callable[[], Any]) -> DaemonError:
    with pytest.raises(DaemonError) as raised:
        action()
    return raised.value


# ---- ReadOnly -----------------------------------------------------------------------------------


def test_a_vendor_definition_cannot_be_changed_or_removed(
    client: BusClient, directories: dict[str, Path]
) -> None:
    device = client.device(VENDOR_UUID)
    assert device["ConfigFile"] == str(directories["vendor"] / "vendor.toml")
    for action in (
        lambda: client.update(VENDOR_UUID, {"autostart": True}),
        lambda: client.undefine(VENDOR_UUID),
    ):
        error = _error(action)
        assert error.short_name == "ReadOnly"
        assert VENDOR_UUID in error.message
        assert str(directories["etc"] / "vendor.toml") in error.message  # how to override it
    assert client.device(VENDOR_UUID)["Defined"] is True
    # Starting and stopping it is fine: that changes no file.
    client.start(VENDOR_UUID)
    client.stop(VENDOR_UUID)


def test_new_definitions_go_to_the_writable_directory(
    client: BusClient, directories: dict[str, Path]
) -> None:
    uuid = new_uuid()
    client.define_device("mtty", "mtty-2", uuid=uuid)
    assert client.device(uuid)["ConfigFile"] == str(directories["etc"] / f"{uuid}.toml")


def test_a_read_only_file_system_is_read_only(
    client: BusClient, directories: dict[str, Path]
) -> None:
    existing = new_uuid()
    client.define_device("mtty", "mtty-1", uuid=existing)
    with _mounted_read_only(directories["etc"]):
        uuid = new_uuid()
        error = _error(lambda: client.define_device("mtty", "mtty-1", uuid=uuid))
        assert error.short_name == "ReadOnly"
        assert str(directories["etc"]) in error.message
        error = _error(lambda: client.undefine(existing))
        assert error.short_name == "ReadOnly"
        error = _error(lambda: client.update(existing, {"autostart": True}))
        assert error.short_name == "ReadOnly"
    assert _error(lambda: client.get_device(uuid)).short_name == "NotFound"
    assert client.device(existing)["Defined"] is True
    client.undefine(existing)


@contextmanager
def _mounted_read_only(directory: Path) -> Iterator[None]:
    """`directory` on a read-only mount (the test suite's private mount namespace)."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


# ---- Timeout ------------------------------------------------------------------------------------


def test_a_create_the_kernel_does_not_finish_in_time_is_timeout_and_undone(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    sim.control.delay("create", SLOW)
    mark = client.mark()
    error = _error(lambda: client.create_device("mtty", "mtty-1", uuid=uuid))
    assert error.short_name == "Timeout"
    assert "create" in error.message
    # The kernel finishes the create later; the daemon removes the device again, as after any
    # failed create, instead of leaving one nobody asked for.
    wait_until(lambda: [r.action for r in device_uevents(sim, uuid)][-1:] == ["remove"], 20)
    assert not in_sysfs(sim, uuid)
    assert _error(lambda: client.get_device(uuid)).short_name == "NotFound"
    assert client.event_details(uuid, since=mark) == []
    assert not any(s.object_path == device_path(uuid) for s in client.signals(mark))


def test_after_a_timeout_the_same_uuid_can_be_created(client: BusClient, sim: RunningSim) -> None:
    uuid = new_uuid()
    sim.control.delay("create", SLOW)
    assert _error(lambda: client.create_device("mtty", "mtty-2", uuid=uuid)).short_name == (
        "Timeout"
    )
    sim.control.delay("create", 0)
    # A retry while the late create is still being undone waits for that, then succeeds.
    assert client.create_device("mtty", "mtty-2", uuid=uuid) == device_path(uuid)
    assert in_sysfs(sim, uuid)
    assert client.device(uuid)["Active"] is True
    client.stop(uuid)


def test_a_stop_the_kernel_does_not_finish_in_time_is_timeout(
    client: BusClient, sim: RunningSim
) -> None:
    uuid = new_uuid()
    client.create_device("mtty", "mtty-1", uuid=uuid)
    sim.control.delay("remove", SLOW)
    error = _error(lambda: client.stop(uuid))
    assert error.short_name == "Timeout"
    # The removal goes through in the end, and the daemon notices.
    wait_until(lambda: not in_sysfs(sim, uuid), 20)
    wait_until(lambda: not _known(client, uuid), 20, "the daemon to notice")


def _known(client: BusClient, uuid: str) -> bool:
    try:
        client.get_device(uuid)
    except DaemonError as error:
        assert error.short_name == "NotFound"
        return False
    return True
