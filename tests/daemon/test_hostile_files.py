# SPDX-License-Identifier: LGPL-2.1-or-later
"""Hostile definition files against the real daemon: Reload over D-Bus and a restart (issue
15, findings 1, 2, 4, 5 and 7).

Before: a 600-deep TOML array made Reload fail with "internal error" (a valid file dropped
at the same time was not loaded) and a restart exit 1; a devices.d anyone could write to was
read, so an unprivileged user's autostart definition was created by the root daemon; a
symlink planted as `<uuid>.toml` made DefineDevice append to the file it led to; temporary
files of a killed write stayed; a persist-only Update stored the attribute `remove`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdevd import atomic
from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import DaemonError, bus_client, in_sysfs, new_uuid
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import running_daemon
from tests.support.sim import RunningSim, running_sim

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with private_bus([PROJECT_POLICY]) as bus_address:
        yield bus_address


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO) as running:
        yield running


@pytest.fixture
def devices_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "devices.d"
    directory.mkdir(mode=0o755)
    return directory


def _toml(uuid: str, *, autostart: bool = False, type_id: str = "mtty-1") -> str:
    extra = "autostart = true\n" if autostart else ""
    return f'[[device]]\nuuid = "{uuid}"\nparent = "mtty"\ntype = "{type_id}"\n{extra}'


def _plant_hostile_files(directory: Path) -> list[str]:
    """Every kind of bad file; their names."""
    texts = {
        "deep.toml": "x = " + "[" * 600 + "]" * 600 + "\n",
        "dotted.toml": "a" + ".a" * 19_999 + " = 1\n",
        "long-integer.toml": "x = " + "1" * 5000 + "\n",
        "too-many.toml": "[[device]]\n" * 20_000,
    }
    for name, text in texts.items():
        (directory / name).write_text(text)
    (directory / "utf8.toml").write_bytes(b"# \xff\n")
    os.mkfifo(directory / "fifo.toml")
    os.mknod(directory / "node.toml", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    with (directory / "sparse.toml").open("wb") as f:
        f.truncate(10 * 1024**3)
    return [*texts, "utf8.toml", "fifo.toml", "node.toml", "sparse.toml"]


def test_hostile_files_cost_themselves_on_reload_and_restart(
    address: str, sim: RunningSim, devices_dir: Path
) -> None:
    first, second = new_uuid(), new_uuid()
    (devices_dir / "first.toml").write_text(_toml(first))
    with running_daemon(address, sim.root, [devices_dir]) as daemon, bus_client(address) as client:
        hostile = _plant_hostile_files(devices_dir)
        (devices_dir / "second.toml").write_text(_toml(second, autostart=True))
        client.reload()  # answered, not "internal error"
        assert client.device(second)["Defined"] is True
        assert client.device(first)["Defined"] is True
        assert in_sysfs(sim, second)
        log = daemon.log()
        for name in hostile:
            assert f"configuration: {devices_dir / name}:" in log, name
    assert daemon.process.returncode == 0
    # A restart reads the same directory: it starts, with both definitions.
    with running_daemon(address, sim.root, [devices_dir]) as daemon, bus_client(address) as client:
        assert client.device(first)["Defined"] is True
        assert client.device(second)["Defined"] is True
        assert "Traceback" not in daemon.log()
        client.undefine(second)
        client.stop(second)


def test_a_devices_directory_others_may_write_is_not_read(
    address: str, sim: RunningSim, devices_dir: Path
) -> None:
    planted = new_uuid()
    (devices_dir / "planted.toml").write_text(_toml(planted, autostart=True))
    devices_dir.chmod(0o1777)
    with running_daemon(address, sim.root, [devices_dir]) as daemon, bus_client(address) as client:
        with pytest.raises(DaemonError) as error:
            client.get_device(planted)
        assert error.value.short_name == "NotFound"
        assert not in_sysfs(sim, planted)
        assert (
            f"configuration: {devices_dir}: directory not read: writable by group or others "
            "(mode 1777)" in daemon.log()
        )


def test_define_never_writes_through_a_planted_symlink(
    address: str, sim: RunningSim, devices_dir: Path, tmp_path: Path
) -> None:
    uuid = new_uuid()
    elsewhere = tmp_path / "root-only.conf"
    elsewhere.write_text("# root's own file\n")
    elsewhere.chmod(0o600)
    (devices_dir / f"{uuid}.toml").symlink_to(elsewhere)
    with running_daemon(address, sim.root, [devices_dir]), bus_client(address) as client:
        with pytest.raises(DaemonError) as error:
            client.define_device("mtty", "mtty-1", uuid=uuid)
        assert error.value.short_name == "ConfigInvalid"
        assert "symlink" in error.value.message
    assert elsewhere.read_text() == "# root's own file\n"


def test_temporary_files_of_a_killed_write_are_removed_at_start(
    address: str, sim: RunningSim, devices_dir: Path
) -> None:
    uuid = new_uuid()
    (devices_dir / f"{uuid}.toml").write_text(_toml(uuid))
    stale = [atomic.temp_path_for(devices_dir / f"{uuid}.toml") for _ in range(3)]
    for path in stale:
        path.write_text("[[device]]\nuuid = 'half")
    with running_daemon(address, sim.root, [devices_dir]) as daemon, bus_client(address) as client:
        assert client.device(uuid)["Defined"] is True
        assert sorted(os.listdir(devices_dir)) == [f"{uuid}.toml"]
        assert f"removed {stale[0]}" in daemon.log()


@pytest.mark.parametrize("name", ["remove", "uevent", "mdev_type"])
def test_a_persist_only_update_refuses_driver_core_files_as_create_does(
    address: str, sim: RunningSim, devices_dir: Path, name: str
) -> None:
    uuid = new_uuid()
    with running_daemon(address, sim.root, [devices_dir]), bus_client(address) as client:
        client.define_device("mtty", "mtty-1", uuid=uuid)
        before = (devices_dir / f"{uuid}.toml").read_text()
        with pytest.raises(DaemonError) as error:
            client.update(uuid, {"attributes": [(name, "1")]})
        assert error.value.short_name == "AttributeRejected"
        assert uuid in error.value.message and name in error.value.message
        assert (devices_dir / f"{uuid}.toml").read_text() == before
        assert client.device(uuid)["Attributes"] == []
        # And a file holding one is a problem of that entry, never a definition.
        (devices_dir / "by-hand.toml").write_text(
            _toml(other := new_uuid()) + f'attributes = [{{ name = "{name}", value = "1" }}]\n'
        )
        client.reload()
        with pytest.raises(DaemonError):
            client.get_device(other)
