# SPDX-License-Identifier: LGPL-2.1-or-later
"""Device.Open: an active device handed to its caller as an open fd to its VFIO node.

Through the real daemon on the emulated kernel (an mtty parent and an NVIDIA GPU whose VFs take
vGPUs, tests/nvidia/scenario.toml), with a real polkitd holding the project's actions and the
example rules, and callers running as three users: root, `mdevd-tester` (in group `mdevd`,
which the example rule grants configure-devices, implying use-device) and nobody. What is held
to: the fd is the emulated node itself (fstat, /proc/self/fd), the group is then taken (a second
Open and Stop are Busy, the emulation's node is busy) until the fd is closed; `node=cdev`; the
options are checked; an inactive device is NotActive; nobody is refused and the group member
gets the fd, through `mdevdctl open`; the daemon keeps no fd, neither those it sent nor those
sent to it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import grp
import os
import pwd
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mdevd import calls
from mdevd.blocking import BlockingClient
from mdevd.bus import names
from mdevd.client import SyncClient
from mdevd.replies import Busy, InvalidArgument, NotActive
from mdevd.wire import Variant as WireVariant
from tests.daemon.harness import BusClient, DaemonError, bus_client, device_path, new_uuid
from tests.support.bus import POLKIT_POLICY, PROJECT_POLICY, private_bus, unprivileged_python
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.paths import REPO
from tests.support.polkit import Account, Accounts, extra_accounts, running_polkitd
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

T = TypeVar("T")

SCENARIO = REPO / "tests" / "nvidia" / "scenario.toml"
GRANTED_USER = "mdevd-tester"
GPU = "0000:3d:00.0"
VGPU_TYPE = "1145"
TIMEOUT = 30.0

#: Prints the path of the fd mdevdctl open hands over, its kind, and who runs it.
SHOW_FD = 'readlink /proc/self/fd/"$MDEVD_VFIO_FD"; echo "$MDEVD_VFIO_NODE"; id -u'


@dataclass
class World:
    address: str
    sim: RunningSim
    daemon: DaemonProcess
    client: BusClient
    accounts: Accounts
    granted_python: list[str]
    nobody_python: list[str]

    def ctl_as(self, python: list[str], *args: str) -> subprocess.CompletedProcess[str]:
        """`mdevdctl ARGS` run by the user `python` runs as."""
        return subprocess.run(
            [*python, "-m", "mdevd.cli.mdevdctl", "--address", self.address, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            check=False,
        )


@contextmanager
def _granted_account() -> Iterator[Accounts]:
    """`mdevd-tester` in group `mdevd`: made for the block, or the one tests/security's
    session-wide world made already (extra_accounts refuses to make it twice)."""
    try:
        user, group = pwd.getpwnam(GRANTED_USER), grp.getgrnam("mdevd")
    except KeyError:
        with extra_accounts([Account(GRANTED_USER, groups=("mdevd",))]) as accounts:
            yield accounts
        return
    assert GRANTED_USER in group.gr_mem
    yield Accounts(uids={GRANTED_USER: user.pw_uid}, gids={"mdevd": group.gr_gid})


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with (
        _granted_account() as accounts,
        private_bus([PROJECT_POLICY, POLKIT_POLICY]) as address,
        running_sim(SCENARIO) as sim,
        running_daemon(address, sim.root) as daemon,
        running_polkitd(address),
        bus_client(address) as client,
        unprivileged_python(("mdevd",), user=GRANTED_USER, group=GRANTED_USER) as granted,
        unprivileged_python(("mdevd",)) as nobody,
    ):
        yield World(address, sim, daemon, client, accounts, granted, nobody)


@pytest.fixture
def wire(world: World) -> Iterator[BlockingClient]:
    """mdevdctl's client (mdevd.wire), as root."""
    with BlockingClient.connect(world.address, timeout=TIMEOUT) as client:
        yield client


def _active_mtty(world: World) -> tuple[str, dict[str, Any]]:
    uuid = new_uuid()
    world.client.create_device("mtty", "mtty-1", uuid=uuid)
    return uuid, world.client.device(uuid)


def _group_node(world: World, props: dict[str, Any]) -> Path:
    return world.sim.control.vfio_group_path(int(props["IommuGroup"]))


def _cdev_node(world: World, props: dict[str, Any]) -> Path:
    (name,) = os.listdir(Path(props["SysfsPath"]) / "vfio-dev")
    return world.sim.control.vfio_cdev_path(name)


