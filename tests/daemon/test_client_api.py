# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevd.client` as a manager uses it, against the real daemon on the emulated kernel: one
exception class per contract error, the synchronous facade, `create_device` returning the
device, the client's own timeout, property-change and daemon-restart events, and the runnable
examples of docs/client.md.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from mdevd import client as client_module
from mdevd.bus import names
from mdevd.bus.names import ERROR_PREFIX
from mdevd.client import (
    APPLY_RESTART,
    STATUS_ACTIVE,
    STATUS_FAILED,
    STATUS_INACTIVE,
    STATUS_WAITING,
    AttributeRejected,
    CallTimeout,
    Client,
    ClientError,
    DaemonError,
    DeviceInfo,
    Event,
    NotAuthorized,
    NotAuthorizedCanObtain,
    NotFound,
    ParentNotFound,
    PendingChanges,
    SyncClient,
)
from tests.daemon.conftest import SCENARIO, ClientStack
from tests.daemon.harness import in_sysfs, new_uuid
from tests.support.bus import private_bus
from tests.support.daemon import running_daemon
from tests.support.paths import REPO
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until

DOCS = REPO / "docs"


def _contract_error_names() -> set[str]:
    """The names in docs/dbus-api.md's "Errors" paragraph (its first, up to "One name")."""
    text = (DOCS / "dbus-api.md").read_text()
    section = text.split("## Errors\n", 1)[1].split("One name per condition", 1)[0]
    return set(re.findall(r"`(\w+)`", section))


def test_every_contract_error_has_its_own_class() -> None:
    names = _contract_error_names()
    assert "Vetoed" in names and "NotFound" in names  # the paragraph was found
    assert set(client_module.ERRORS) == names
    for short, cls in client_module.ERRORS.items():
        error = client_module.error_for(ERROR_PREFIX + short, "text")
        assert type(error) is cls and isinstance(error, DaemonError)
        assert (error.name, error.short_name, error.message) == (
            ERROR_PREFIX + short,
            short,
            "text",
        )
    assert issubclass(NotAuthorizedCanObtain, NotAuthorized)
    # Names from elsewhere stay plain DaemonErrors; nobody owning the name is its own class.
    assert type(client_module.error_for("org.example.Other", "x")) is DaemonError
    not_running = client_module.error_for("org.freedesktop.DBus.Error.ServiceUnknown", "x")
    assert isinstance(not_running, client_module.DaemonNotRunning)


def test_errors_from_the_daemon_arrive_as_their_class(stack: ClientStack, sim: RunningSim) -> None:
    with SyncClient(stack.address) as client:
        with pytest.raises(NotFound) as missing:
            client.device(new_uuid())
        # Callers written for the single DaemonError keep working.
        assert isinstance(missing.value, DaemonError) and isinstance(missing.value, ClientError)
        assert missing.value.name == ERROR_PREFIX + "NotFound"
        with pytest.raises(ParentNotFound):
            client.create_device("no-such-parent", "mtty-1", uuid=new_uuid())


def test_create_device_returns_the_device(stack: ClientStack, sim: RunningSim) -> None:
    uuid = new_uuid()

    async def create() -> client_module.DeviceInfo:
        async with await Client.connect(stack.address) as client:
            return await client.create_device("mtty", "mtty-2", uuid=uuid)

    device = asyncio.run(create())
    assert (device.uuid, device.parent, device.type_id) == (uuid, "mtty", "mtty-2")
    assert device.active and not device.defined
    assert device.sysfs_path and device.iommu_group >= 0 and in_sysfs(sim, uuid)
    with SyncClient(stack.address) as client:
        assert client.device(uuid) == device
        # An identical retry answers the same device (the contract's retry rule).
        assert client.create_device("mtty", "mtty-2", uuid=uuid) == device
        client.stop(uuid)
        other = client.create_device("par-a", "par-a-1", attributes=[("setting", "7")])
        assert other.active and other.attributes == (("setting", "7"),)
        client.stop(other.uuid)


def test_the_clients_own_timeout_is_not_the_daemons(stack: ClientStack, sim: RunningSim) -> None:
    sim.control.delay("create", 3)
    uuid = new_uuid()
    with SyncClient(stack.address, timeout=1) as client:
        with pytest.raises(CallTimeout) as raised:
            client.create_device("mtty", "mtty-1", uuid=uuid)
        assert isinstance(raised.value, TimeoutError)
        assert not isinstance(raised.value, DaemonError)
        assert "CreateDevice: no answer within 1 s" in str(raised.value)
        # The daemon went on: the device exists, and the retry with its UUID is safe.
        wait_until(lambda: in_sysfs(sim, uuid), what="the delayed create")
        sim.control.clear()
        client.client.timeout = 60
        assert client.create_device("mtty", "mtty-1", uuid=uuid).uuid == uuid
        client.stop(uuid)


