# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon stays on the bus under load: 64 clients reading GetManagedObjects, 1,000 devices.

Each reply is ~0.7 MB, several times the socket's send buffer. When the bus daemon takes the
daemon's data more slowly than the daemon produces it, the send buffer fills while a reply is
still partly unsent; dbus-fast without mdevd.bus.sendfix then takes the next send's EAGAIN for a
broken connection and disconnects: the daemon loses its name and every client its objects.

How fast the bus takes the data depends on how fast the clients read, so the load makes the
full buffer certain instead of likely: it begins with one client that stops reading after its
call (SIGSTOP). Its reply waits in the bus, more than the bus's `max_incoming_bytes` (256 KiB
on the test bus, lowered from the system bus's 127 MiB as tests/bus/test_send_buffer.py does:
the same mechanism at 1/500 of the volume), so the bus stops reading from the daemon; two more
calls then make the daemon send into its full buffer. Then all 64 clients read for 10 s.
The same load runs against the same daemon with the fix left out
(tests/daemon/unfixed_daemon.py), to show that it still reproduces the bug.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mdevd.bus import names
from tests.daemon.conftest import SCENARIO
from tests.daemon.harness import CALL_TIMEOUT, BusClient, DaemonError, bus_client
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import DaemonProcess, name_has_owner, running_daemon
from tests.support.paths import REPO
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until

CLIENTS = 64
SECONDS = 10.0
DEVICES = 1000
#: dbus-daemon's own limit is 127 MiB; see the module docstring.
MAX_INCOMING_BYTES = 256 * 1024
#: Where the 1,000 definitions go: present parents and an absent one, so the objects differ.
TARGETS = (
    ("mtty", "mtty-1"),
    ("par-a", "par-a-1"),
    ("par-b", "par-b-1"),
    ("0000:66:00.0", "nvidia-556"),
)

STATS_INTERFACE = "org.freedesktop.DBus.Debug.Stats"
#: Lets root ask the bus daemon how much of a connection's data waits in it (the default
#: system policy denies Debug.Stats).
STATS_POLICY = f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="{STATS_INTERFACE}"/>
  </policy>
</busconfig>
"""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def bus_policies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    stats = tmp_path_factory.mktemp("policy") / "stats.conf"
    stats.write_text(STATS_POLICY)
    stats.parent.chmod(0o755)
    return [PROJECT_POLICY, stats]


@dataclass
class Outcome:
    replies: int
    errors: list[str]
    disconnects: int
    per_client: list[int]
    #: The bus stopped reading from the daemon (or the daemon was gone) before the clients read.
    queue_full: bool


@pytest.fixture(scope="module")
def devices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 definitions, one file each, as the API writes them."""
    directory = tmp_path_factory.mktemp("devices.d")
    for index in range(DEVICES):
        uuid = f"5a5a5a5a-0000-4000-8000-{index:012x}"
        parent, type_id = TARGETS[index % len(TARGETS)]
        (directory / f"{uuid}.toml").write_text(
            f'[[device]]\nuuid = "{uuid}"\nparent = "{parent}"\ntype = "{type_id}"\n'
            f'autostart = false\nattributes = [{{ name = "setting", value = "{index}" }}]\n'
        )
    return directory


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(SCENARIO) as running:
        yield running


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T): only then are its connections certainly unread."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _idle(pid: int) -> bool:
    """Whether the process sleeps and used no CPU time for a moment: it has done all it can."""

    def sample() -> tuple[str, int]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[11]) + int(fields[12])  # state, utime + stime

    first = sample()
    time.sleep(0.2)
    return first[0] == "S" and sample() == first


def _connection_stats(client: BusClient, owner: str) -> dict[str, int] | None:
    """What the bus daemon holds of `owner`'s traffic; None when `owner` is not connected."""
    try:
        (stats,) = client.call_async(
            names.DBUS_PATH,
            STATS_INTERFACE,
            "GetConnectionStats",
            "s",
            [owner],
            destination=names.DBUS_BUS_NAME,
        ).result(CALL_TIMEOUT)
    except DaemonError:
        return None
    result: dict[str, int] = stats
    return result


def _bus_stopped_reading(client: BusClient, owner: str) -> bool | None:
    """Whether the bus daemon has stopped reading from `owner` (its limit of undelivered
    bytes is reached); None when `owner` is no longer connected."""
    stats = _connection_stats(client, owner)
    return None if stats is None else stats["IncomingBytes"] >= MAX_INCOMING_BYTES


def _handled_everything(client: BusClient, owner: str, daemon: DaemonProcess) -> bool:
    """The daemon has ended (the bus learns of it only once it reads again), or it has read
    every call queued for it and then gone idle."""
    if daemon.process.poll() is not None:
        return True
    stats = _connection_stats(client, owner)
    return stats is None or (stats["OutgoingMessages"] == 0 and _idle(daemon.process.pid))