def _same_file(fd: int, node: Path) -> bool:
    held, there = os.fstat(fd), os.stat(node)
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def _until_not_busy(attempt: Callable[[], T], timeout: float = 10) -> T:
    """`attempt()` once it is not Busy: FUSE releases a closed file asynchronously, so the
    emulated group may stay taken a moment after its last fd is closed (Linux: never)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Busy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _node_busy(node: Path) -> bool:
    try:
        os.close(os.open(node, os.O_RDWR))
    except OSError as exc:
        assert exc.errno == errno.EBUSY, exc
        return True
    return False


def _daemon_fds(world: World) -> int:
    return len(os.listdir(f"/proc/{world.daemon.process.pid}/fd"))


# ---- root, through mdevd.wire --------------------------------------------------------------


def test_open_hands_over_the_group_node_and_the_group_is_taken_while_it_is_held(
    world: World, wire: BlockingClient
) -> None:
    uuid, props = _active_mtty(world)
    node = _group_node(world, props)
    fd = _until_not_busy(lambda: wire.run(calls.open_device(uuid)))
    try:
        assert _same_file(fd, node)
        assert os.readlink(f"/proc/self/fd/{fd}") == str(node)
        # Read-write, as a VM's QEMU opens it, and close-on-exec here until passed on.
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        assert not os.get_inheritable(fd)
        # vfio's one opener: the emulation says the group is open, mdevd says Busy.
        assert _node_busy(node)
        with pytest.raises(Busy, match=uuid):
            wire.run(calls.open_device(uuid))
        with pytest.raises(DaemonError) as stop:
            world.client.stop(uuid)
        assert stop.value.name == names.error_name("Busy")
    finally:
        os.close(fd)
    # Every copy closed: the group is free again, for Open as for anyone.
    again = _until_not_busy(lambda: wire.run(calls.open_device(uuid)))
    os.close(again)
    wait_until(lambda: not _node_busy(node), timeout=10)
    world.client.stop(uuid)


def test_node_cdev_hands_over_the_vfio_device_node(world: World, wire: BlockingClient) -> None:
    uuid, props = _active_mtty(world)
    cdev = _cdev_node(world, props)
    fd = _until_not_busy(lambda: wire.run(calls.open_device(uuid, cdev=True)))
    try:
        assert _same_file(fd, cdev)
        assert os.readlink(f"/proc/self/fd/{fd}") == str(cdev)
        # The device node and the group share the one user.
        with pytest.raises(Busy):
            wire.run(calls.open_device(uuid))
        assert _node_busy(_group_node(world, props))
    finally:
        os.close(fd)
    os.close(_until_not_busy(lambda: wire.run(calls.open_device(uuid))))
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)
    world.client.stop(uuid)


def test_the_asyncio_client_gets_the_fd_too(world: World) -> None:
    uuid, props = _active_mtty(world)
    with SyncClient(world.address, timeout=TIMEOUT) as client:
        fd = _until_not_busy(lambda: client.open_device(uuid))
        try:
            assert _same_file(fd, _group_node(world, props))
        finally:
            os.close(fd)
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)
    world.client.stop(uuid)


@pytest.mark.parametrize(
    "options",
    [
        {"node": Variant("s", "bogus")},
        {"node": Variant("b", True)},
        {"nodes": Variant("s", "group")},
    ],
)
def test_options_are_checked_before_anything_is_opened(
    world: World, options: dict[str, Variant]
) -> None:
    uuid, props = _active_mtty(world)
    with pytest.raises(DaemonError) as refused:
        world.client.device_async(uuid, "Open", "a{sv}", options).result(TIMEOUT)
    assert refused.value.name == names.error_name("InvalidArgument")
    assert not _node_busy(_group_node(world, props))
    world.client.stop(uuid)


def test_an_inactive_device_is_not_active(world: World, wire: BlockingClient) -> None:
    uuid = new_uuid()
    world.client.define_device("mtty", "mtty-1", uuid=uuid)
    with pytest.raises(NotActive):
        wire.run(calls.open_device(uuid))
    with pytest.raises(InvalidArgument):
        wire.call(
            device_path(uuid),
            names.DEVICE_INTERFACE,
            "Open",
            "a{sv}",
            [{"node": WireVariant("s", "vfio")}],
        )
    world.client.undefine(uuid)


def test_an_nvidia_vf_vgpu_opens_its_vfs_group(world: World, wire: BlockingClient) -> None:
    uuid = new_uuid()
    world.client.create_device(GPU, VGPU_TYPE, uuid=uuid)
    props = world.client.device(uuid)
    assert props["Backend"] == "nvidia-vf"
    vf = props["Placement"]
    group = int(
        os.path.basename(os.readlink(world.sim.root / "bus/pci/devices" / vf / "iommu_group"))
    )
    assert group == props["IommuGroup"]
    fd = _until_not_busy(lambda: wire.run(calls.open_device(uuid)))
    try:
        assert _same_file(fd, world.sim.control.vfio_group_path(group))
        with pytest.raises(Busy):
            wire.run(calls.open_device(uuid))
    finally:
        os.close(fd)
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)
    world.client.stop(uuid)


# ---- other users, real polkitd, mdevdctl open ------------------------------------------------


def test_mdevdctl_open_runs_the_command_with_the_fd(world: World) -> None:
    uuid, props = _active_mtty(world)
    ran = world.daemon.ctl("open", uuid, "--", "sh", "-c", SHOW_FD + "; exit 3")
    assert ran.returncode == 3, ran.stderr
    assert ran.stdout.splitlines() == [str(_group_node(world, props)), "group", "0"]
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)
    ran = world.daemon.ctl("open", "--cdev", uuid, "--", "sh", "-c", SHOW_FD)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [str(_cdev_node(world, props)), "cdev", "0"]
    world.client.stop(uuid)


def test_nobody_is_refused_and_a_member_of_the_mdevd_group_gets_the_fd(world: World) -> None:
    uuid, props = _active_mtty(world)
    refused = world.ctl_as(world.nobody_python, "open", uuid, "--", "sh", "-c", SHOW_FD)
    assert refused.returncode == 4, refused
    assert refused.stdout == ""
    # auth_admin by default: polkit would let an administrator's password grant it.
    assert "[NotAuthorizedCanObtain]" in refused.stderr
    assert "org.mdevd.mdevd1.use-device" in refused.stderr
    assert not _node_busy(_group_node(world, props))
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)

    granted = world.ctl_as(world.granted_python, "open", uuid, "--", "sh", "-c", SHOW_FD)
    assert granted.returncode == 0, granted
    assert granted.stdout.splitlines() == [
        str(_group_node(world, props)),
        "group",
        str(world.accounts.uid(GRANTED_USER)),
    ]
    # Nothing on disk changed for it: the node is still root's alone.
    node = os.stat(_group_node(world, props))
    assert (node.st_uid, node.st_mode & 0o777) == (0, 0o600)
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)
    world.client.stop(uuid)


def test_mdevdctl_open_errors_have_the_clis_exit_statuses(world: World) -> None:
    uuid, props = _active_mtty(world)
    assert world.daemon.ctl("open", uuid).returncode == 2  # no command
    missing = world.daemon.ctl("open", uuid, "--", "/nonexistent/command")
    assert (missing.returncode, missing.stderr.strip()) == (
        127,
        "mdevdctl: /nonexistent/command: command not found",
    )
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)
    unknown = world.daemon.ctl("open", new_uuid(), "--", "true")
    assert unknown.returncode == 5, unknown.stderr
    fd = os.open(_group_node(world, props), os.O_RDWR)
    try:
        busy = world.daemon.ctl("open", uuid, "--", "true")
    finally:
        os.close(fd)
    assert busy.returncode == 1
    assert busy.stderr.strip().endswith("[Busy]"), busy.stderr
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)
    world.client.stop(uuid)


# ---- the daemon keeps no fd ------------------------------------------------------------------


def test_the_daemon_closes_every_fd_it_sends(world: World, wire: BlockingClient) -> None:
    uuid, props = _active_mtty(world)
    os.close(_until_not_busy(lambda: wire.run(calls.open_device(uuid))))
    before = _daemon_fds(world)
    for _ in range(40):
        os.close(_until_not_busy(lambda: wire.run(calls.open_device(uuid))))
    # Closed once each reply was written; allow the loop a moment to run the callbacks. (Not
    # equal: an fd the daemon held for something else at `before` may be gone by now; a leak
    # would be 40 more.)
    wait_until(lambda: _daemon_fds(world) <= before, timeout=10)
    wait_until(lambda: not _node_busy(_group_node(world, props)), timeout=10)
    world.client.stop(uuid)


def test_the_daemon_closes_fds_sent_to_it(world: World) -> None:
    async def flood() -> None:
        bus = await MessageBus(bus_address=world.address, negotiate_unix_fd=True).connect()
        try:
            for _ in range(30):
                fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
                reply = await bus.call(
                    Message(
                        destination=names.BUS_NAME,
                        path=names.MANAGER_PATH,
                        interface=names.MANAGER_INTERFACE,
                        member="ListDevices",
                        signature="a{sv}",
                        body=[{}],
                        unix_fds=fds,
                    )
                )
                for fd in fds:
                    os.close(fd)
                assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
        finally:
            bus.disconnect()

    before = _daemon_fds(world)
    asyncio.run(flood())
    assert _daemon_fds(world) <= before


def test_features_say_open(world: World) -> None:
    features = world.client.get_property(names.MANAGER_PATH, names.MANAGER_INTERFACE, "Features")
    assert "open" in features