def test_status_and_pending_changes_from_the_daemon_and_without_them(stack: ClientStack) -> None:
    """`status` and `pending_changes` as the daemon sends them; and, from a daemon older than
    those properties (the same replies without them), the status derived by the contract's
    rule, which agrees with the daemon's own word."""
    failed, waiting, active, inactive = (new_uuid() for _ in range(4))
    expected = {
        failed: STATUS_FAILED,
        waiting: STATUS_WAITING,
        active: STATUS_ACTIVE,
        inactive: STATUS_INACTIVE,
    }
    with SyncClient(stack.address) as client:
        client.define_device("par-a", "par-a-1", uuid=failed, attributes=[("setting", "abc")])
        with pytest.raises(AttributeRejected):
            client.start(failed)  # par-a's `setting` takes digits only
        client.define_device("0000:66:00.0", "nvidia-556", uuid=waiting, autostart=True)
        client.define_device("mtty", "mtty-1", uuid=active, start=True)
        client.update(active, type_id="mtty-2")  # the definition only
        client.define_device("par-b", "par-b-1", uuid=inactive)
        try:
            devices = {d.uuid: d for d in client.devices() if d.uuid in expected}
            assert {uuid: d.status for uuid, d in devices.items()} == expected
            assert devices[active].pending_changes == PendingChanges(
                type_id="mtty-2", apply=APPLY_RESTART
            )
            assert client.device(active) == devices[active]
            assert not any(devices[uuid].pending_changes for uuid in (failed, waiting, inactive))

            (structs,) = stack.client.call(
                names.MANAGER_PATH, names.MANAGER_INTERFACE, "ListDevices", "a{sv}", [{}]
            )
            objects = stack.client.managed_objects()
            for struct in structs:
                uuid = struct[1]
                if uuid not in expected:
                    continue
                props = objects[struct[0]][names.DEVICE_INTERFACE]
                older = {k: v for k, v in props.items() if k not in ("Status", "PendingChanges")}
                for device in (
                    DeviceInfo.from_struct([*struct[:13], {}]),
                    DeviceInfo.from_properties(struct[0], older),
                ):
                    assert device.status == expected[uuid]
                    assert not device.pending_changes  # nothing to derive it from
                # A word added to the contract later reads as `inactive`, as it says.
                newer = DeviceInfo.from_properties(struct[0], {**props, "Status": "frobbed"})
                assert newer.status == STATUS_INACTIVE
        finally:
            client.stop(active)
            for uuid in expected:
                client.undefine(uuid)


@pytest.fixture(scope="module")
def restartable() -> Iterator[tuple[str, RunningSim]]:
    """A bus and an emulated kernel of their own: the test restarts the daemon on them."""
    with private_bus() as address, running_sim(SCENARIO) as sim:
        yield address, sim


def test_events_report_property_changes_and_daemon_restarts(
    restartable: tuple[str, RunningSim],
) -> None:
    address, sim = restartable
    with ExitStack() as stack:
        first = stack.enter_context(running_daemon(address, sim.root))
        watcher = stack.enter_context(SyncClient(address))
        seen: list[Event] = []
        subscribed = threading.Event()

        def watch() -> None:
            for event in watcher.events(
                subscribed.set, property_changes=True, daemon_restarts=True, idle_timeout=60
            ):
                seen.append(event)
                if event.kind == "removed" and event.uuid == last:
                    return

        last = new_uuid()
        thread = threading.Thread(target=watch)
        thread.start()
        assert subscribed.wait(30)
        uuid = new_uuid()
        with SyncClient(address) as actor:
            actor.define_device("mtty", "mtty-1", uuid=uuid)
            actor.start(uuid)
        wait_until(
            lambda: any(
                e.kind == "properties-changed" and e.uuid == uuid and e.properties.get("Active")
                for e in seen
            ),
            what="Active=true of the started device",
        )
        # A parent's Types change with its available instances.
        assert any(e.kind == "properties-changed" and "Types" in e.properties for e in seen)
        first.stop()
        wait_until(lambda: any(e.kind == "daemon-stopped" for e in seen), what="daemon-stopped")
        second = stack.enter_context(running_daemon(address, sim.root, [first.devices_dir]))
        started = wait_until(
            lambda: [e for e in seen if e.kind == "daemon-started"], what="daemon-started"
        )
        assert started[0].details["owner"].startswith(":")
        # The same subscription sees the new daemon's signals.
        with SyncClient(address) as actor:
            actor.create_device("mtty", "mtty-1", uuid=last)
            actor.stop(last)
        thread.join(60)
        assert not thread.is_alive()
        kinds = [(e.kind, e.event) for e in seen if e.uuid == last]
        assert ("device-event", "started") in kinds and ("removed", "") in kinds
        second.stop()


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / "client.md").read_text(), re.S)


def test_docs_client_md_has_examples() -> None:
    assert len(_examples()) >= 4


@pytest.mark.parametrize("index", range(len(_examples())))
def test_docs_client_md_examples_run(stack: ClientStack, sim: RunningSim, index: int) -> None:
    """Each example, as a program of its own, against the system bus it finds in the
    environment (the test's private bus), as a reader would run it."""
    env = dict(os.environ)
    env["DBUS_SYSTEM_BUS_ADDRESS"] = stack.address
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", _examples()[index]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path("/"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout and "Traceback" not in result.stderr