def _load(address: str, daemon: DaemonProcess) -> Outcome:
    """Fill the daemon's send buffer for certain, then let 64 clients read for 10 s.

    One stalled client's reply stays in the bus, which then stops reading from the daemon
    (more than `max_incoming_bytes` of its data wait there). Two more calls follow at once:
    the first reply fills the send buffer and stays partly unsent, and the second is sent
    while it does: what dbus-fast cannot handle without the fix, however fast the machine.
    Then every client reads, as in the stress scenario, and the two answers must come too.
    """
    with bus_client(address) as client:
        try:
            (owner,) = client.call_async(
                names.DBUS_PATH,
                names.DBUS_INTERFACE,
                "GetNameOwner",
                "s",
                [names.BUS_NAME],
                destination=names.DBUS_BUS_NAME,
            ).result(CALL_TIMEOUT)
        except DaemonError as gone:  # the daemon was disconnected right after it started
            return Outcome(0, [gone.name], 0, [], queue_full=True)
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.daemon.stress_clients",
                address,
                str(CLIENTS),
                str(SECONDS),
                str(DEVICES),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        ) as clients:
            try:
                assert clients.stdout is not None
                assert clients.stdout.readline().strip() == "sent"
                wait_until(lambda: _stopped(clients.pid), what="the clients to stop")
                full = wait_until(
                    lambda: _bus_stopped_reading(client, owner) in (True, None),
                    timeout=120,
                    what="the bus to stop reading from the daemon",
                )
                more = [
                    client.call_async(
                        names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects"
                    )
                    for _ in range(2)
                ]
                # Without the fix the daemon is gone now; with it, its answers wait.
                wait_until(
                    lambda: _handled_everything(client, owner, daemon),
                    timeout=120,
                    what="the daemon to answer into a full buffer",
                )
                clients.send_signal(signal.SIGCONT)
                output, _ = clients.communicate(timeout=180)
            finally:
                if clients.poll() is None:
                    clients.kill()
        errors = []
        for future in more:
            try:
                (objects,) = future.result(CALL_TIMEOUT)
            except DaemonError as error:
                errors.append(f"{error.name}: {error.message}")
                continue
            found = sum(1 for path in objects if path.startswith(names.DEVICES_PATH + "/"))
            if found != DEVICES:
                errors.append(f"a reply with {found} devices instead of {DEVICES}")
    assert clients.returncode == 0
    outcome = Outcome(**json.loads(output.strip().splitlines()[-1]), queue_full=full is True)
    outcome.errors.extend(errors)
    return outcome


def _errors_in_log(daemon: DaemonProcess) -> list[str]:
    return [line for line in daemon.log().splitlines() if ": ERROR: " in line]


def test_64_clients_and_1000_devices_for_10_seconds(
    sim: RunningSim, devices_dir: Path, bus_policies: list[Path]
) -> None:
    with (
        private_bus(bus_policies, limits={"max_incoming_bytes": MAX_INCOMING_BYTES}) as address,
        running_daemon(address, sim.root, [devices_dir]) as daemon,
    ):
        outcome = _load(address, daemon)
        assert outcome.queue_full, "the load did not fill the daemon's send buffer"
        assert outcome.errors == []
        assert outcome.disconnects == 0
        assert min(outcome.per_client) >= 1, "every client got answers"
        assert daemon.process.poll() is None
        assert name_has_owner(address)
        assert _errors_in_log(daemon) == []
    print(f"{outcome.replies} replies of {DEVICES} devices to {CLIENTS} clients in {SECONDS} s")


def test_the_same_load_disconnects_the_daemon_without_the_fix(
    sim: RunningSim, devices_dir: Path, bus_policies: list[Path]
) -> None:
    """The control: if this ever passes no more, the load no longer reproduces the bug.

    Without the fix the daemon does not survive: either already the 1,000 InterfacesAdded it
    sends while exporting its objects fill the buffer (it then fails to start), or the
    clients' load does. Either way dbus-fast took EAGAIN (BlockingIOError) for a broken
    connection.
    """
    with private_bus(bus_policies, limits={"max_incoming_bytes": MAX_INCOMING_BYTES}) as address:
        try:
            with running_daemon(
                address,
                sim.root,
                [devices_dir],
                program=("-m", "tests.daemon.unfixed_daemon"),
                print_log=False,
            ) as daemon:
                try:
                    outcome = _load(address, daemon)
                    assert outcome.errors, "the daemon answered every call"
                finally:
                    log = daemon.log()
                print(f"disconnected under load after {outcome.replies} replies")
        except AssertionError as not_started:
            if "mdevd exited with" not in str(not_started):
                raise
            log = str(not_started)
            print("disconnected while exporting its objects")
        assert not name_has_owner(address)
    assert "test run without the send-buffer fix" in log
    assert "BlockingIOError(11, 'Resource temporarily unavailable')" in log
